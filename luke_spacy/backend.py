"""The seam between luke_ner's model layer and the network that scores the spans.

`LukeRuntime` (runtime.py) plans Docs into passes, batches them under `max_batch_items`,
pads each batch into int64 numpy arrays (`encoding.collate`: input_ids, attention_mask,
entity_ids, entity_attention_mask, entity_position_ids, entity_start_positions,
entity_end_positions) and hands them to its backend. Everything else, before and after the
forward pass (planning, batching, decoding, what is written onto the Docs), is the same
whatever the backend. The torch backend is `model.TorchBackend`.

A second backend is a class with this interface; an architecture builds the Thinc model with
`runtime.build_span_model(OtherBackend, attrs=...)`, or offers several behind a
`BackendChoice`, as `luke_spacy.LukeSpanClassifier.v1` offers "torch" (`model.TorchBackend`)
and "onnxruntime" (`onnx_backend.OrtBackend`, inference only: it raises in `begin_update`),
and the `backend` setting picks one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional, Protocol, Sequence, Tuple, Union

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


class BackendChoice:
    """The backends a model offers, by the names `NerSettings.backend` takes. Those given by
    a maker are built the first time they are chosen, so an optional backend's packages are
    imported only by the pipelines that ask for it.

    built (Mapping[str, Backend]): Name -> backend.
    makers (Mapping[str, Callable[[], Backend]]): Name -> builds that backend (picklable, as
        pipelines are).
    """

    def __init__(
        self,
        built: Mapping[str, Backend],
        makers: Optional[Mapping[str, Callable[[], Backend]]] = None,
    ) -> None:
        self._built: Dict[str, Backend] = dict(built)
        self._makers = dict(makers or {})
        self._only: Optional[Backend] = None

    @classmethod
    def only(cls, backend: Backend) -> BackendChoice:
        """One backend, whatever the setting names (a test's or another architecture's)."""
        choice = cls({})
        choice._only = backend
        return choice

    def choose(self, settings: NerSettings) -> Backend:
        """The backend `settings.backend` names, configured with the settings.

        RAISES (ValueError): The model offers no such backend, or it cannot use a setting.
        RAISES (ImportError): The backend's optional packages are not installed.
        """
        backend = self._only
        if backend is None:
            name = settings.backend
            backend = self._built.get(name)
            if backend is None:
                if name not in self._makers:
                    offered = sorted({*self._built, *self._makers})
                    raise ValueError(
                        f"luke_ner: this model has no {name!r} backend; it offers {offered}."
                    )
                backend = self._built[name] = self._makers[name]()
        backend.configure(settings)
        return backend
