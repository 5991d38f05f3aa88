"""Decoding scored candidate spans into entities.

Two rules read the same candidates: LUKE's greedy decoding into non-overlapping entities
(`doc.ents`, the recipe) and the nested decoding (entities inside entities, for a span group).
A candidate competes with its best label when that is an entity type whose softmax probability
reaches the label's threshold (0.0 everywhere is the recipe); a temperature rescales the
probabilities (1.0 is the model's own). Pure numpy: no torch, no spaCy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, List, Mapping, Sequence, Set, Tuple, Union

import numpy

Span = Tuple[int, int]
# The thresholds as decoding reads them: one for every label, or one per label id
# (`label_thresholds`; the setting itself is `settings.Threshold`).
Cuts = Union[float, numpy.ndarray]
# (k, 2) spans, (k,) label ids and (k,) probabilities of a sentence's entities.
SentenceEntities = Tuple[numpy.ndarray, numpy.ndarray, numpy.ndarray]


def greedy_decode(
    spans: Sequence[Span],
    max_scores: Sequence[float],
    label_ids: Sequence[int],
    *,
    no_entity_id: int = 0,
    taken: Iterable[int] = (),
) -> List[Tuple[Span, int, int]]:
    """Pick non-overlapping entities the way LUKE's NER code does.

    Spans whose best label is the no-entity class are dropped; the rest are stable-sorted by
    their max logit, descending (ties keep the enumeration order), and a span is accepted when
    none of its words is already taken.

    spans (Sequence[Span]): Candidate word spans (end exclusive) in enumeration order.
    max_scores (Sequence[float]): Each span's max logit.
    label_ids (Sequence[int]): Each span's argmax label id.
    no_entity_id (int): The label id that means "no entity".
    taken (Iterable[int]): Words that must stay free (entities already on the Doc).
    RETURNS (List[Tuple[Span, int, int]]): (span, label id, candidate index) of each accepted
        entity, in acceptance order.
    """
    blocked: Set[int] = set(taken)
    accepted: List[Tuple[Span, int, int]] = []
    for k in score_order(max_scores, label_ids, no_entity_id):
        start, end = spans[k]
        words = range(start, end)
        if any(w in blocked for w in words):
            continue
        blocked.update(words)
        accepted.append(((start, end), label_ids[k], k))
    return accepted


def nested_decode(
    spans: Sequence[Span],
    max_scores: Sequence[float],
    label_ids: Sequence[int],
    *,
    no_entity_id: int = 0,
    fixed: Iterable[Span] = (),
) -> List[Tuple[Span, int, int]]:
    """Pick entities that may nest: the greedy order, with containment allowed.

    Spans whose best label is the no-entity class are dropped; the rest are stable-sorted by
    their score, descending, and a span is accepted unless it crosses an accepted span (they
    overlap and neither contains the other) or has the same words as one (one label per
    span). A span inside or around an accepted one is accepted.

    spans (Sequence[Span]): Candidate word spans (end exclusive) in enumeration order.
    max_scores (Sequence[float]): Each span's score (its label's logit).
    label_ids (Sequence[int]): Each span's label id.
    no_entity_id (int): The label id that means "no entity".
    fixed (Iterable[Span]): Spans accepted beforehand (entities already on the Doc).
    RETURNS (List[Tuple[Span, int, int]]): (span, label id, candidate index) of each accepted
        entity, in acceptance order.
    """
    held: List[Span] = list(fixed)
    accepted: List[Tuple[Span, int, int]] = []
    for k in score_order(max_scores, label_ids, no_entity_id):
        span = (int(spans[k][0]), int(spans[k][1]))
        if any(span == other or crosses(span, other) for other in held):
            continue
        held.append(span)
        accepted.append((span, label_ids[k], k))
    return accepted


def score_order(
    max_scores: Sequence[float], label_ids: Sequence[int], no_entity_id: int
) -> List[int]:
    """The candidates whose label is not no-entity, stable-sorted by score, descending (ties
    keep the enumeration order): the order both decodings accept spans in."""
    return sorted(
        (k for k in range(len(max_scores)) if label_ids[k] != no_entity_id),
        key=lambda k: -max_scores[k],
    )


def crosses(a: Span, b: Span) -> bool:
    """Whether two spans overlap without one containing the other."""
    return a[0] < b[0] < a[1] < b[1] or b[0] < a[0] < b[1] < a[1]


def label_thresholds(
    threshold: Union[float, Mapping[str, float]], labels: Sequence[str]
) -> Cuts:
    """The `threshold` setting for decoding: a number as it is, a table as one threshold per
    label id (labels not listed: 0.0).

    threshold (Union[float, Mapping[str, float]]): The setting.
    labels (Sequence[str]): All labels in id order (0 is the no-entity class).
    RETURNS (Cuts): A number, or an array with one threshold per label id.
    """
    if not isinstance(threshold, Mapping):
        return float(threshold)
    unknown = sorted(set(threshold) - set(labels[1:]))
    if unknown:
        raise ValueError(
            f"luke_ner: threshold names labels the model does not have: {unknown}; its "
            f"labels are {list(labels[1:])}."
        )
    cuts = [threshold.get(label, 0.0) if i else 0.0 for i, label in enumerate(labels)]
    return numpy.asarray(cuts)


@dataclass
class Candidates:
    """The candidate spans of a sentence that compete as entities.

    rows (numpy.ndarray): (k,) their rows in the logits, in enumeration order.
    labels (numpy.ndarray): (k,) the label each competes with.
    scores (numpy.ndarray): (k,) that label's logit (the decoding order).
    probs (numpy.ndarray): (k,) that label's softmax probability.
    """

    rows: numpy.ndarray
    labels: numpy.ndarray
    scores: numpy.ndarray
    probs: numpy.ndarray

    def above(self, threshold: Cuts) -> Candidates:
        """The candidates whose probability reaches their label's threshold.

        threshold (Cuts): One threshold, or one per label id.
        RETURNS (Candidates): Those candidates (self when no threshold is above 0.0).
        """
        per_label = numpy.ndim(threshold) > 0
        if not len(self.rows) or not (per_label or threshold > 0.0):
            return self
        likely = self.probs >= (threshold[self.labels] if per_label else threshold)
        return Candidates(
            self.rows[likely], self.labels[likely], self.scores[likely], self.probs[likely]
        )


def entity_candidates(
    logits: numpy.ndarray,
    *,
    no_entity_id: int = 0,
    threshold: Cuts = 0.0,
    temperature: float = 1.0,
    nil_veto: bool = True,
) -> Candidates:
    """The spans whose best label is an entity type with a probability of at least its
    label's threshold, each with that label.

    No-entity spans are dropped with numpy first, so a long sentence's candidates never become
    Python objects, and the softmax is computed once, over the rest: the thresholds and the
    entities' scores both read it.

    Without `nil_veto`, each span competes with its best entity label, even where the
    no-entity class is likelier, when that label's probability reaches its threshold (an
    opt-in rule that trades precision for recall; every threshold must then be above 0.0).

    logits (numpy.ndarray): (n_spans, n_labels) logits.
    no_entity_id (int): The label id that means "no entity".
    threshold (Cuts): One threshold, or one per label id.
    temperature (float): Divides the logits before the softmax.
    nil_veto (bool): Drop the spans whose best label is no-entity (the recipe).
    RETURNS (Candidates): The competing spans.
    """
    logits = numpy.asarray(logits)
    if len(logits) == 0:
        empty = numpy.zeros(0, "i")
        return Candidates(empty, empty, numpy.zeros(0), numpy.zeros(0))
    if nil_veto:
        label_ids = logits.argmax(axis=1)
        rows = numpy.flatnonzero(label_ids != no_entity_id)
    else:
        cuts = numpy.delete(threshold, no_entity_id) if numpy.ndim(threshold) else [threshold]
        if numpy.min(cuts) <= 0.0:
            raise ValueError(
                "luke_ner: nil_veto = false needs a threshold above 0.0 for every label "
                "(else every span would be an entity)."
            )
        entity_only = numpy.array(logits, dtype=logits.dtype)
        entity_only[:, no_entity_id] = -numpy.inf
        label_ids = entity_only.argmax(axis=1)
        rows = numpy.arange(len(logits))
    labels = label_ids[rows]
    scores = logits[rows, labels]
    probs = numpy.zeros(0)
    if len(rows):
        scaled = logits[rows] if temperature == 1.0 else logits[rows] / temperature
        probs = softmax(scaled)[numpy.arange(len(rows)), labels]
    return Candidates(rows, labels, scores, probs).above(threshold)


def _decode(
    spans: Sequence[Span],
    candidates: Candidates,
    no_entity_id: int,
    *,
    taken: Iterable[int] = (),
    fixed: Iterable[Span] = (),
    nested: bool = False,
) -> Tuple[List[Tuple[Span, int, int]], numpy.ndarray]:
    """The greedy (`nested`: the nested) decoding of the candidates, and the probability of
    each accepted entity's label."""
    rows = candidates.rows
    if len(rows) == 0:
        return [], numpy.zeros(0)
    args = (
        [(s, e) for s, e in numpy.asarray(spans)[rows].tolist()],
        candidates.scores.tolist(),
        candidates.labels.tolist(),
    )
    if nested:
        found = nested_decode(*args, no_entity_id=no_entity_id, fixed=fixed)
    else:
        found = greedy_decode(*args, no_entity_id=no_entity_id, taken=taken)
    accepted = [(span, label, int(rows[k])) for span, label, k in found]
    return accepted, candidates.probs[[k for _, _, k in found]]


