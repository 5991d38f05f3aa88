"""Greedy decoding of scored candidate spans into non-overlapping entities."""

from __future__ import annotations

from typing import Iterable, List, Sequence, Set, Tuple

import numpy

Span = Tuple[int, int]


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
    order = sorted(
        (k for k in range(len(spans)) if label_ids[k] != no_entity_id),
        key=lambda k: -max_scores[k],
    )
    accepted: List[Tuple[Span, int, int]] = []
    for k in order:
        start, end = spans[k]
        words = range(start, end)
        if any(w in blocked for w in words):
            continue
        blocked.update(words)
        accepted.append(((start, end), label_ids[k], k))
    return accepted


def decode_logits(
    spans: Sequence[Span],
    logits: numpy.ndarray,
    *,
    no_entity_id: int = 0,
    taken: Iterable[int] = (),
    threshold: float = 0.0,
) -> List[Tuple[Span, int, int]]:
    """`greedy_decode` of span logits: each span's argmax label and max logit.

    No-entity spans are dropped with numpy first, so a long sentence's candidates never become
    Python objects. With a threshold, spans whose best label has a lower softmax probability
    are dropped too (0.0 keeps the recipe).

    spans (Sequence[Span]): Candidate word spans (end exclusive) in enumeration order.
    logits (numpy.ndarray): (n_spans, n_labels) logits.
    no_entity_id (int): The label id that means "no entity".
    taken (Iterable[int]): Words that must stay free.
    threshold (float): Least probability of a span's best label.
    RETURNS (List[Tuple[Span, int, int]]): (span, label id, row of `logits`) of each accepted
        entity, in acceptance order.
    """
    return _decode(spans, logits, no_entity_id, taken, threshold)[0]


def _decode(
    spans: Sequence[Span],
    logits: numpy.ndarray,
    no_entity_id: int,
    taken: Iterable[int],
    threshold: float,
) -> Tuple[List[Tuple[Span, int, int]], numpy.ndarray]:
    """`decode_logits`, and the probability of each accepted entity's label.

    The softmax is computed once, over the spans whose best label is an entity type: the
    threshold and the entities' scores both read it.
    """
    logits = numpy.asarray(logits)
    if len(logits) == 0:
        return [], numpy.zeros(0)
    label_ids = logits.argmax(axis=1)
    keep = numpy.flatnonzero(label_ids != no_entity_id)
    probs = softmax(logits[keep]).max(axis=1) if len(keep) else numpy.zeros(0)
    if threshold > 0.0 and len(keep):
        likely = probs >= threshold
        keep, probs = keep[likely], probs[likely]
    found = greedy_decode(
        [(s, e) for s, e in numpy.asarray(spans)[keep].tolist()],
        logits[keep].max(axis=1).tolist(),
        label_ids[keep].tolist(),
        no_entity_id=no_entity_id,
        taken=taken,
    )
    accepted = [(span, label, int(keep[k])) for span, label, k in found]
    return accepted, probs[[k for _, _, k in found]]


def softmax(x: numpy.ndarray) -> numpy.ndarray:
    """Row-wise softmax, computed in float64 for stable probabilities."""
    x = numpy.asarray(x, dtype="float64")
    e = numpy.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def decode_sentence(
    spans: numpy.ndarray,
    logits: numpy.ndarray,
    *,
    taken: Set[int] = frozenset(),
    threshold: float = 0.0,
) -> Tuple[numpy.ndarray, numpy.ndarray, numpy.ndarray]:
    """One sentence's entities as arrays: `decode_logits` plus each entity's probability.

    spans (numpy.ndarray): (n, 2) candidate word spans of the sentence.
    logits (numpy.ndarray): (n, n_labels) logits.
    taken (Set[int]): Words of the Doc that must stay free (entities already set).
    threshold (float): Least probability of a span's best label.
    RETURNS (Tuple[numpy.ndarray, numpy.ndarray, numpy.ndarray]): (k, 2) spans, (k,) label
        ids and (k,) softmax probabilities of the accepted entities, in acceptance order.
    """
    lo, hi = (int(spans[:, 0].min()), int(spans[:, 1].max())) if len(spans) else (0, 0)
    accepted, probs = _decode(
        spans, logits, 0, [i for i in range(lo, hi) if i in taken], threshold
    )
    rows = [k for _, _, k in accepted]
    labels = numpy.asarray([label for _, label, _ in accepted], "i")
    return numpy.asarray(spans)[rows].reshape(-1, 2), labels, probs
