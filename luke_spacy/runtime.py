"""The model layer behind luke_ner: Docs in, each sentence's scored candidate spans out.

`LukeRuntime` owns everything between spaCy Docs and the network, whatever runs it: the
component's settings (their one holder), the sentences and subword ids of each Doc and their
passes (`planning`), the passes run in bounded, length-sorted batches (`scheduling`), their
padding into arrays (`encoding.collate`), and the forward batches of a training update. The
network is its `backend` (`backend.Backend`; torch: `model.TorchBackend`), the only part that
differs between backends. No torch here.

The Thinc model (`build_span_model`) keeps its runtime in `model.attrs["runtime"]`. Its
forward takes Docs for inference (`model.predict(docs)`: a stream of `ScoredSentence`, and
`DocStates` with `set_trf_data` or listeners) and one `SpanBatch` of an update for training
(`model.begin_update(batch)`), so an update holds one forward batch's activations at a time.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy
from spacy.pipeline import Sentencizer
from spacy.tokens import Doc
from thinc.api import Model

from .backend import Backend, BackendChoice, Inputs
from .encoding import Pass, SpecialIds, batch_by_budget, collate
from .listening import refuse_replacing_listeners
from .planning import Sentences, plan_docs, sentence_ranges
from .scheduling import (
    DocStates,
    ScoredSentence,
    is_first_chunk,
    score_passes,
    word_state_rows,
)
from .settings import NerSettings, SettingsError, decoding_problems
from .tokenization import WordTokenizer, special_ids


class NotLoadedError(ValueError):
    """The checkpoint was never loaded, so there is nothing to save."""


@dataclass
class SpanBatch:
    """One forward batch of a training update (`LukeRuntime.update_batches`).

    passes (List[Pass]): Passes with candidate spans; `Pass.doc` indexes the update's Docs.
    n_spans (int): Candidate spans of the whole update. The loss is their mean, so splitting
        an update into forward batches does not change its gradient.
    """

    passes: List[Pass]
    n_spans: int


@dataclass
class BatchScores:
    """The span logits of a `SpanBatch`: what the model's `begin_update` returns.

    batch (SpanBatch): The batch scored.
    logits (numpy.ndarray): (passes, spans, labels) float32; the first `len(pass.spans)`
        columns of each row are its candidates, the rest padding.
    """

    batch: SpanBatch
    logits: numpy.ndarray


class LukeRuntime:
    """Docs to scored candidate spans with a backend's forward pass (see the module docstring).

    The checkpoint is loaded on first use, so constructing a pipeline reads nothing and
    `spacy.load` of a saved pipeline never looks a hub id up. Whenever the backend's loaded
    checkpoint changes (first use, `initialize`, `from_disk`), the window size is checked
    against its position embeddings and the word tokenizer is rebuilt.

    backend (Union[Backend, BackendChoice]): Loads the checkpoint and runs the network; with
        a choice, the one the `backend` setting names (`self.backend`).
    settings (NerSettings): The component's settings.
    """

    def __init__(
        self, backend: Union[Backend, BackendChoice], settings: Optional[NerSettings] = None
    ) -> None:
        if not isinstance(backend, BackendChoice):
            backend = BackendChoice.only(backend)
        self._backends = backend
        # The backend the settings name (set by `configure`).
        self.backend: Backend
        # Instrumentation: called with the passes of each forward batch before it runs.
        self.on_batch: Optional[Callable[[Sequence[Pass]], None]] = None
        self._sentencizer = Sentencizer()
        self._word_tokenizer: Optional[WordTokenizer] = None
        self._ids: Optional[SpecialIds] = None
        # The checkpoint config that the settings were last checked against.
        self._checked: Any = None
        self._settings = NerSettings()
        self.configure(settings or self._settings)
        # Whether components listen to the word states (the pipe keeps it up to date):
        # inference then keeps them, as with set_trf_data.
        self.listened = False

    # -- settings ------------------------------------------------------------------------------

    @property
    def keeps_word_states(self) -> bool:
        """Whether inference keeps each Doc's word states: `set_trf_data`, or listeners."""
        return self._settings.set_trf_data or self.listened

    @property
    def settings(self) -> NerSettings:
        """The component's settings (read-only: change them with `configure`)."""
        return self._settings

    def configure(self, settings: NerSettings) -> None:
        """Use these settings from now on; the backend they name checks the ones that concern
        it.

        settings (NerSettings): Validated on construction.
        """
        self.backend = self._backends.choose(settings)
        self._settings = settings
        self._checked = None

    # -- the checkpoint ------------------------------------------------------------------------

    @property
    def is_loaded(self) -> bool:
        """Whether the checkpoint is in memory (loaded, initialized or read from disk)."""
        return self.backend.is_loaded

    @property
    def tokenizer(self) -> Any:
        """The checkpoint's Hugging Face tokenizer."""
        self._checkpoint()
        return self.backend.tokenizer

    @property
    def word_tokenizer(self) -> WordTokenizer:
        """Subword ids of words, as the checkpoint's tokenizer gives them (cached by type)."""
        return self._checkpoint()[0]

    @property
    def labels(self) -> List[str]:
        """The checkpoint's labels in id order; label 0 is the no-entity class."""
        id2label = self.backend.config.id2label
        return [id2label[i] for i in range(len(id2label))]

    @property
    def hidden_size(self) -> int:
        return self.backend.config.hidden_size

    def load(self, labels: Optional[Sequence[str]] = None) -> None:
        """Load the checkpoint the model names (hub id, local folder or Hugging Face cache).

        labels (Optional[Sequence[str]]): Entity labels to train: the checkpoint is reloaded
            with a head for exactly these (kept when it already has them).
        """
        self.backend.load(labels)
        self._checkpoint()

    def load_local(self, path: Union[str, Path]) -> None:
        """Load a checkpoint folder written by `save`; never touches the network."""
        self.backend.load_local(path)
        self._checkpoint()

    def save(self, path: Union[str, Path]) -> None:
        """Write config, weights and tokenizer files into a folder."""
        self._require_loaded()
        self.backend.save(path)

    def to_bytes(self) -> bytes:
        self._require_loaded()
        return self.backend.to_bytes()

    def from_bytes(self, data: bytes) -> None:
        self.backend.from_bytes(data)
        self._checkpoint()

    # -- planning ------------------------------------------------------------------------------

    def sentences(self, doc: Doc) -> Sentences:
        """The sentence word ranges scored in a Doc (see `planning.sentence_ranges`)."""
        return sentence_ranges(doc, self._sentencizer)

    def word_ids(self, doc: Doc) -> List[Tuple[int, ...]]:
        """The subword ids of each token of a Doc."""
        return self.word_tokenizer([token.text for token in doc])

    def plan(
        self, docs: Sequence[Doc], sentences: Optional[Sequence[Sentences]] = None
    ) -> List[Pass]:
        """The passes that score every candidate span of the Docs, as inference plans them.

        docs (Sequence[Doc]): The Docs.
        sentences (Optional[Sequence[Sentences]]): Sentences of each Doc to use instead of
            `self.sentences(doc)`.
        RETURNS (List[Pass]): The passes, Doc by Doc.
        """
        return list(self._passes(docs, sentences, cover_all=self.keeps_word_states))

    def collate(self, passes: Sequence[Pass]) -> Inputs:
        """One forward batch of passes as the model's input arrays (`encoding.collate`)."""
        ids = self._checkpoint()[1]
        return collate(passes, ids, self._settings.max_mention_length)

    # -- inference -----------------------------------------------------------------------------

    def scores(self, docs: Sequence[Doc]) -> Iterator[Union[ScoredSentence, DocStates]]:
        """Each sentence's candidate spans with their logits, Doc by Doc, as soon as the
        sentence's passes have run (and each Doc's word states when `keeps_word_states`).

        docs (Sequence[Doc]): The Docs; the items carry their index.
        YIELDS (Union[ScoredSentence, DocStates]): See `scheduling.score_passes`.
        """
        return self._scores(docs, self.keeps_word_states)

    def word_states(self, docs: Sequence[Doc]) -> List[Optional[numpy.ndarray]]:
        """Each Doc's final subword states, as inference computes them (what listening
        components get in training; `backprop_word_states` takes their gradient).

        docs (Sequence[Doc]): The Docs.
        RETURNS (List[Optional[numpy.ndarray]]): (n_subwords, hidden) float32 per Doc; None
            for a Doc without subwords.
        """
        states: List[Optional[numpy.ndarray]] = [None] * len(docs)
        for item in self._scores(docs, True):
            if isinstance(item, DocStates):
                states[item.doc] = item.states
        return states

    def score_batch(self, batch: SpanBatch) -> BatchScores:
        """The logits of a training batch, for inference (no gradients, no dropout)."""
        logits, _ = self._predict(batch.passes, False)
        return BatchScores(batch, logits)

    # -- training ------------------------------------------------------------------------------

    def update_batches(
        self, docs: Sequence[Doc], sentences: Sequence[Sentences]
    ) -> List[SpanBatch]:
        """The forward batches of a training update: every candidate span of the Docs'
        sentences, with the windows, span limit and chunks of inference.

        Passes without candidates (which inference may run for the word states) are not
        planned: they train nothing.

        docs (Sequence[Doc]): The predicted Docs of the examples.
        sentences (Sequence[Sentences]): Their (gold) sentences.
        RETURNS (List[SpanBatch]): Batches within `max_batch_items`; none without candidates.
        """
        passes = list(self._passes(docs, sentences, cover_all=False))
        n_spans = sum(len(p.spans) for p in passes)
        if n_spans == 0:
            return []
        return [
            SpanBatch([passes[i] for i in indices], n_spans)
            for indices in batch_by_budget(passes, self._settings.max_batch_items)
        ]

    def begin_update(
        self, batch: SpanBatch, drop: Optional[float] = None
    ) -> Tuple[BatchScores, Callable[[numpy.ndarray], SpanBatch]]:
        """Forward one batch of an update; gradients accumulate until the optimizer step.

        batch (SpanBatch): From `update_batches`.
        drop (Optional[float]): Dropout rate; None leaves the checkpoint's.
        RETURNS (Tuple[BatchScores, Callable]): The logits and the callback taking d_logits.
        """
        if self.on_batch is not None:
            self.on_batch(batch.passes)
        logits, backprop_logits = self.backend.begin_update(self.collate(batch.passes), drop)

        def backprop(d_logits: numpy.ndarray) -> SpanBatch:
            backprop_logits(d_logits)
            return batch  # ids and spans: nothing to differentiate

        return BatchScores(batch, logits), backprop

    def backprop_word_states(
        self, docs: Sequence[Doc], d_states: Sequence[Optional[numpy.ndarray]]
    ) -> None:
        """Accumulate the parameter gradients of the word states of `word_states(docs)`.

        The passes that computed the states are run again with gradients, one forward batch
        at a time (so no activations wait for the listeners' gradients), without dropout,
        as the states were computed.

        docs (Sequence[Doc]): The Docs given to `word_states`.
        d_states (Sequence[Optional[numpy.ndarray]]): The gradient of each Doc's states
            (same shape), None for a Doc to leave out.
        """
        passes: List[Pass] = []
        previous: Optional[Pass] = None
        for p in self._passes(docs, cover_all=True):
            if is_first_chunk(previous, p) and d_states[p.doc] is not None:
                passes.append(p)
            previous = p
        for indices in batch_by_budget(passes, self._settings.max_batch_items):
            batch = [passes[i] for i in indices]
            if self.on_batch is not None:
                self.on_batch(batch)
            words, backprop = self.backend.begin_update_words(self.collate(batch), 0.0)
            d_words = numpy.zeros_like(words)
            for row, p in enumerate(batch):
                subwords, rows = word_state_rows(p)
                d_words[row, rows] = d_states[p.doc][subwords]
            backprop(d_words)

    # -- internals -----------------------------------------------------------------------------

    def _scores(
        self, docs: Sequence[Doc], want_words: bool
    ) -> Iterator[Union[ScoredSentence, DocStates]]:
        return score_passes(
            self._passes(docs, cover_all=want_words),
            self._predict,
            max_batch_items=self._settings.max_batch_items,
            want_words=want_words,
        )

    def _passes(
        self,
        docs: Sequence[Doc],
        sentences: Optional[Sequence[Sentences]] = None,
        *,
        cover_all: bool,
    ) -> Iterator[Pass]:
        return plan_docs(
            docs,
            self.word_ids,
            self.sentences,
            self._settings.recipe,
            given=sentences,
            cover_all=cover_all,
        )

    def _predict(
        self, passes: Sequence[Pass], want_words: bool
    ) -> Tuple[numpy.ndarray, Optional[numpy.ndarray]]:
        if self.on_batch is not None:
            self.on_batch(passes)
        return self.backend.predict(self.collate(passes), want_words)

    def _checkpoint(self) -> Tuple[WordTokenizer, SpecialIds]:
        """The word tokenizer and special ids of the loaded checkpoint (loading it on first
        use), after checking the settings against it (and its labels) once per checkpoint."""
        tokenizer, config = self.backend.tokenizer, self.backend.config
        if self._word_tokenizer is None or self._word_tokenizer.tokenizer is not tokenizer:
            self._word_tokenizer = WordTokenizer(tokenizer)
            self._ids = special_ids(tokenizer)
        if config is not self._checked:
            capacity = config.max_position_embeddings - config.pad_token_id - 3
            max_length = self._settings.max_length
            if max_length > capacity:
                raise ValueError(
                    f"max_length = {max_length} does not fit the checkpoint, whose "
                    f"max_position_embeddings = {config.max_position_embeddings} allows at most "
                    f"{capacity} subwords per window; set max_length to {capacity} or less."
                )
            # The checkpoint's labels are known from here on, whichever way it was loaded.
            problems = decoding_problems(self._settings, self.labels)
            if problems:
                raise SettingsError(problems)
            self._checked = config
        assert self._ids is not None
        return self._word_tokenizer, self._ids

    def _require_loaded(self) -> None:
        if not self.is_loaded:
            raise NotLoadedError(
                "luke_ner has no checkpoint in memory, so there is nothing to save (saving "
                "never downloads one). Call nlp.initialize() or process a text first, which "
                "loads the checkpoint that [components.luke_ner.model] name points to."
            )


