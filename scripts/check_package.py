"""Check that a `spacy package` build loads and runs with the network blocked.

For the package folder written by `spacy package` (e.g. packages/en_luke_ner_conll03-0.1.0):

1. load the pipeline data inside the package folder;
2. install the sdist from dist/ into a temporary folder (`pip --no-index --no-deps`) and load
   it by importing the package, as `spacy.load("en_luke_ner_conll03")` would;
3. compare both with the assembled pipeline the package was made from (`--source`).

Each load runs in a fresh Python process with `HF_HUB_OFFLINE=1`, `TRANSFORMERS_OFFLINE=1` and
socket connections patched to fail, and with the checkpoint name of the config overridden by
a folder that does not exist: the weights and the tokenizer must come from the package.

Usage: python scripts/check_package.py PACKAGE_DIR [--source training/luke_ner]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

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
    if mode == "path":
        nlp = spacy.load(target, config=overrides)
    else:
        import importlib

        module = importlib.import_module(target)
        assert Path(module.__file__).is_relative_to(os.environ["CHECK_TARGET_DIR"]), (
            f"{target} was imported from {module.__file__}, not from the installed folder"
        )
        nlp = module.load(config=overrides)
    assert "luke_ner" in nlp.pipe_names, nlp.pipe_names
    doc = nlp(TEXT)
    print(json.dumps([[ent.start_char, ent.end_char, ent.label_] for ent in doc.ents]))


def run_child(mode: str, target: str, extra_env=None) -> list:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", **(extra_env or {}))
    proc = subprocess.run(
        [sys.executable, __file__, "--child", mode, target],
        env=env,
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout + proc.stderr)
        raise SystemExit(f"error: loading {target} ({mode}) with the network blocked failed")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("package_dir", type=Path, nargs="?", help="folder written by spacy package")
    parser.add_argument("--source", default=None, help="the pipeline folder that was packaged")
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
    data_dir = args.package_dir / name / f"{name}-{meta['version']}"
    sdists = sorted((args.package_dir / "dist").glob("*.tar.gz"))
    if not data_dir.is_dir() or not sdists:
        print(f"error: no package data {data_dir} or no sdist in {args.package_dir}/dist")
        return 1
    results = {}
    if args.source:
        results["source pipeline"] = run_child("path", args.source)
    results["package folder"] = run_child("path", str(data_dir))
    with tempfile.TemporaryDirectory() as tmp:
        install = subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "--quiet",
                "--no-index",
                "--no-deps",
                "--no-build-isolation",
                "--disable-pip-version-check",
                "--target",
                tmp,
                str(sdists[-1]),
            ],
            capture_output=True,
            text=True,
        )
        if install.returncode != 0:
            sys.stderr.write(install.stdout + install.stderr)
            print(f"error: pip could not install {sdists[-1]} offline")
            return 1
        pythonpath = os.pathsep.join(filter(None, [tmp, os.environ.get("PYTHONPATH")]))
        results["installed package"] = run_child(
            "import", name, {"PYTHONPATH": pythonpath, "CHECK_TARGET_DIR": tmp}
        )
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
