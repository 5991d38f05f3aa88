"""luke_ner's settings: one typed object, validated once (the pipe's `cfg` is its view)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from typing import Any, Dict, Literal, Optional, get_args

from .encoding import RecipeSettings

# Typed in the factory's signature, so spaCy's config validation names the allowed values.
Context = Literal["document", "sentence"]
DType = Literal["float32", "bfloat16", "float16"]
Attention = Literal["eager", "sdpa"]
BackendName = Literal["torch", "onnxruntime"]


@dataclass(frozen=True)
class NerSettings:
    """The settings of a `luke_ner` component, validated on construction (at `add_pipe`).

    The defaults here are the only ones: the factory's default config is written from them
    (`config_defaults`). Whether `device` names a usable device is the backend's to check
    (`LukeRuntime.configure`, also at `add_pipe`).

    max_mention_length (int): Longest candidate span in subwords (the recipe's 16).
    max_entity_length (int): Most candidate spans per forward pass (the recipe's 128).
    max_length (int): Window size in subwords without special tokens (the recipe's 510); it
        is checked against the checkpoint's position embeddings when that is loaded.
    context (str): "document" (balanced document context) or "sentence" (none).
    max_batch_items (int): Padded word+span positions per forward batch.
    device (Optional[str]): Torch device; None follows spacy.prefer_gpu/require_gpu.
    dtype (str): "float32" (exact), or "bfloat16"/"float16" autocast.
    attention (str): "eager" (transformers' own) or "sdpa" (entity-aware attention fused into
        one scaled_dot_product_attention call per layer).
    overwrite_ents (bool): Replace entities already on the Doc instead of keeping them.
    threshold (float): Least probability of a span's best label for it to compete as an
        entity; 0.0 is the recipe (every span whose best label is not no-entity).
    spans_key (Optional[str]): Key of `doc.spans` for the scored entities, None for none.
    set_trf_data (bool): Store LUKE's word representations in `doc._.trf_data`.
    backend (str): What runs the forward pass: "torch" (exact, trains) or "onnxruntime"
        (inference only; needs luke-spacy[onnx]).
    onnx_path (Optional[str]): With backend "onnxruntime": a folder written by
        `luke-spacy export-onnx` (e.g. int8); None exports the checkpoint on first use and
        caches the export. A saved pipeline's own export takes precedence.
    """

    max_mention_length: int = 16
    max_entity_length: int = 128
    max_length: int = 510
    context: Context = "document"
    max_batch_items: int = 4096
    device: Optional[str] = None
    dtype: DType = "float32"
    attention: Attention = "sdpa"
    overwrite_ents: bool = False
    threshold: float = 0.0
    spans_key: Optional[str] = "luke_ner"
    set_trf_data: bool = False
    backend: BackendName = "torch"
    onnx_path: Optional[str] = None

    def __post_init__(self) -> None:
        for key in ("max_mention_length", "max_entity_length", "max_length", "max_batch_items"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"luke_ner: {key} must be a positive integer, got {value!r}.")
        if self.max_mention_length > self.max_length:
            raise ValueError(
                f"luke_ner: max_mention_length ({self.max_mention_length}) cannot exceed "
                f"max_length ({self.max_length})."
            )
        threshold = self.threshold
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
            raise ValueError(f"luke_ner: threshold must be a number, got {threshold!r}.")
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"luke_ner: threshold must be between 0.0 and 1.0, got {threshold!r}.")
        # spaCy checks these through the factory's Literal types; Python callers get the same.
        for key, choices in (
            ("context", Context),
            ("dtype", DType),
            ("attention", Attention),
            ("backend", BackendName),
        ):
            allowed = get_args(choices)
            if getattr(self, key) not in allowed:
                raise ValueError(
                    f"luke_ner: {key} must be one of {allowed}, got {getattr(self, key)!r}."
                )
        if self.onnx_path is not None and not isinstance(self.onnx_path, str):
            raise ValueError(f"luke_ner: onnx_path must be a path or null, got {self.onnx_path!r}.")

    @property
    def recipe(self) -> RecipeSettings:
        """The window, span and chunk limits of LUKE's recipe."""
        return RecipeSettings(
            max_mention_length=self.max_mention_length,
            max_entity_length=self.max_entity_length,
            max_length=self.max_length,
            document_context=self.context == "document",
        )

    def to_dict(self) -> Dict[str, Any]:
        """The settings as the JSON-serializable dict saved in the component's `cfg`."""
        return asdict(self)


def config_defaults(section: str) -> str:
    """The settings' defaults as a config section, e.g. `[luke_ner]` with `context = "document"`.

    section (str): The section name.
    RETURNS (str): The section, one `key = value` line per setting (JSON values).
    """
    lines = [f"[{section}]"]
    for field in fields(NerSettings):
        lines.append(f"{field.name} = {json.dumps(field.default)}")
    return "\n".join(lines) + "\n"
