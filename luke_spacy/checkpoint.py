"""Checks of checkpoint folders, so damaged or unusual checkpoints fail with a named error.

transformers reports an incomplete folder late and by a side effect (a missing `vocab.json`
surfaces as "requires the protobuf library", a truncated `model.safetensors` as a header error
without a path, a hand-edited `config.json` as a tensor size mismatch), and some damage it does
not report at all (without `tokenizer_config.json`, LUKE's tokenizer falls back on
`add_prefix_space = False` and predicts other entities). These functions read only small files
and the safetensors header, before transformers is called, and say which file is wrong.
"""

from __future__ import annotations

import json
import os
import re
import struct
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence

from .errors import CheckpointError

SPAN_CLASSIFIER = "LukeForEntitySpanClassification"
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
TOKENIZER_CONFIG_NAME = "tokenizer_config.json"
# What the component writes into its checkpoint folder: the tokenizer settings it ran with.
SETTINGS_NAME = "luke_spacy.json"
# Any one of these holds the weights (safetensors, sharded or not, or a PyTorch pickle).
WEIGHT_FILES = (
    WEIGHTS_NAME,
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
TOKENIZER_FILES = {
    "LukeTokenizer": ("vocab.json", "merges.txt", "entity_vocab.json"),
    "MLukeTokenizer": ("sentencepiece.bpe.model", "entity_vocab.json"),
}
# safetensors' own limit on the JSON header, so a garbage length is never read.
MAX_HEADER_BYTES = 100_000_000
# Label 0 is the no-entity class: LUKE's checkpoints call it NIL, mLUKE's O.
NO_ENTITY_LABELS = ("NIL", "O")
# Keys that may be missing from the weights or left over in them without changing any span's
# logits: position-id buffers that older transformers saved (4.6 saved
# luke.embeddings.position_ids, which 4.53 has no place for), and the pooler, which span
# classification never reads.
HARMLESS_KEYS = re.compile(r"(^|\.)position_ids$|^(luke\.)?pooler\.")
# The classifier: newly initialized when training for other labels.
HEAD_KEYS = re.compile(r"^classifier\.")
# Keys named in a message; the rest are counted.
KEYS_SHOWN = 3
SENTENCEPIECE_MISSING = (
    "mLUKE's tokenizer needs the sentencepiece package: pip install 'luke-spacy[mluke]' "
    "(or pip install sentencepiece)."
)


def check_folder(path: Path) -> Dict[str, List[int]]:
    """Check that a local checkpoint folder has every file luke_ner reads, unbroken.

    path (Path): The folder.
    RETURNS (Dict[str, List[int]]): The tensor shapes of its model.safetensors (empty for
        other weight formats), for `check_weight_shapes`.
    """
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(_missing_folder(str(path)))
    read_config(path)
    if weights_file(path) is None:
        raise CheckpointError(
            f"The checkpoint folder '{path}' has no weights ({WEIGHTS_NAME} or "
            "pytorch_model.bin): the copy or download is incomplete."
        )
    shapes = safetensors_shapes(path / WEIGHTS_NAME) if (path / WEIGHTS_NAME).is_file() else {}
    check_tokenizer_files(path)
    return shapes


def check_tokenizer_files(path: Path) -> None:
    """Check that a folder has its tokenizer's files (a checkpoint, or an ONNX export)."""
    tokenizer_config = read_json(
        path / TOKENIZER_CONFIG_NAME,
        "the tokenizer settings; without it the tokenizer falls back on defaults such as "
        "add_prefix_space = false and predicts other entities",
    )
    tokenizer_class = tokenizer_config.get("tokenizer_class") or "LukeTokenizer"
    for name in TOKENIZER_FILES.get(tokenizer_class, ()):
        if not (path / name).is_file():
            raise CheckpointError(
                f"The checkpoint folder '{path}' has no {name}, a file of its "
                f"{tokenizer_class}: the copy or download is incomplete."
            )
    if tokenizer_class == "LukeTokenizer":
        check_bpe_files(path)
    if tokenizer_class == "MLukeTokenizer" and not has_sentencepiece():
        raise CheckpointError(f"'{path}' is an mLUKE checkpoint. {SENTENCEPIECE_MISSING}")


def check_bpe_files(path: Path) -> None:
    """Refuse an empty byte-level BPE vocabulary: a `vocab.json` without tokens (every text
    then fails in the tokenizer) or a `merges.txt` without merges (the tokenizer loads, but
    splits words into other subwords, and the model predicts other entities)."""
    vocab_file, merges_file = path / "vocab.json", path / "merges.txt"
    if not read_json(vocab_file, "the subword vocabulary"):
        raise CheckpointError(
            f"The vocabulary '{vocab_file}' holds no tokens; copy the checkpoint's own "
            "vocab.json again."
        )
    try:
        with open(merges_file, encoding="utf-8") as lines:
            has_merge = any(line.strip() and not line.startswith("#version") for line in lines)
    except (OSError, UnicodeDecodeError) as err:
        raise CheckpointError(f"The merges file '{merges_file}' cannot be read ({err}).") from err
    if not has_merge:
        raise CheckpointError(
            f"The merges file '{merges_file}' holds no merges (it is empty or only a header), "
            "so the tokenizer would split words into other subwords than the model learned; "
            "copy the checkpoint's own merges.txt again."
        )


def check_loaded_keys(
    weights: str,
    missing: Iterable[str],
    unexpected: Iterable[str],
    *,
    new_head: bool = False,
) -> None:
    """Refuse span classifier weights that do not fit its config: tensors the model needs and
    the weights lack (they would stay random) or tensors of the weights the model has no place
    for (ignored), e.g. after `num_hidden_layers` was edited or tensors were removed.

    weights (str): The weights file or checkpoint, for the message.
    missing (Iterable[str]): The model's keys the weights lack (transformers' loading info).
    unexpected (Iterable[str]): The weights' keys the model has no place for.
    new_head (bool): The classifier is newly initialized (training other labels), so its
        keys are not needed.
    """

    def kept(keys: Iterable[str]) -> List[str]:
        return sorted(
            key
            for key in keys
            if not HARMLESS_KEYS.search(key) and not (new_head and HEAD_KEYS.search(key))
        )

    missing, unexpected = kept(missing), kept(unexpected)
    problems = []
    if missing:
        problems.append(f"{_some(missing)} missing (they would be random)")
    if unexpected:
        problems.append(f"{_some(unexpected)} not used by the model")
    if problems:
        raise CheckpointError(
            f"The weights {weights} do not fit its {CONFIG_NAME}: {'; '.join(problems)}. "
            f"Restore the checkpoint's own {CONFIG_NAME} and weights: with an edited "
            "num_hidden_layers or damaged weights it would predict other entities."
        )


def _some(keys: Sequence[str]) -> str:
    """A few keys by name, then how many more."""
    shown = ", ".join(keys[:KEYS_SHOWN])
    more = f" and {len(keys) - KEYS_SHOWN} more" if len(keys) > KEYS_SHOWN else ""
    return f"{len(keys)} tensor(s) ({shown}{more})"


def weights_file(path: Path) -> Optional[Path]:
    """The weights file of a local checkpoint folder that transformers reads, or None."""
    for name in WEIGHT_FILES:
        if (Path(path) / name).is_file():
            return Path(path) / name
    return None


def remove_weights(path: Path) -> None:
    """Delete the torch weights of a checkpoint folder (any of `WEIGHT_FILES`, and shards), so
    that a folder reused for an ONNX export holds no stale weights for the torch backend."""
    path = Path(path)
    for file in [*path.glob("*.safetensors"), *path.glob("pytorch_model*.bin")]:
        file.unlink()
    for name in WEIGHT_FILES:
        if (path / name).is_file():
            (path / name).unlink()


def read_config(path: Path) -> Dict[str, Any]:
    """The content of a checkpoint folder's config.json."""
    return read_json(Path(path) / CONFIG_NAME, "the model's settings and labels")


def read_json(file: Path, what: str) -> Dict[str, Any]:
    """A JSON object from a checkpoint file, or a CheckpointError that names the file."""
    if not file.is_file():
        raise CheckpointError(
            f"The checkpoint folder '{file.parent}' has no {file.name} ({what}): the copy or "
            "download is incomplete."
        )
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"'{file}' is not valid JSON ({err}).") from err
    if not isinstance(data, dict):
        raise CheckpointError(f"'{file}' does not hold a JSON object.")
    return data


