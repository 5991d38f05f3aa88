"""Check that a `spacy package` build installs like a spaCy model and loads offline.

For the package folder written by `spacy package` (e.g. packages/en_luke_ner_conll03-0.1.0):

0. its meta has a description and a license (scripts/package_meta.py writes them: the
   checkpoint's) and requires luke-spacy;
1. load the pipeline data inside the package folder;
2. install the sdist from dist/ the way a user would: `pip install` with its dependencies,
   into a fresh virtual environment, with luke-spacy's own wheel (built from this checkout,
   or taken from `--find-links`) offered to pip next to the package index; torch is pinned
   to this environment's version (`--torch`), so pip does not pull another build;
3. `spacy.load("en_luke_ner_conll03")` by name in that environment and compare the entities
   with the package folder's and with the assembled pipeline's (`--source`).

Each load runs in a fresh Python process with `HF_HUB_OFFLINE=1`, `TRANSFORMERS_OFFLINE=1` and
socket connections patched to fail, and with the checkpoint name of the config overridden by
a folder that does not exist: the weights and the tokenizer must come from the package. Only
pip goes online (to the package index, for spaCy, transformers and the rest). It takes a few
minutes: most of it is pip installing the dependencies.

Usage: python scripts/check_package.py PACKAGE_DIR [--source training/luke_ner]
           [--find-links WHEELHOUSE] [--torch torch==2.13.0]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

TEXT = (
    "EU rejects German call to boycott British lamb. Peter Blackburn reports from Brussels "
    "that the European Commission said on Thursday it disagreed with German advice."
)
MISSING_MODEL = "/nonexistent/luke-checkpoint-must-not-be-read"


def block_network() -> None:
    """Make every outgoing connection (and name lookup) fail."""
    import socket

    def refuse(*args, **kwargs):
        raise OSError("network access blocked by check_package.py")

    socket.socket.connect = refuse
    socket.socket.connect_ex = refuse
    socket.create_connection = refuse
    socket.getaddrinfo = refuse


def child(mode: str, target: str) -> None:
    """Load and run the pipeline (in the child process); print its entities as JSON."""
    block_network()
    import spacy

    overrides = {"components": {"luke_ner": {"model": {"name": MISSING_MODEL}}}}
    nlp = spacy.load(target, config=overrides)
    if mode == "name":
        # The package and luke_spacy must come from the fresh environment, not this checkout.
        import luke_spacy

        for module in (sys.modules[target], luke_spacy):
            where = Path(module.__file__).resolve()
            assert where.is_relative_to(Path(sys.prefix).resolve()), f"{module} from {where}"
    assert "luke_ner" in nlp.pipe_names, nlp.pipe_names
    doc = nlp(TEXT)
    print(json.dumps([[ent.start_char, ent.end_char, ent.label_] for ent in doc.ents]))


def outside_env() -> dict:
    """This environment's variables without PYTHONPATH: pip and the fresh environment must
    not see this checkout (pip would take its luke_spacy.egg-info for an installed copy)."""
    return {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}


def run_child(mode: str, target: str, python: str = sys.executable, cwd=None) -> list:
    env = outside_env() if mode == "name" else dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    proc = subprocess.run(
        [python, str(Path(__file__).resolve()), "--child", mode, target],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout + proc.stderr)
        raise SystemExit(f"error: loading {target} ({mode}) with the network blocked failed")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def pip(python: str, *args: str) -> None:
    """Run pip of `python`; exit with its output when it fails."""
    proc = subprocess.run(
        [python, "-m", "pip", "--disable-pip-version-check", *args],
        env=outside_env(),
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
        raise SystemExit(f"error: pip {' '.join(args[:1])} failed")


def meta_problems(meta: dict) -> list:
    """What a package meta lacks: a description, a license, a requirement on luke-spacy."""
    from packaging.requirements import Requirement

    problems = [f"an empty {key}" for key in ("description", "license") if not meta.get(key)]
    names = {Requirement(req).name.replace("_", "-") for req in meta.get("requirements", [])}
    if "luke-spacy" not in names:
        problems.append("no requirement on luke-spacy")
    return problems


def torch_requirement() -> str:
    """This environment's torch release (without a local label such as +cpu)."""
    from importlib.metadata import version

    return "torch==" + version("torch").split("+")[0]


