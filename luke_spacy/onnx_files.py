"""ONNX export folders: their layout, their manifest, the checks that refuse a damaged or
mismatched one, checkpoint fingerprints and the export cache.

An export folder (written by `luke-spacy export-onnx`, by the onnxruntime backend's first
load, or by `nlp.to_disk` of a pipeline on that backend) holds:

* `model.onnx` (and `model.onnx.data` when the graph's weights pass protobuf's 2 GB limit):
  the encoder and span head, inputs as `encoding.collate` gives them, outputs `logits`
  (batch, spans, labels) and `word_states` (batch, words, hidden);
* the checkpoint's `config.json` and tokenizer files with `luke_spacy.json` (its tokenizer
  settings), as in a checkpoint folder, but no torch weights;
* `onnx.json`, the manifest: the labels, the precision, the size and SHA-256 of each graph
  file and a fingerprint of the checkpoint it was exported from.

Light (the standard library, and the hub client to find a cached checkpoint): the backend,
the exporter and the command line share it.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence

from .checkpoint import CONFIG_NAME, labels_from_id2label, read_config, read_json
from .errors import CheckpointError

MANIFEST_NAME = "onnx.json"
GRAPH_NAME = "model.onnx"
DATA_NAME = "model.onnx.data"
FORMAT = "luke_spacy.onnx/1"
INPUT_NAMES = (
    "input_ids",
    "attention_mask",
    "entity_ids",
    "entity_attention_mask",
    "entity_position_ids",
    "entity_start_positions",
    "entity_end_positions",
)
OUTPUT_NAMES = ("logits", "word_states")
PRECISIONS = ("float32", "int8")
# Where exports of the onnxruntime backend's first load are kept (see `cache_dir`).
CACHE_ENV = "LUKE_SPACY_CACHE"
_CHUNK = 1 << 24


def is_export(path: Path) -> bool:
    """Whether a folder holds an ONNX export (its manifest)."""
    return (Path(path) / MANIFEST_NAME).is_file()


def remove_export(path: Path) -> None:
    """Delete the ONNX export files of a folder (the manifest first, so that a removal cut
    short never leaves a manifest over missing graphs), so that a folder reused for torch
    weights holds no stale export that the onnxruntime backend would prefer."""
    for name in (MANIFEST_NAME, GRAPH_NAME, DATA_NAME):
        file = Path(path) / name
        if file.is_file():
            file.unlink()


def file_digest(file: Path) -> str:
    """SHA-256 of a file, read in chunks (graphs run to gigabytes)."""
    digest = hashlib.sha256()
    with open(file, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def folder_fingerprint(folder: Path) -> str:
    """A fingerprint of a checkpoint folder: SHA-256 over the names and contents of its files
    (weights, config, tokenizer), so that two folders agree exactly when their files do.

    folder (Path): A local checkpoint folder (or a Hugging Face cache snapshot, whose files
        are links into the cache: their targets are read).
    RETURNS (str): "sha256:" and the hex digest.
    """
    digest = hashlib.sha256()
    for file in sorted(Path(folder).iterdir()):
        if file.name.startswith(".") or not file.is_file():
            continue
        digest.update(f"{file.name}\0{file.stat().st_size}\0".encode())
        with open(file, "rb") as f:
            while chunk := f.read(_CHUNK):
                digest.update(chunk)
    return "sha256:" + digest.hexdigest()


def local_checkpoint(name: str, revision: str = "main") -> Optional[Path]:
    """The folder of a checkpoint on this machine: a local folder, or a hub id's snapshot in
    the Hugging Face cache; None when it is not there (never touches the network)."""
    if os.path.isdir(name):
        return Path(name)
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(name, revision=revision, local_files_only=True))
    except Exception:  # not cached, or not a hub id: loading the checkpoint says why
        return None


def cache_dir() -> Path:
    """The folder of cached exports: $LUKE_SPACY_CACHE, else $XDG_CACHE_HOME/luke-spacy, else
    ~/.cache/luke-spacy; exports live in its `onnx/` folder, one per checkpoint fingerprint."""
    root = os.environ.get(CACHE_ENV)
    if not root:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
        root = os.path.join(base, "luke-spacy")
    return Path(os.path.expanduser(root)) / "onnx"


def cache_key(fingerprint: str, precision: str = "float32") -> str:
    """The cache folder name of an export of the checkpoint with this fingerprint."""
    text = json.dumps([FORMAT, fingerprint, precision])
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def write_manifest(
    folder: Path,
    *,
    labels: Sequence[str],
    precision: str,
    graph_files: Iterable[str],
    source: Dict[str, Any],
    export: Dict[str, Any],
    quantization: Optional[Dict[str, Any]] = None,
) -> Dict[str, Any]:
    """Write `onnx.json` for the graph files already in the folder; returns the manifest."""
    folder = Path(folder)
    manifest = {
        "format": FORMAT,
        "labels": list(labels),
        "precision": precision,
        "inputs": list(INPUT_NAMES),
        "outputs": list(OUTPUT_NAMES),
        "files": {
            name: {"bytes": (folder / name).stat().st_size, "sha256": file_digest(folder / name)}
            for name in graph_files
        },
        "source": dict(source),
        "quantization": quantization,
        "export": dict(export),
    }
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest


def read_manifest(folder: Path) -> Dict[str, Any]:
    """The manifest of an export folder, or a CheckpointError naming what is wrong."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(
            f"The ONNX export '{folder}' does not exist; give a folder written by "
            "`luke-spacy export-onnx`."
        )
    file = folder / MANIFEST_NAME
    if not file.is_file():
        raise CheckpointError(
            f"'{folder}' is not an ONNX export of luke-spacy: it has no {MANIFEST_NAME}. "
            "Write one with `luke-spacy export-onnx CHECKPOINT OUT`."
        )
    manifest = read_json(file, "the export's manifest")
    if manifest.get("format") != FORMAT:
        raise CheckpointError(
            f"'{file}' is not a manifest this luke-spacy reads (format "
            f"{manifest.get('format')!r}, expected {FORMAT!r}); export the checkpoint again."
        )
    files = manifest.get("files")
    if not isinstance(files, dict) or GRAPH_NAME not in files:
        raise CheckpointError(f"'{file}' names no {GRAPH_NAME}; export the checkpoint again.")
    if manifest.get("precision") not in PRECISIONS:
        raise CheckpointError(f"'{file}' has an unknown precision {manifest.get('precision')!r}.")
    return manifest


