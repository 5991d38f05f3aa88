"""Running a stream of passes in bounded batches, and what comes out of it.

`score_passes` takes the passes of any number of Docs, in order, and a batch runner (the
runtime's, which collates a batch and runs the backend). It runs them in groups of batch
budgets, sorted within each group to cut padding, and yields each sentence's candidate spans
and logits as soon as its last pass has run, so what is held at once is bounded by the
groups, never by the length of a Doc.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy
from spacy_transformers.data_classes import TransformerData

from .encoding import Pass, batch_by_budget, groups_of

# Forward batches' worth of passes planned, sorted and run together: enough to sort away
# padding, small enough that a long Doc is never planned or held whole.
GROUP_BATCHES = 32
# (passes, want_words) -> (rows x spans x labels logits, rows x words x hidden states or None)
BatchRunner = Callable[[Sequence[Pass], bool], Tuple[numpy.ndarray, Optional[numpy.ndarray]]]


@dataclass
class ScoredSentence:
    """The candidate spans of one sentence with their logits.

    doc (int): Index of the Doc in the stream.
    spans (numpy.ndarray): (n, 2) word spans, end exclusive, in the recipe's order.
    logits (numpy.ndarray): (n, n_labels) span logits; label 0 is the no-entity class.
    """

    doc: int
    spans: numpy.ndarray
    logits: numpy.ndarray


@dataclass
class DocStates:
    """LUKE's final state of every subword of one Doc (from the first pass covering it).

    doc (int): Index of the Doc in the stream.
    states (numpy.ndarray): (n_subwords, hidden) float32.
    """

    doc: int
    states: numpy.ndarray


@dataclass
class DocScores:
    """Every candidate span of one Doc with its logits (what `get_loss` takes).

    spans (numpy.ndarray): (n, 2) word spans, end exclusive, in the recipe's order.
    logits (numpy.ndarray): (n, n_labels) span logits; label 0 is the no-entity class.
    """

    spans: numpy.ndarray
    logits: numpy.ndarray

    @classmethod
    def from_sentences(cls, sentences: Sequence[ScoredSentence], n_labels: int) -> DocScores:
        """One Doc's scores from its sentences, in order."""
        if not sentences:
            return cls(numpy.zeros((0, 2), "i"), numpy.zeros((0, n_labels), "f"))
        return cls(
            numpy.concatenate([s.spans for s in sentences]),
            numpy.concatenate([s.logits for s in sentences]),
        )


@dataclass
class DocEntities:
    """Decoded predictions for one Doc (what `predict` returns).

    spans (numpy.ndarray): (k, 2) entity word spans, end exclusive, sorted by start.
    labels (numpy.ndarray): (k,) label ids; `cfg["labels"][i]` is the label's name.
    scores (numpy.ndarray): (k,) softmax probability of each entity's label.
    trf_data (Optional[TransformerData]): LUKE's word representations, when requested.
    nested (Optional[DocEntities]): The nested decoding of the Doc, when requested.
    """

    spans: numpy.ndarray
    labels: numpy.ndarray
    scores: numpy.ndarray
    trf_data: Optional[TransformerData] = None
    nested: Optional[DocEntities] = None

    @classmethod
    def from_parts(
        cls,
        parts: Sequence[Tuple[numpy.ndarray, numpy.ndarray, numpy.ndarray]],
        trf_data: Optional[TransformerData] = None,
        *,
        nested: Optional[DocEntities] = None,
    ) -> DocEntities:
        """One Doc's entities from its sentences' (spans, labels, scores), sorted by start."""
        parts = [part for part in parts if len(part[0])]
        if not parts:
            empty = (numpy.zeros((0, 2), "i"), numpy.zeros(0, "i"), numpy.zeros(0, "f"))
            return cls(*empty, trf_data, nested)
        spans, labels, scores = (numpy.concatenate(x) for x in zip(*parts))
        order = numpy.argsort(spans[:, 0], kind="stable")
        return cls(
            spans[order].astype("i"),
            labels[order].astype("i"),
            scores[order].astype("f"),
            trf_data,
            nested,
        )


def score_passes(
    passes: Iterable[Pass],
    run_batch: BatchRunner,
    *,
    max_batch_items: int,
    want_words: bool = False,
) -> Iterator[Union[ScoredSentence, DocStates]]:
    """Run passes and yield each sentence's scores (and each Doc's word states), in order.

    passes (Iterable[Pass]): The passes of the Docs, Doc by Doc and sentence by sentence
        (as `encoding.plan_doc` yields them); consumed lazily.
    run_batch (BatchRunner): Scores one batch of passes.
    max_batch_items (int): Padded word+span positions per batch.
    want_words (bool): Also yield a `DocStates` after each Doc's last sentence.
    YIELDS (Union[ScoredSentence, DocStates]): Sentences with candidates, and Doc states.
    """
    key: Optional[Tuple[int, int]] = None
    spans: List[Tuple[int, int]] = []
    logits: List[numpy.ndarray] = []
    states: Dict[int, numpy.ndarray] = {}
    previous: Optional[Pass] = None
    for group in groups_of(passes, GROUP_BATCHES * max_batch_items):
        first = []
        for p in group:
            first.append(is_first_chunk(previous, p))
            previous = p
        outputs: List[numpy.ndarray] = [numpy.zeros(0)] * len(group)
        for indices in batch_by_budget(group, max_batch_items):
            batch_logits, batch_words = run_batch([group[i] for i in indices], want_words)
            for row, i in enumerate(indices):
                p = group[i]
                # Copies, so no batch output stays alive with the group.
                outputs[i] = batch_logits[row, : len(p.spans)].copy()
                if batch_words is not None and first[i]:
                    if p.doc not in states:
                        states[p.doc] = numpy.zeros((len(p.subwords), batch_words.shape[-1]), "f")
                    subwords, rows = word_state_rows(p)
                    states[p.doc][subwords] = batch_words[row, rows]
        for p, out in zip(group, outputs):
            if key is not None and (p.doc, p.sentence) != key:
                if spans:
                    yield _sentence(key[0], spans, logits)
                spans, logits = [], []
                if p.doc != key[0] and key[0] in states:
                    yield DocStates(key[0], states.pop(key[0]))
            key = (p.doc, p.sentence)
            if p.spans:
                spans.extend(p.spans)
                logits.append(out)
    if key is not None:
        if spans:
            yield _sentence(key[0], spans, logits)
        if key[0] in states:
            yield DocStates(key[0], states.pop(key[0]))


def is_first_chunk(previous: Optional[Pass], p: Pass) -> bool:
    """Whether a pass is the first chunk of its window (the previous pass being `previous`).

    The chunks of a window share its words, whose states differ by the chunk's candidate
    spans (words attend to entities): a Doc's word states are those of each first chunk.
    """
    return previous is None or (previous.doc, previous.core) != (p.doc, p.core)


def word_state_rows(p: Pass) -> Tuple[slice, slice]:
    """Where the word states of a pass (a first chunk) belong.

    RETURNS (Tuple[slice, slice]): The subwords of the Doc that the pass's core covers, and
        the same subwords' rows in the pass's word output (after the leading special token).
    """
    begin, (a, b) = p.window[0], p.core
    return slice(a, b), slice(1 + a - begin, 1 + b - begin)


def _sentence(doc: int, spans: List[Tuple[int, int]], logits: List[numpy.ndarray]):
    return ScoredSentence(doc, numpy.asarray(spans, "i"), numpy.concatenate(logits))
