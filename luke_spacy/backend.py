"""The seam between luke_ner's model layer and the network that scores the spans.

`LukeRuntime` (runtime.py) plans Docs into passes, batches them under `max_batch_items`,
pads each batch into int64 numpy arrays (`encoding.collate`: input_ids, attention_mask,
entity_ids, entity_attention_mask, entity_position_ids, entity_start_positions,
entity_end_positions) and hands them to its backend. Everything else, before and after the
forward pass (planning, batching, decoding, what is written onto the Docs), is the same
whatever the backend. The torch backend is `model.TorchBackend`.

A second backend (e.g. ONNX Runtime) is a class with this interface; its architecture builds
the Thinc model with `runtime.build_span_model(OtherBackend, attrs=...)`, as
`luke_spacy.LukeSpanClassifier.v1` does with `TorchBackend`. An inference-only backend raises
in `begin_update` and `begin_update_words`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict, Optional, Protocol, Sequence, Tuple, Union

import numpy

from .settings import NerSettings

# Collated model inputs: name -> int64 array (see `encoding.collate`).
Inputs = Dict[str, numpy.ndarray]
# Takes the gradient of an output (d_logits, or d_words) and accumulates the parameter gradients.
Backprop = Callable[[numpy.ndarray], None]


class Backend(Protocol):
    """A loaded (or loadable) LUKE span classifier and its forward pass."""

    @property
    def is_loaded(self) -> bool:
        """Whether the checkpoint is in memory; nothing else loads it."""

    @property
    def tokenizer(self) -> Any:
        """The checkpoint's LukeTokenizer or MLukeTokenizer; loads the checkpoint if needed."""

    @property
    def config(self) -> Any:
        """The checkpoint's LukeConfig (labels, sizes); loads the checkpoint if needed."""

    def configure(self, settings: NerSettings) -> None:
        """Take the settings that concern the backend (device, dtype, attention); raise a
        ValueError for one it cannot use. Called at construction and on every change."""

    def load(self, labels: Optional[Sequence[str]] = None) -> None:
        """Load the checkpoint that the model config names (with a head for `labels`)."""

    def load_local(self, path: Union[str, Path]) -> None:
        """Load a checkpoint folder written by `save`, without the network."""

    def save(self, path: Union[str, Path]) -> None:
        """Write the loaded checkpoint into a folder (Hugging Face layout)."""

    def to_bytes(self) -> bytes:
        """The loaded checkpoint as bytes."""

    def from_bytes(self, data: bytes) -> None:
        """Load the checkpoint from `to_bytes` output."""

    def predict(
        self, inputs: Inputs, want_words: bool
    ) -> Tuple[numpy.ndarray, Optional[numpy.ndarray]]:
        """Score one collated batch for inference.

        RETURNS: (rows, spans, labels) float32 logits and, if `want_words`, (rows, words,
            hidden) float32 final word states, else None.
        """

    def begin_update(
        self, inputs: Inputs, drop: Optional[float]
    ) -> Tuple[numpy.ndarray, Backprop]:
        """Score one collated batch for training, with dropout `drop` (None: as loaded).

        RETURNS: (rows, spans, labels) float32 logits and the callback that takes d_logits.
        """

    def begin_update_words(
        self, inputs: Inputs, drop: Optional[float]
    ) -> Tuple[numpy.ndarray, Backprop]:
        """Compute the final word states of one collated batch for training (the gradient of
        listening components flows back through them; see `LukeRuntime.backprop_word_states`).

        RETURNS: (rows, words, hidden) float32 word states and the callback that takes their
            gradient (same shape) and accumulates the parameter gradients.
        """
