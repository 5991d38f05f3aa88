"""luke_ner's settings: one typed object, validated once (the pipe's `cfg` is its view)."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from typing import (
    Any,
    Dict,
    List,
    Literal,
    Mapping,
    Optional,
    Sequence,
    Tuple,
    Union,
    get_args,
)

from confection import ConfigValidationError

from .encoding import RecipeSettings

# Typed in the factory's signature, so spaCy's config validation names the allowed values.
Context = Literal["document", "sentence"]
DType = Literal["float32", "bfloat16", "float16"]
Attention = Literal["eager", "sdpa"]
BackendName = Literal["torch", "onnxruntime"]
# The settings that count positions: each must be a positive integer.
POSITIVE_INTEGERS = ("max_mention_length", "max_entity_length", "max_length", "max_batch_items")


class SettingsError(ValueError):
    """Settings with values out of range, each named (a ValueError, for Python callers).

    The factory raises it as spaCy's formatted config error (`config_error`), as spaCy does
    for a value of the wrong type, so `spacy train` and `spacy debug config` name the setting
    instead of ending in a traceback.

    problems (List[Tuple[str, str]]): (setting, what is wrong) pairs, e.g.
        ("max_length", "must be a positive integer, got 0").
    """

    def __init__(self, problems: List[Tuple[str, str]]) -> None:
        self.problems = list(problems)
        super().__init__(" ".join(f"luke_ner: {key} {message}." for key, message in problems))

    def config_error(self, name: str, config: Dict[str, Any]) -> ConfigValidationError:
        """The error as spaCy reports a setting of the wrong type.

        name (str): The component's name in the pipeline.
        config (Dict[str, Any]): The component's settings, shown with the error.
        """
        return ConfigValidationError(
            config=config,
            errors=[{"loc": [name, key], "msg": message} for key, message in self.problems],
            title="Config error for 'luke_ner'",
        )


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
    set_trf_data (bool): Store LUKE's word representations in `doc._.trf_data` (always done
        while components listen to the component).
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
    threshold: Threshold = 0.0
    spans_key: Optional[str] = "luke_ner"
    set_trf_data: bool = False
    temperature: float = 1.0
    nil_veto: bool = True
    nested_spans_key: Optional[str] = None
    gold_spans_key: Optional[str] = None
    backend: BackendName = "torch"
    onnx_path: Optional[str] = None

    def __post_init__(self) -> None:
        problems = settings_problems(self)
        if problems:
            raise SettingsError(problems)
        if isinstance(self.threshold, Mapping):
            # A copy with float values, sorted by label: the settings stay what was validated.
            table = {label: float(self.threshold[label]) for label in sorted(self.threshold)}
            object.__setattr__(self, "threshold", table)

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


def settings_problems(settings: NerSettings) -> List[Tuple[str, str]]:
    """What is wrong with each setting whose value is out of range (empty when none is).

    settings (NerSettings): The settings to check.
    RETURNS (List[Tuple[str, str]]): (setting, what is wrong) pairs, in field order.
    """
    problems: List[Tuple[str, str]] = []
    for key in POSITIVE_INTEGERS:
        value = getattr(settings, key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            problems.append((key, f"must be a positive integer, got {value!r}"))
    bad = {key for key, _ in problems}
    if not bad & {"max_mention_length", "max_length"}:
        if settings.max_mention_length > settings.max_length:
            problems.append(
                (
                    "max_mention_length",
                    f"({settings.max_mention_length}) cannot exceed max_length "
                    f"({settings.max_length}): a candidate span must fit in a window",
                )
            )
    # spaCy checks these through the factory's Literal types; Python callers get the same.
    for key, choices in (
        ("context", Context),
        ("dtype", DType),
        ("attention", Attention),
        ("backend", BackendName),
    ):
        allowed = get_args(choices)
        if getattr(settings, key) not in allowed:
            problems.append((key, f"must be one of {allowed}, got {getattr(settings, key)!r}"))
    problems.extend(threshold_problems(settings.threshold))
    temperature = settings.temperature
    if (
        isinstance(temperature, bool)
        or not isinstance(temperature, (int, float))
        or not math.isfinite(temperature)
        or temperature <= 0
    ):
        problems.append(("temperature", f"must be a positive number, got {temperature!r}"))
    threshold = settings.threshold
    if not settings.nil_veto and isinstance(threshold, (int, float)) and threshold <= 0.0:
        problems.append(
            ("nil_veto", "= false needs a threshold above 0.0 (else every span is an entity)")
        )
    if not settings.nil_veto and isinstance(threshold, Mapping):
        zero = sorted(label for label, value in threshold.items() if value == 0.0)
        if zero:
            problems.append(
                (
                    "nil_veto",
                    f"= false needs a threshold above 0.0 for every label, got 0.0 for {zero}",
                )
            )
    for key in ("spans_key", "nested_spans_key", "gold_spans_key"):
        value = getattr(settings, key)
        if value is not None and (not isinstance(value, str) or not value):
            problems.append((key, f"must be a non-empty string or null, got {value!r}"))
    if settings.nested_spans_key is not None and settings.nested_spans_key == settings.spans_key:
        problems.append(
            (
                "nested_spans_key",
                f"and spans_key are both {settings.spans_key!r}: the nested and the flat "
                "entities need doc.spans keys of their own",
            )
        )
    if settings.onnx_path is not None and (
        not isinstance(settings.onnx_path, str) or not settings.onnx_path
    ):
        problems.append(("onnx_path", f"must be a path or null, got {settings.onnx_path!r}"))
    # Settings the chosen backend would ignore: refused, so that none silently does nothing.
    if settings.onnx_path is not None and settings.backend == "torch":
        problems.append(
            ("onnx_path", "is used with backend = 'onnxruntime' only; set it to null for torch")
        )
    if settings.backend == "onnxruntime" and settings.dtype in ("bfloat16", "float16"):
        problems.append(
            (
                "dtype",
                f"= {settings.dtype!r} is a torch setting; backend = 'onnxruntime' runs the "
                "export's precision (float32, or int8 from `luke-spacy export-onnx "
                "--quantize int8`): set dtype = 'float32'",
            )
        )
    return problems


def decoding_problems(settings: NerSettings, labels: Sequence[str]) -> List[Tuple[str, str]]:
    """What is wrong with the decoding settings for a model's labels (empty when nothing is):
    a threshold table naming a label the model does not have, or, with nil_veto = false, a
    label without a threshold in it. Checked as soon as the checkpoint is loaded.

    settings (NerSettings): The settings, valid on their own.
    labels (Sequence[str]): The model's labels in id order (0 is the no-entity class).
    RETURNS (List[Tuple[str, str]]): (setting, what is wrong) pairs.
    """
    threshold = settings.threshold
    if not isinstance(threshold, Mapping):
        return []
    problems: List[Tuple[str, str]] = []
    unknown = sorted(set(threshold) - set(labels[1:]))
    if unknown:
        problems.append(
            (
                "threshold",
                f"names labels the model does not have: {unknown}; its labels are "
                f"{list(labels[1:])}",
            )
        )
    missing = [label for label in labels[1:] if label not in threshold]
    if not settings.nil_veto and missing:
        problems.append(
            (
                "nil_veto",
                "= false needs a threshold above 0.0 for every label, and the threshold "
                f"table leaves out {missing}",
            )
        )
    return problems


def threshold_problems(threshold: Any) -> List[Tuple[str, str]]:
    """What is wrong with a `threshold`: a probability, or a {label: probability} table.

    threshold (Any): The value given.
    RETURNS (List[Tuple[str, str]]): (setting, what is wrong) pairs, e.g.
        ("threshold['PER']", "must be between 0.0 and 1.0, got 1.5").
    """
    if not isinstance(threshold, Mapping):
        problem = probability_problem(threshold)
        return [] if problem is None else [("threshold", problem)]
    problems: List[Tuple[str, str]] = []
    for label, value in threshold.items():
        if not isinstance(label, str) or not label:
            problems.append(("threshold", f"labels must be non-empty strings, got {label!r}"))
            continue
        problem = probability_problem(value)
        if problem is not None:
            problems.append((f"threshold[{label!r}]", problem))
    return problems


def probability_problem(value: Any) -> Optional[str]:
    """What is wrong with a probability setting (a number from 0.0 to 1.0), or None.

    value (Any): The value to check.
    RETURNS (Optional[str]): The problem, e.g. "must be between 0.0 and 1.0, got 2".
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"must be a number, got {value!r}"
    if math.isnan(value) or not 0.0 <= value <= 1.0:
        return f"must be between 0.0 and 1.0, got {value!r}"
    return None


def config_defaults(section: str) -> str:
    """The settings' defaults as a config section, e.g. `[luke_ner]` with `context = "document"`.

    section (str): The section name.
    RETURNS (str): The section, one `key = value` line per setting (JSON values).
    """
    lines = [f"[{section}]"]
    for field in fields(NerSettings):
        lines.append(f"{field.name} = {json.dumps(field.default)}")
    return "\n".join(lines) + "\n"