def luke_spacy_source() -> Path:
    """The source tree of the luke_spacy this environment imports (this checkout in the
    project), to build luke-spacy's wheel from."""
    import importlib.util

    spec = importlib.util.find_spec("luke_spacy")
    for folder in [ROOT] + ([Path(spec.origin).parents[1]] if spec and spec.origin else []):
        if (folder / "setup.cfg").is_file() and (folder / "luke_spacy").is_dir():
            return folder
    raise SystemExit(
        "error: no luke-spacy source tree to build its wheel from; pass --find-links with a "
        "folder holding luke-spacy's wheel"
    )


def install_fresh(sdist: Path, venv: Path, find_links: Path, torch: str) -> str:
    """A new virtual environment with the package and its dependencies; its python."""
    subprocess.run([sys.executable, "-m", "venv", str(venv)], env=outside_env(), check=True)
    python = str(venv / "bin" / "python")
    requirements = [torch] if torch else []
    pip(python, "install", "--quiet", "--find-links", str(find_links), *requirements, str(sdist))
    return python


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("package_dir", type=Path, nargs="?", help="folder written by spacy package")
    parser.add_argument("--source", default=None, help="the pipeline folder that was packaged")
    parser.add_argument(
        "--find-links",
        type=Path,
        default=None,
        help="a folder with luke-spacy's wheel (default: build one from this checkout)",
    )
    parser.add_argument(
        "--torch",
        default=None,
        help="torch requirement for the fresh environment (default: this one's version; "
        "'' for none)",
    )
    parser.add_argument("--child", nargs=2, metavar=("MODE", "TARGET"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(*args.child)
        return 0
    if args.package_dir is None:
        parser.error("the package folder is required")

    meta = json.loads((args.package_dir / "meta.json").read_text(encoding="utf8"))
    name = (
        meta["name"]
        if meta["name"].startswith(meta["lang"] + "_")
        else (f"{meta['lang']}_{meta['name']}")
    )
    problems = meta_problems(meta)
    if problems:
        print(f"error: the package meta has {', '.join(problems)} (scripts/package_meta.py)")
        return 1
    data_dir = args.package_dir / name / f"{name}-{meta['version']}"
    sdists = sorted((args.package_dir / "dist").glob("*.tar.gz"))
    if not data_dir.is_dir() or not sdists:
        print(f"error: no package data {data_dir} or no sdist in {args.package_dir}/dist")
        return 1
    results = {}
    if args.source:
        results["source pipeline"] = run_child("path", args.source)
    results["package folder"] = run_child("path", str(data_dir))
    torch = torch_requirement() if args.torch is None else args.torch
    with tempfile.TemporaryDirectory() as tmp:
        wheelhouse = args.find_links
        if wheelhouse is None:
            wheelhouse = Path(tmp) / "wheelhouse"
            source = str(luke_spacy_source())
            pip(sys.executable, "wheel", "--quiet", "--no-deps", "-w", str(wheelhouse), source)
        started = time.perf_counter()
        python = install_fresh(sdists[-1], Path(tmp) / "venv", wheelhouse, torch)
        print(
            f"Installed {sdists[-1].name} with its dependencies in a fresh environment "
            f"({time.perf_counter() - started:.0f}s)"
        )
        results["installed package"] = run_child("name", name, python, cwd=tmp)
    first = next(iter(results.values()))
    for where, ents in results.items():
        print(f"{where}: {len(ents)} entities {ents}")
    if any(ents != first for ents in results.values()):
        print("error: the loads disagree")
        return 1
    print(f"OK: {name} {meta['version']} ({sdists[-1].name}) installs and loads offline.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
