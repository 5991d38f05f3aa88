"""`luke-spacy export-onnx`: a checkpoint, or a saved pipeline's luke_ner, as an ONNX export
folder for the onnxruntime backend (float32, or int8 with `quantize="int8"`).

    from luke_spacy import export_onnx
    export_onnx("studio-ousia/luke-large-finetuned-conll-2003", "luke-onnx-int8", quantize="int8")
    nlp.add_pipe("luke_ner", config={"backend": "onnxruntime", "onnx_path": "luke-onnx-int8"})
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

from .errors import CheckpointError
from .onnx_backend import require_onnxruntime
from .onnx_files import (
    MANIFEST_NAME,
    check_export,
    folder_fingerprint,
    is_export,
    local_checkpoint,
)
from .outputs import check_new_folder

QUANTIZATIONS = ("int8",)
FACTORY = "luke_ner"


def export_onnx(
    source: Union[str, Path],
    out: Union[str, Path],
    *,
    quantize: Optional[str] = None,
    per_channel: bool = True,
    revision: str = "main",
    component: Optional[str] = None,
    force: bool = False,
) -> Dict[str, Any]:
    """Write an ONNX export of a checkpoint or of a saved pipeline's luke_ner component.

    source (Union[str, Path]): A checkpoint (hub id or local folder), or a pipeline folder
        saved by `nlp.to_disk` (its luke_ner model folder is exported; a pipeline saved with
        the onnxruntime backend already holds an export, which is copied or quantized).
    out (Union[str, Path]): The export folder to write: new or empty, unless `force`.
    quantize (Optional[str]): "int8": ONNX Runtime's dynamic quantization of the linear
        layers; None: float32, the torch backend's forward (refused for a pipeline that
        holds an int8 export only: float32 needs the torch weights).
    per_channel (bool): int8 weights with one scale per output channel (else per matrix).
    revision (str): Hub revision of a hub id.
    component (Optional[str]): The luke_ner component of a pipeline with several.
    force (bool): Write into an `out` that holds files (those of the export are replaced).
    RETURNS (Dict[str, Any]): The manifest written (`onnx.json`).
    RAISES (CheckpointError): The checkpoint or export cannot be loaded.
    RAISES (ValueError): Bad arguments, or `out` would overwrite files.
    RAISES (ImportError): luke-spacy[onnx] is not installed.
    """
    require_onnxruntime()
    if quantize not in (None, *QUANTIZATIONS):
        raise ValueError(f"quantize must be one of {QUANTIZATIONS} or None, got {quantize!r}.")
    out = Path(os.path.expanduser(str(out)))
    name, folder = checkpoint_of(str(source), component)
    check_output(out, force, [Path(str(source)), *([folder] if folder is not None else [])])
    with tempfile.TemporaryDirectory(dir=_parent(out), prefix=f".{out.name}.") as tmp:
        written = Path(tmp) / "export"
        if folder is not None and is_export(folder):
            manifest = _from_export(folder, written, quantize, per_channel)
        else:
            manifest = _from_checkpoint(name, folder, revision, written, quantize, per_channel)
        _move_into(written, out)
    return manifest


def checkpoint_of(source: str, component: Optional[str] = None) -> Tuple[str, Optional[Path]]:
    """The checkpoint to export: its name and, when it is on this machine, its folder (a
    pipeline's luke_ner model folder, or a local checkpoint folder)."""
    path = Path(os.path.expanduser(source))
    if (path / "config.cfg").is_file():
        names = _luke_ner_components(path / "config.cfg")
        if component is not None:
            if component not in names:
                raise ValueError(f"the pipeline {path} has no luke_ner component {component!r}")
            names = [component]
        if len(names) != 1:
            raise ValueError(
                f"the pipeline {path} has {len(names)} luke_ner components {names}; "
                "name one with --component"
                if names
                else f"the pipeline {path} has no luke_ner component"
            )
        folder = path / names[0] / "model"
        if not folder.is_dir():
            raise CheckpointError(
                f"The pipeline {path} has no saved model for {names[0]} ({folder}); save it "
                "with nlp.to_disk."
            )
        return str(folder), folder
    if path.is_dir():
        return str(path), path
    from .checkpoint import missing_local_folder

    missing = missing_local_folder(source)
    if missing is not None:
        raise CheckpointError(missing)
    return source, None


def check_output(out: Path, force: bool, sources: List[Path]) -> None:
    """Refuse an output that is a file, that is (or contains) what is exported, or a folder
    that already holds files unless `force`."""
    check_new_folder(
        out,
        force,
        written="the export",
        sources=[("the folder exported from", source) for source in sources],
        error=ValueError,
    )


def _from_checkpoint(
    name: str,
    folder: Optional[Path],
    revision: str,
    written: Path,
    quantize: Optional[str],
    per_channel: bool,
) -> Dict[str, Any]:
    from .model import LukeSpanScorer, load_checkpoint
    from .onnx_graph import quantize_export, state_fingerprint, write_export

    objects = load_checkpoint(name, revision=revision, local_files_only=folder is not None)
    scorer = LukeSpanScorer(objects.transformer)
    folder = folder or local_checkpoint(name, revision)
    if folder is not None:
        fingerprint = folder_fingerprint(folder)
    else:  # the hub's files were not kept in the local cache
        fingerprint = state_fingerprint(scorer, objects.tokenizer)
    source = {"name": name, "revision": revision, "fingerprint": fingerprint}
    if quantize is None:
        return write_export(scorer, objects.tokenizer, written, source=source)
    float32 = written.parent / "float32"
    write_export(scorer, objects.tokenizer, float32, source=source)
    del objects, scorer  # the torch weights are not needed to quantize
    return quantize_export(float32, written, per_channel=per_channel)


def _from_export(
    folder: Path, written: Path, quantize: Optional[str], per_channel: bool
) -> Dict[str, Any]:
    from .onnx_graph import quantize_export

    manifest = check_export(folder)
    if quantize is None and manifest["precision"] != "float32":
        raise ValueError(
            f"{folder} holds an {manifest['precision']} ONNX export and no torch weights, and "
            "a float32 export needs the torch weights: export the pipeline saved with backend "
            "= 'torch' (or its checkpoint), or give --quantize "
            f"{manifest['precision']} to copy this export"
        )
    if quantize is None or manifest["precision"] == quantize:
        shutil.copytree(folder, written)
        return manifest
    return quantize_export(folder, written, per_channel=per_channel)


def _luke_ner_components(config_file: Path) -> List[str]:
    from spacy import util

    components = util.load_config(config_file, interpolate=False).get("components", {})
    return [name for name, block in components.items() if block.get("factory") == FACTORY]


def _parent(out: Path) -> Path:
    parent = out.resolve().parent
    parent.mkdir(parents=True, exist_ok=True)
    return parent


def _move_into(written: Path, out: Path) -> None:
    """Put the written export in place: renamed when `out` is new, else file by file (the
    manifest last, so that a broken move never leaves a manifest over other graph files)."""
    if not out.exists():
        os.rename(written, out)
        return
    files = sorted(written.iterdir(), key=lambda f: f.name == MANIFEST_NAME)
    stale = out / "model.onnx.data"
    if stale.is_file() and not (written / stale.name).exists():
        stale.unlink()
    for file in files:
        os.replace(file, out / file.name)
