"""Which packages the GPU bundle must carry, resolved by pip rather than listed by hand.

    python benchmarks/gpu/bundle.py --image benchmarks/gpu/image.txt --python-version 3.12 \
        --out .gpu/bundle.txt .gpu/wheels/luke_spacy-0.1.0-py3-none-any.whl [REQUIREMENT...]

pip resolves, for the device's Python and platform (`pip install --dry-run --report`, nothing
installed), the requirements given (luke-spacy's wheel: what run.sh's steps import, spaCy,
weasel, transformers and the rest of their dependency closure) together with the packages the
device image is assumed to have (`--image`), and separately the image's packages alone. The
bundle is every package of the first resolution that the second does not give at the same
version: what the image lacks, or has in a version the steps cannot use (the bundle comes first
on PYTHONPATH, so its copy wins). Whatever a new release of spaCy, weasel, typer or
transformers starts to depend on is found this way, where a hand-kept list missed click and
httpx. Pinned image lines (torch==2.13.0) are resolved as metadata-only stand-ins, so the
image's CUDA build of torch and its nvidia-* packages are never downloaded.

Writes one line per package to carry (`--out`): `name==version` for the package index, or the
path of a local wheel given on the command line; with `--target DIR`, also downloads those
wheels for the device and installs them into DIR (no dependencies: the list is the closure).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

# The device's platform tags (x86_64 Linux with a recent glibc).
PLATFORMS = (
    "manylinux1_x86_64",
    "manylinux2010_x86_64",
    "manylinux2014_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux_2_24_x86_64",
    "manylinux_2_27_x86_64",
    "manylinux_2_28_x86_64",
)
# Local version label of the stand-ins: `torch==2.13.0` matches it, and pip prefers it over
# the index's 2.13.0 (a local version sorts after its public one).
STAND_IN = "image"

# name -> (version, where pip found it)
Resolution = Dict[str, Tuple[str, str]]


def canonical(name: str) -> str:
    """A distribution name as pip compares them (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def read_requirements(path: Path) -> List[str]:
    """The requirement lines of a file, without comments and blank lines."""
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return [line for line in lines if line]


def pinned(requirement: str) -> Tuple[str, str] | None:
    """(name, version) of a `name==version` requirement, else None."""
    match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)\s*==\s*([0-9][A-Za-z0-9.]*)", requirement)
    return (match.group(1), match.group(2)) if match else None


def stand_in_wheel(folder: Path, name: str, version: str) -> Path:
    """A wheel with only metadata, `name` at `version+image`, and no dependencies."""
    dist = f"{canonical(name).replace('-', '_')}-{version}+{STAND_IN}"
    wheel = folder / f"{dist}-py3-none-any.whl"
    info = f"{dist}.dist-info"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(
            f"{info}/METADATA",
            f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}+{STAND_IN}\n",
        )
        zf.writestr(
            f"{info}/WHEEL",
            "Wheel-Version: 1.0\nGenerator: bundle.py\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        )
        zf.writestr(f"{info}/RECORD", f"{info}/METADATA,,\n{info}/WHEEL,,\n{info}/RECORD,,\n")
    return wheel


def image_requirements(lines: Sequence[str], folder: Path) -> List[str]:
    """The image's requirements for pip, pinned ones replaced by stand-ins in `folder`."""
    out = []
    for line in lines:
        pin = pinned(line)
        if pin is None:
            out.append(line)
        else:
            stand_in_wheel(folder, *pin)
            out.append(f"{pin[0]}=={pin[1]}+{STAND_IN}")
    return out


def pip(command: str, python_version: str, *args: str) -> None:
    """Run pip `command` for the device's Python and platform (binary wheels only)."""
    cmd = [sys.executable, "-m", "pip", command, "--quiet", "--only-binary=:all:"]
    cmd += ["--python-version", python_version]
    for platform in PLATFORMS:
        cmd += ["--platform", platform]
    proc = subprocess.run([*cmd, *args], capture_output=True, text=True)
    if proc.returncode != 0:
        noise = "is ignored: it is neither a file nor a directory"
        errors = [line for line in proc.stderr.splitlines() if noise not in line]
        raise SystemExit(f"pip {command} failed for the bundle:\n" + "\n".join(errors[-20:]))


def resolve(requirements: Sequence[str], python_version: str, find_links: Path) -> Resolution:
    """What pip would install for these requirements on the device's Python and platform."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        pip(
            "install", python_version, "--dry-run", "--ignore-installed",
            "--target", str(Path(tmp) / "unused"), "--find-links", str(find_links),
            "--report", str(report), *requirements,
        )  # fmt: skip
        data = json.loads(report.read_text())
    return {
        canonical(item["metadata"]["name"]): (
            item["metadata"]["version"],
            item["download_info"]["url"],
        )
        for item in data["install"]
    }


def to_carry(joint: Resolution, image: Resolution) -> Resolution:
    """The packages of the joint resolution that the image alone does not give as they are."""
    return {
        name: found
        for name, found in sorted(joint.items())
        if image.get(name, ("",))[0] != found[0]
    }


def bundle_lines(carry: Resolution, local: Sequence[str]) -> List[str]:
    """`name==version` for index packages, the path for wheels given on the command line."""
    by_url = {Path(path).resolve().as_uri(): path for path in local}
    out = []
    for name, (version, url) in carry.items():
        out.append(by_url.get(url, f"{name}=={version}"))
    return out


def install(lines: Sequence[str], python_version: str, target: Path) -> None:
    """Download the bundle's wheels for the device and install them into `target`."""
    with tempfile.TemporaryDirectory() as tmp:
        index = [line for line in lines if not line.endswith(".whl")]
        pip("download", python_version, "--no-deps", "--dest", tmp, *index)
        wheels = [str(w) for w in Path(tmp).glob("*.whl")]
        local = [line for line in lines if line.endswith(".whl")]
        pip("install", python_version, "--no-deps", "--target", str(target), *wheels, *local)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("requirements", nargs="+", help="requirements or local wheels to run")
    parser.add_argument("--image", type=Path, required=True, help="the image's packages")
    parser.add_argument("--python-version", default="3.12", help="the device's Python")
    parser.add_argument("--out", type=Path, required=True, help="write the bundle list here")
    parser.add_argument("--target", type=Path, help="install the bundle into this folder")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        image = image_requirements(read_requirements(args.image), Path(tmp))
        image_alone = resolve(image, args.python_version, Path(tmp))
        joint = resolve([*args.requirements, *image], args.python_version, Path(tmp))
    carry = to_carry(joint, image_alone)
    local = [r for r in args.requirements if r.endswith(".whl")]
    lines = bundle_lines(carry, local)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    kept = sorted(set(joint) - set(carry))
    print(f"bundle: {len(lines)} packages ({', '.join(carry)})")
    print(f"from the image: {len(kept)} packages ({', '.join(kept)})")
    if args.target:
        install(lines, args.python_version, args.target)
    return 0


if __name__ == "__main__":
    sys.exit(main())
