"""luke_ner's settings: one typed object, validated once (the pipe's `cfg` is its view)."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Dict, Literal, Mapping, Optional, Union, get_args

from .encoding import RecipeSettings

# Typed in the factory's signature, so spaCy's config validation names the allowed values.
Context = Literal["document", "sentence"]
DType = Literal["float32", "bfloat16", "float16"]
Attention = Literal["eager", "sdpa"]
# A number for every label, or a {label: number} table (labels not listed: 0.0, the recipe).
Threshold = Union[float, Dict[str, float]]


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
    threshold (Union[float, Dict[str, float]]): Least probability of a span's best label for
        it to compete as an entity; 0.0 is the recipe (every span whose best label is not
        no-entity). A {label: number} table sets it per label; labels not listed keep 0.0.
        It applies to `doc.ents` and to the nested group alike.
    spans_key (Optional[str]): Key of `doc.spans` for the scored entities, None for none.
    set_trf_data (bool): Store LUKE's word representations in `doc._.trf_data`.
    temperature (float): Divides the logits before the softmax that gives the entities'
        scores and the probabilities the threshold reads (1.0: the model's own; see
        `luke-spacy tune-thresholds --temperature`). The decoding order is the logits'.
    nil_veto (bool): A span whose likeliest label is no-entity never competes (the recipe).
        With false (opt-in), a span competes with its likeliest entity label whenever that
        label's probability reaches its threshold, even where no-entity is likelier: more
        recall for less precision. Every label then needs a threshold above 0.0.
    nested_spans_key (Optional[str]): Key of `doc.spans` for the nested decoding (entities
        inside entities, scored), None for none. `doc.ents` is unchanged.
    gold_spans_key (Optional[str]): Key of the reference Docs' `doc.spans` holding nested
        gold for training (each span its own label), None to train from `doc.ents`.
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
    threshold: Threshold = 0.0
    spans_key: Optional[str] = "luke_ner"
    set_trf_data: bool = False
    temperature: float = 1.0
    nil_veto: bool = True
    nested_spans_key: Optional[str] = None
    gold_spans_key: Optional[str] = None

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
        # A table is copied, so the settings stay what was validated.
        object.__setattr__(self, "threshold", checked_threshold(self.threshold))
        self._check_decoding()
        # spaCy checks these through the factory's Literal types; Python callers get the same.
        for key, choices in (("context", Context), ("dtype", DType), ("attention", Attention)):
            allowed = get_args(choices)
            if getattr(self, key) not in allowed:
                raise ValueError(
                    f"luke_ner: {key} must be one of {allowed}, got {getattr(self, key)!r}."
                )

    def _check_decoding(self) -> None:
        temperature = self.temperature
        if (
            isinstance(temperature, bool)
            or not isinstance(temperature, (int, float))
            or not math.isfinite(temperature)
            or temperature <= 0
        ):
            raise ValueError(
                f"luke_ner: temperature must be a positive number, got {temperature!r}."
            )
        if not self.nil_veto and not isinstance(self.threshold, dict) and self.threshold <= 0.0:
            raise ValueError(
                "luke_ner: nil_veto = false needs a threshold above 0.0 (else every span "
                "would be an entity)."
            )
        for key in ("nested_spans_key", "gold_spans_key"):
            value = getattr(self, key)
            if value is not None and (not isinstance(value, str) or not value):
                raise ValueError(
                    f"luke_ner: {key} must be a non-empty string or null, got {value!r}."
                )
        if self.nested_spans_key is not None and self.nested_spans_key == self.spans_key:
            raise ValueError(
                f"luke_ner: nested_spans_key and spans_key are both {self.spans_key!r}; the "
                "nested and the flat entities need doc.spans keys of their own."
            )

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


def checked_threshold(threshold: Any) -> Threshold:
    """A valid `threshold`: a number in [0, 1], or a {label: number in [0, 1]} table (copied
    with float values, sorted by label).

    threshold (Any): The value given.
    RETURNS (Threshold): The value to keep.
    """
    if isinstance(threshold, Mapping):
        table: Dict[str, float] = {}
        for label in sorted(threshold, key=str):
            if not isinstance(label, str) or not label:
                raise ValueError(f"luke_ner: threshold labels must be strings, got {label!r}.")
            table[label] = float(_threshold_number(threshold[label], f"threshold[{label!r}]"))
        return table
    return _threshold_number(threshold, "threshold")


def _threshold_number(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(
            f"luke_ner: {name} must be a number or a {{label: number}} table, got {value!r}."
        )
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"luke_ner: {name} must be between 0.0 and 1.0, got {value!r}.")
    return value


def config_defaults(section: str) -> str:
    """The settings' defaults as a config section, e.g. `[luke_ner]` with `context = "document"`.

    section (str): The section name.
    RETURNS (str): The section, one `key = value` line per setting (JSON values).
    """
    lines = [f"[{section}]"]
    for field in fields(NerSettings):
        lines.append(f"{field.name} = {json.dumps(field.default)}")
    return "\n".join(lines) + "\n"