def softmax(x: numpy.ndarray) -> numpy.ndarray:
    """Row-wise softmax, computed in float64 for stable probabilities."""
    x = numpy.asarray(x, dtype="float64")
    e = numpy.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def log_softmax(x: numpy.ndarray) -> numpy.ndarray:
    """Log-softmax over the last axis, in the logits' own dtype (the training loss's float32,
    tuning's float64).

    x (numpy.ndarray): (..., n_labels) logits.
    RETURNS (numpy.ndarray): The log-probabilities, shaped as `x`.
    """
    shifted = x - x.max(axis=-1, keepdims=True)
    return shifted - numpy.log(numpy.exp(shifted).sum(axis=-1, keepdims=True))


def decode_sentence(
    spans: numpy.ndarray,
    logits: numpy.ndarray,
    *,
    taken: Set[int] = frozenset(),
    threshold: Cuts = 0.0,
    temperature: float = 1.0,
    nil_veto: bool = True,
) -> SentenceEntities:
    """One sentence's entities as arrays (LUKE's greedy decoding of the span logits), with
    each entity's probability.

    spans (numpy.ndarray): (n, 2) candidate word spans of the sentence.
    logits (numpy.ndarray): (n, n_labels) logits.
    taken (Set[int]): Words of the Doc that must stay free (entities already set).
    threshold (Cuts): Least probability of a span's best label (one, or per label id).
    temperature (float): Divides the logits before the softmax.
    nil_veto (bool): Spans whose best label is no-entity never compete (see
        `entity_candidates`).
    RETURNS (SentenceEntities): (k, 2) spans, (k,) label ids and (k,) softmax probabilities
        of the accepted entities, in acceptance order.
    """
    candidates = entity_candidates(
        logits, threshold=threshold, temperature=temperature, nil_veto=nil_veto
    )
    return decode_candidates(spans, candidates, taken=taken)


