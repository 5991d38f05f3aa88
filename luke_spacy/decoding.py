"""Greedy decoding of scored candidate spans into non-overlapping entities."""

from __future__ import annotations

from typing import Iterable, List, Sequence, Set, Tuple

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