def build_span_model(
    make_backend: Callable[[Model], Union[Backend, BackendChoice]],
    *,
    attrs: dict,
    shims: Sequence[Any] = (),
) -> Model:
    """The Docs-in Thinc model of luke_ner around a backend.

    make_backend (Callable[[Model], Union[Backend, BackendChoice]]): Builds the backend for
        the new model (it may keep its weights in the model's shims), or the choice of them.
    attrs (dict): Serializable attributes, e.g. the checkpoint's name and revision.
    shims (Sequence[Shim]): Thinc shims holding the backend's parameters (optimizer steps
        and serialization go through them).
    RETURNS (Model): Docs -> scored sentences; SpanBatch -> logits (see `forward`).
    """
    model: Model = Model(
        "luke_span_classifier",
        forward,
        shims=list(shims),
        # thinc's set_dropout_rate writes the rate of each update here; spaCy's
        # replace_listeners asks replace_listener_cfg before copying the model (refused).
        attrs={**attrs, "dropout_rate": None, "replace_listener_cfg": refuse_replacing_listeners},
    )
    model.attrs["runtime"] = LukeRuntime(make_backend(model))
    return model


def get_runtime(model: Model) -> LukeRuntime:
    """The runtime of a luke_ner model."""
    runtime = model.attrs.get("runtime")
    if not isinstance(runtime, LukeRuntime):
        raise TypeError(
            f"luke_ner needs a luke_spacy.LukeSpanClassifier.v1 model, got {model.name!r}."
        )
    return runtime


def forward(model: Model, X: Union[Sequence[Doc], SpanBatch], is_train: bool):
    """Docs -> each sentence's scores (inference); a SpanBatch -> its logits (training)."""
    runtime = get_runtime(model)
    if isinstance(X, SpanBatch):
        if is_train:
            return runtime.begin_update(X, model.attrs["dropout_rate"])
        return runtime.score_batch(X), lambda d_logits: X
    if is_train:
        raise ValueError(
            "luke_ner's model trains one forward batch at a time: give begin_update a "
            "SpanBatch from LukeRuntime.update_batches, not Docs."
        )
    return runtime.scores(X), lambda d_scores: X