def decode_sentence_nested(
    spans: numpy.ndarray,
    logits: numpy.ndarray,
    *,
    fixed: Sequence[Span] = (),
    threshold: Cuts = 0.0,
    temperature: float = 1.0,
    nil_veto: bool = True,
) -> SentenceEntities:
    """One sentence's nested entities as arrays: `decode_sentence` with the nested rule.

    fixed (Sequence[Span]): Entities already on the Doc: never crossed nor repeated.
    The other arguments and the result are those of `decode_sentence`.
    """
    candidates = entity_candidates(
        logits, threshold=threshold, temperature=temperature, nil_veto=nil_veto
    )
    return decode_candidates(spans, candidates, fixed=fixed, nested=True)


def decode_candidates(
    spans: numpy.ndarray,
    candidates: Candidates,
    *,
    taken: Set[int] = frozenset(),
    fixed: Sequence[Span] = (),
    nested: bool = False,
) -> SentenceEntities:
    """The greedy (`nested`: the nested) decoding of one sentence's candidates, as arrays.

    spans (numpy.ndarray): (n, 2) candidate word spans of the sentence (the logits' rows).
    candidates (Candidates): From `entity_candidates` (label 0 is no-entity).
    taken (Set[int]): Words of the Doc that must stay free (greedy decoding).
    fixed (Sequence[Span]): Spans accepted beforehand (nested decoding).
    nested (bool): Allow entities inside entities.
    RETURNS (SentenceEntities): The accepted entities, in acceptance order.
    """
    spans = numpy.asarray(spans)
    lo, hi = (int(spans[:, 0].min()), int(spans[:, 1].max())) if len(spans) else (0, 0)
    if nested:
        near = [(s, e) for s, e in fixed if s < hi and e > lo]
        accepted, probs = _decode(spans, candidates, 0, fixed=near, nested=True)
    else:
        near_taken = [i for i in range(lo, hi) if i in taken]
        accepted, probs = _decode(spans, candidates, 0, taken=near_taken)
    rows = [k for _, _, k in accepted]
    labels = numpy.asarray([label for _, label, _ in accepted], "i")
    return spans[rows].reshape(-1, 2), labels, probs