def check_export(folder: Path, expected_source: Optional[str] = None) -> Dict[str, Any]:
    """Refuse an export folder that is damaged or does not belong together, before ONNX
    Runtime reads it: a graph file missing, truncated or replaced (size and SHA-256 against
    the manifest), labels in config.json that differ from the manifest's, or an export of
    another checkpoint than `expected_source`.

    folder (Path): The export folder.
    expected_source (Optional[str]): Fingerprint (`folder_fingerprint`) of the checkpoint it
        must have been exported from, when that checkpoint is at hand.
    RETURNS (Dict[str, Any]): The manifest.
    """
    folder = Path(folder)
    manifest = read_manifest(folder)
    for name, info in manifest["files"].items():
        file = folder / name
        if not file.is_file():
            raise CheckpointError(
                f"The ONNX export '{folder}' has no {name}: the copy is incomplete; copy or "
                "export it again."
            )
        size = file.stat().st_size
        if size != info.get("bytes"):
            what = "truncated" if size < info.get("bytes", 0) else "not the exported file"
            raise CheckpointError(
                f"The ONNX file '{file}' is damaged ({what}: {size} bytes, {MANIFEST_NAME} "
                f"says {info.get('bytes')}); copy or export it again."
            )
        if file_digest(file) != info.get("sha256"):
            raise CheckpointError(
                f"The ONNX file '{file}' is not the one exported with this folder's "
                f"{MANIFEST_NAME} and {CONFIG_NAME} (its SHA-256 differs: another "
                "checkpoint's export, or damaged); copy or export it again."
            )
    config_file = folder / CONFIG_NAME
    labels = labels_from_id2label(read_config(folder).get("id2label") or {}, f"'{config_file}'")
    if labels != list(manifest.get("labels") or []):
        raise CheckpointError(
            f"The labels of '{config_file}' {labels} differ from the ones the ONNX graph was "
            f"exported with ({folder / MANIFEST_NAME}: {manifest.get('labels')}): the "
            "classifier's rows follow the exported order. Restore the export's own "
            f"{CONFIG_NAME}, or export the checkpoint again."
        )
    source = (manifest.get("source") or {}).get("fingerprint")
    if expected_source is not None and source != expected_source:
        raise CheckpointError(
            f"The ONNX export '{folder}' was exported from another checkpoint "
            f"({(manifest.get('source') or {}).get('name')!r}, fingerprint {source}) than the "
            f"one it is used with (fingerprint {expected_source}); export this checkpoint "
            "with `luke-spacy export-onnx`, or leave onnx_path unset to export it on first use."
        )
    return manifest


def check_graph_io(file: Path, inputs: Sequence[str], outputs: Sequence[Any], labels: List[str]):
    """Refuse a graph whose inputs, outputs or label count are not the export's.

    file (Path): The graph file, for the message.
    inputs (Sequence[str]): Its input names.
    outputs (Sequence[Any]): (name, shape) of its outputs.
    labels (List[str]): The manifest's labels.
    """
    names = [name for name, _ in outputs]
    if list(inputs) != list(INPUT_NAMES) or names != list(OUTPUT_NAMES):
        raise CheckpointError(
            f"The ONNX file '{file}' is not a luke-spacy export: inputs {list(inputs)}, "
            f"outputs {names}."
        )
    n_labels = outputs[0][1][-1]
    if isinstance(n_labels, int) and n_labels != len(labels):
        raise CheckpointError(
            f"The ONNX file '{file}' scores {n_labels} labels, but its export names "
            f"{len(labels)} ({labels}): wrong labels for this graph; export the checkpoint "
            "again."
        )