def safetensors_shapes(file: Path) -> Dict[str, List[int]]:
    """The tensor shapes of a safetensors file, read from its header; a CheckpointError that
    names the file when it is empty, truncated or not a safetensors file."""
    size = file.stat().st_size

    def broken(why: str) -> CheckpointError:
        return CheckpointError(
            f"The weights file '{file}' is damaged ({why}); copy or download it again."
        )

    if size < 8:
        raise broken("empty" if size == 0 else f"{size} bytes")
    with open(file, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        if length > min(size - 8, MAX_HEADER_BYTES):
            raise broken(f"not a safetensors file or truncated: header of {length} bytes")
        try:
            header = json.loads(f.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise broken(f"not a safetensors file: {err}") from err
    if not isinstance(header, dict):
        raise broken("not a safetensors file")
    shapes: Dict[str, List[int]] = {}
    end = 0
    for key, info in header.items():
        if key == "__metadata__":
            continue
        try:
            shapes[key] = list(info["shape"])
            end = max(end, int(info["data_offsets"][1]))
        except (TypeError, KeyError, IndexError, ValueError) as err:
            raise broken(f"not a safetensors file: bad entry {key!r}") from err
    if 8 + length + end != size:
        what = "truncated" if size < 8 + length + end else "trailing bytes"
        raise broken(f"{what}: {size} bytes, the header announces {8 + length + end}")
    return shapes


def check_weight_shapes(
    path: Path, shapes: Dict[str, List[int]], config: Any, *, head: bool = True
) -> None:
    """Check that config.json's sizes (hidden size, vocabulary, labels) fit the weights.

    path (Path): The local checkpoint folder (for the message).
    shapes (Dict[str, List[int]]): Its weights' shapes, from `check_folder` (empty when they
        are not safetensors, which are not read).
    config (LukeConfig): The checkpoint's config.
    head (bool): Also check the classifier against the config's number of labels.
    """
    hidden = config.hidden_size
    expected = {
        "embeddings.word_embeddings.weight": (
            [config.vocab_size, hidden],
            "vocab_size, hidden_size",
        ),
    }
    if head:
        expected["classifier.weight"] = ([len(config.id2label), 3 * hidden], "labels, hidden_size")
    for key, (shape, fields) in expected.items():
        found = shapes.get(key, shapes.get(f"luke.{key}"))
        if found is not None and found != shape:
            raise CheckpointError(
                f"{CONFIG_NAME} in '{path}' does not match {WEIGHTS_NAME}: its {fields} give "
                f"{key} the shape {shape}, the weights have {found}. Restore the "
                f"checkpoint's own {CONFIG_NAME}."
            )


def labels_from_id2label(
    id2label: Mapping[Any, str], where: str, *, no_entity_first: bool = True
) -> List[str]:
    """Labels in id order from an `id2label` mapping (int or str keys), whose ids must be
    0 to n-1 and, with `no_entity_first`, start with the no-entity class."""
    try:
        by_id = {int(key): label for key, label in id2label.items()}
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"id2label in {where} has keys that are not label ids.") from err
    if sorted(by_id) != list(range(len(by_id))):
        raise CheckpointError(
            f"id2label in {where} must have the ids 0 to {len(by_id) - 1} without gaps, one "
            f"per classifier row; it has {sorted(by_id)}."
        )
    labels = [by_id[i] for i in range(len(by_id))]
    if no_entity_first and labels and labels[0] not in NO_ENTITY_LABELS:
        raise CheckpointError(
            f"Label 0 in {where} is {labels[0]!r}, but luke_ner reads label 0 as the no-entity "
            f"class ({' or '.join(map(repr, NO_ENTITY_LABELS))}: LUKE uses 'NIL', mLUKE 'O'), "
            "so it would never predict it. Checkpoints with another label layout are not "
            "supported."
        )
    return labels


def check_saved_labels(component_dir: Path) -> None:
    """Check that a saved component's cfg and its checkpoint's config.json name the same
    labels (an edit of either would rename the predicted entities).

    component_dir (Path): The folder `to_disk` wrote (`cfg`, `model/config.json`).
    """
    component_dir = Path(component_dir)
    cfg_file, config_file = component_dir / "cfg", component_dir / "model" / CONFIG_NAME
    if not cfg_file.is_file() or not config_file.is_file():
        return
    saved = read_json(cfg_file, "the component's settings").get("labels") or []
    id2label = read_config(config_file.parent).get("id2label") or {}
    labels = labels_from_id2label(id2label, f"'{config_file}'")
    if saved and list(saved) != labels:
        raise CheckpointError(
            f"The labels of '{config_file}' {labels} differ from the ones the pipeline was "
            f"saved with in '{cfg_file}' {list(saved)}: one of the two files was edited. "
            "Restore it (the classifier's rows follow the saved order)."
        )


def tokenizer_settings(tokenizer: Any, entity_ids: Sequence[int]) -> Dict[str, Any]:
    """The tokenizer settings that decide the subwords and ids luke_ner gives the model."""
    names = ("bos", "eos", "cls", "sep", "pad", "unk", "mask")
    return {
        "class": type(tokenizer).__name__,
        "add_prefix_space": getattr(tokenizer, "add_prefix_space", None),
        "do_lower_case": getattr(tokenizer, "do_lower_case", None),
        "vocab_size": len(tokenizer),
        "special_ids": {n: getattr(tokenizer, f"{n}_token_id", None) for n in names},
        "entity_mask_pad_ids": list(entity_ids),
    }


def save_tokenizer_settings(path: Path, settings: Dict[str, Any]) -> None:
    """Write the tokenizer settings next to the checkpoint files (luke_spacy.json)."""
    (Path(path) / SETTINGS_NAME).write_text(
        json.dumps({"tokenizer": settings}, indent=2, sort_keys=True), encoding="utf-8"
    )


def verify_tokenizer_settings(path: Path, settings: Dict[str, Any]) -> None:
    """Refuse a loaded tokenizer whose settings differ from the saved ones, if any were saved.

    path (Path): The checkpoint folder.
    settings (Dict[str, Any]): `tokenizer_settings` of the tokenizer loaded from it.
    """
    file = Path(path) / SETTINGS_NAME
    if not file.is_file():
        return
    saved = read_json(file, "the settings the pipeline was saved with").get("tokenizer", {})
    current = json.loads(json.dumps(settings))
    differ = [
        f"{key}: saved {saved.get(key)!r}, loaded {current.get(key)!r}"
        for key in sorted(set(saved) | set(current))
        if saved.get(key) != current.get(key)
    ]
    if differ:
        raise CheckpointError(
            f"The tokenizer files in '{path}' ({TOKENIZER_CONFIG_NAME} and the vocabulary) do "
            f"not give the tokenizer the pipeline was saved with ({SETTINGS_NAME}): "
            f"{'; '.join(differ)}. Restore the pipeline's tokenizer files."
        )


def missing_local_folder(name: str) -> Optional[str]:
    """An error message when `name` can only be a local folder and it does not exist."""
    if os.path.isdir(name) or is_hub_id(name):
        return None
    return _missing_folder(name)


def _missing_folder(name: str) -> str:
    return (
        f"The local folder '{name}' does not exist. Fix: give the path of a folder with "
        "config.json, the weights and the tokenizer files (command line: --model "
        "/path/to/folder), or a Hugging Face hub id."
    )


def is_hub_id(name: str) -> bool:
    """Whether `name` can be a Hugging Face hub id (a relative path may be one, too)."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def has_sentencepiece() -> bool:
    """Whether sentencepiece (mLUKE's tokenizer) can be imported."""
    try:
        import sentencepiece  # noqa: F401
    except ImportError:
        return False
    return True
