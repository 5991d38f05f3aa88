"""Training targets of LUKE's recipe: every candidate span gets its gold label or no-entity.

The gold entities are the reference's `doc.ents`, or with a gold spans key its
`doc.spans[key]`: nested gold, every span with its own label (one label per span).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Collection, Dict, Iterable, List, Mapping, NamedTuple, Optional, Sequence, Tuple

import numpy
from spacy.tokens import Doc
from spacy.tokens import Span as SpacySpan
from spacy.training import Example

from .checkpoint import NO_ENTITY_LABELS
from .corpus import same_words
from .decoding import log_softmax
from .windowing import Span, subword_offsets

NO_ENTITY_ID = 0


@dataclass
class GoldDoc:
    """The predicted Doc of an Example with its sentences and gold entity spans.

    doc (Doc): The Doc the component sees (`example.predicted`).
    sentences (List[Tuple[int, int]]): Sentence word ranges on `doc`.
    entities (Dict[Span, str]): Gold entity spans on `doc`, by label.
    n_misaligned (int): Gold entities that do not map onto `doc`'s tokens.
    n_same_span (int): Gold entities with the span of another (nested gold with two types for
        one span): the first one's label is the target.
    """

    doc: Doc
    sentences: List[Tuple[int, int]]
    entities: Dict[Span, str]
    n_misaligned: int = 0
    n_same_span: int = 0


@dataclass
class Coverage:
    """Gold entities that can and cannot be learned: by reason when they are no candidate
    span (`lost`), by label when the component does not have their label (`unknown`: they
    are trained as no entity)."""

    n_entities: int = 0
    lost: Counter = field(default_factory=Counter)
    unknown: Counter = field(default_factory=Counter)

    @property
    def n_lost(self) -> int:
        return sum(self.lost.values())

    def describe(self) -> str:
        if not self.lost and not self.unknown:
            return f"All {self.n_entities} gold entities are candidate spans."
        parts = []
        if self.lost:
            reasons = ", ".join(f"{n} {reason}" for reason, n in sorted(self.lost.items()))
            parts.append(
                f"{self.n_lost} of {self.n_entities} gold entities are no candidate span, so "
                f"the model can neither learn nor predict them ({reasons})."
            )
        if self.unknown:
            parts.append(describe_unknown_labels(self.unknown, self.n_entities))
        return " ".join(parts)

    def to_dict(self) -> Dict[str, object]:
        """The report as the component's `cfg["coverage"]` keeps it."""
        report: Dict[str, object] = {"n_entities": self.n_entities, **self.lost}
        if self.unknown:
            report["unknown_labels"] = dict(sorted(self.unknown.items()))
        return report


def describe_unknown_labels(unknown: Mapping[str, int], n_entities: Optional[int] = None) -> str:
    """Say which gold labels the component does not have, each with its count."""
    n = sum(unknown.values())
    of = f" of {n_entities}" if n_entities is not None else ""
    counts = ", ".join(f"{label!r} ({count})" for label, count in sorted(unknown.items()))
    return (
        f"{n}{of} gold entities have labels that luke_ner does not have, so they are trained "
        f"as no entity: {counts}. To learn them, add them to [initialize.components.luke_ner] "
        "labels (or leave labels out to take them from the training data)."
    )


def check_labels(labels: Iterable[str], gold: Mapping[str, int], *, given: bool) -> List[str]:
    """The entity labels to train, or a ValueError saying what is wrong with them.

    Label 0 of the head is the no-entity class, so no entity label may take its name
    (NIL, or O for mLUKE), and each label is one row of the head: no duplicates, no empty
    names.

    labels (Iterable[str]): The labels, from the config (`given`) or the gold entities.
    gold (Mapping[str, int]): The training data's gold entities by label.
    given (bool): Whether the labels come from `[initialize.components.luke_ner] labels`.
    RETURNS (List[str]): The labels, as given.
    """
    labels = list(labels)
    where = (
        "[initialize.components.luke_ner] labels" if given else "the training data's entities"
    )
    n_gold = sum(gold.values())
    if not labels:
        found = (
            f"the training data has {n_gold} gold entities ({', '.join(sorted(gold))})"
            if n_gold
            else "the training data has no entities either"
        )
        raise ValueError(
            f"luke_ner: {where} is an empty list, so there is no entity label to train "
            f"({found}). List the labels to train, or leave labels out to take them from the "
            "training data."
        )
    problems = []
    empty = [label for label in labels if not isinstance(label, str) or not label.strip()]
    if empty:
        problems.append(f"empty label names: {', '.join(map(repr, empty))}")
    repeated = sorted(label for label, n in Counter(labels).items() if n > 1 and label)
    if repeated:
        problems.append(f"repeated labels: {', '.join(map(repr, repeated))}")
    reserved = [label for label in labels if label in NO_ENTITY_LABELS]
    if reserved:
        counts = "" if given else f" ({sum(gold.get(label, 0) for label in reserved)} entities)"
        problems.append(
            f"{', '.join(map(repr, reserved))}{counts} is the name of the no-entity class "
            f"(label 0 of the head: {' or '.join(map(repr, NO_ENTITY_LABELS))}), which no "
            "entity label may take; rename it"
        )
    if problems:
        raise ValueError(f"luke_ner: {where} cannot be trained: {'; '.join(problems)}.")
    return labels


def describe_entity_free(n_examples: int) -> str:
    """Why training on examples without a single gold entity is refused."""
    return (
        f"luke_ner: the training data has no entities: its {n_examples} examples are annotated "
        "for entities, but every token is outside one ('O'), so training would teach the "
        "model to predict no entity at all. Check the corpus (e.g. which column `spacy "
        "convert` read the entities from), or to train on it anyway, list the labels in "
        "[initialize.components.luke_ner] labels."
    )


def gold_doc(example: Example, fallback_sentences, spans_key: Optional[str] = None) -> GoldDoc:
    """Map an Example's gold entities (and sentences, if any) onto its predicted Doc.

    fallback_sentences (Callable[[Doc], List[Tuple[int, int]]]): Sentence splitter used when
        the reference has no sentence boundaries or a different tokenization.
    spans_key (Optional[str]): The reference's `doc.spans` key of the gold; None: `doc.ents`.
    """
    doc, ref = example.predicted, example.reference
    gold = gold_entities(example, spans_key)
    if same_words(doc, ref) and ref.has_annotation("SENT_START"):
        sentences = [(s.start, s.end) for s in ref.sents]
    else:
        sentences = fallback_sentences(doc)
    return GoldDoc(doc, sentences, gold.entities, gold.n_misaligned, gold.n_same_span)


def gold_spans(doc: Doc, spans_key: Optional[str] = None) -> Sequence[SpacySpan]:
    """The gold entities of a reference Doc: `doc.spans[spans_key]` (none when the Doc has no
    such group), or `doc.ents` when `spans_key` is None."""
    if spans_key is None:
        return doc.ents
    return doc.spans[spans_key] if spans_key in doc.spans else ()


class GoldEntities(NamedTuple):
    """An Example's gold entities on its predicted Doc (see `gold_entities`)."""

    entities: Dict[Span, str]
    n_misaligned: int
    n_same_span: int = 0


def gold_entities(example: Example, spans_key: Optional[str] = None) -> GoldEntities:
    """An Example's gold entity spans on its predicted Doc, by label; how many gold entities
    do not map onto the predicted Doc's tokens; and how many share their span with an earlier
    one (nested gold only: the first one's label is kept).

    spans_key (Optional[str]): The reference's `doc.spans` key of the gold; None: `doc.ents`.
    """
    doc, ref = example.predicted, example.reference
    gold = gold_spans(ref, spans_key)
    if same_words(doc, ref):
        aligned = gold
    else:
        aligned = example.get_aligned_spans_y2x(gold, allow_overlap=spans_key is not None)
    entities: Dict[Span, str] = {}
    for e in aligned:
        entities.setdefault((e.start, e.end), e.label_)
    return GoldEntities(entities, len(gold) - len(aligned), len(aligned) - len(entities))


def coverage(
    gold: GoldDoc,
    word_lengths: Sequence[int],
    max_mention_length: int,
    into: Coverage,
    labels: Optional[Collection[str]] = None,
) -> Coverage:
    """Count gold entities that cannot be learned: no candidate span (too long, crossing
    sentences, etc.), or, when `labels` are given, a label that is not one of them."""
    offsets = subword_offsets(word_lengths)
    into.n_entities += len(gold.entities) + gold.n_misaligned + gold.n_same_span
    if gold.n_misaligned:
        into.lost["not aligned to the tokens"] += gold.n_misaligned
    if gold.n_same_span:
        into.lost["on the span of another gold entity (one label per span)"] += gold.n_same_span
    sentence_of = {}
    for k, (start, end) in enumerate(gold.sentences):
        for i in range(start, end):
            sentence_of[i] = k
    for (start, end), label in gold.entities.items():
        if labels is not None and label not in labels:
            into.unknown[label] += 1
        elif sentence_of.get(start) != sentence_of.get(end - 1):
            into.lost["crossing a sentence boundary"] += 1
        elif offsets[end] - offsets[start] > max_mention_length:
            into.lost[f"longer than max_mention_length ({max_mention_length} subwords)"] += 1
        elif offsets[start + 1] == offsets[start] or offsets[end] == offsets[end - 1]:
            into.lost["starting or ending on a token without subwords"] += 1
    return into


def span_targets(
    span_lists: Sequence[Sequence[Span]],
    entities: Sequence[Dict[Span, str]],
    label_ids: Dict[str, int],
    width: int,
) -> numpy.ndarray:
    """Gold label id of each candidate span (no-entity when it is not a gold entity).

    span_lists (Sequence[Sequence[Span]]): Candidate spans, one row each (a pass, a Doc).
    entities (Sequence[Dict[Span, str]]): Gold entities of each row's Doc.
    label_ids (Dict[str, int]): Label names to ids.
    width (int): Columns of the result (the logits' span dimension).
    RETURNS (numpy.ndarray): (rows, width) int64 label ids, padded with -1.
    """
    targets = numpy.full((len(span_lists), width), -1, dtype=numpy.int64)
    for row, (spans, gold) in enumerate(zip(span_lists, entities)):
        ids = [label_ids.get(gold.get(tuple(span), ""), NO_ENTITY_ID) for span in spans]
        targets[row, : len(ids)] = ids
    return targets


def span_loss(
    logits: numpy.ndarray, targets: numpy.ndarray, normalizer: int
) -> Tuple[float, numpy.ndarray]:
    """Cross-entropy over candidate spans and its gradient w.r.t. the logits.

    logits (numpy.ndarray): (rows, spans, labels) logits.
    targets (numpy.ndarray): (rows, spans) label ids, -1 for padding.
    normalizer (int): Number of spans the loss is averaged over (all spans of the update, so
        splitting an update into several forward batches does not change the gradient).
    RETURNS (Tuple[float, numpy.ndarray]): The summed loss / normalizer, and d_logits
        (float32, zero on padding).
    """
    logits = numpy.asarray(logits, dtype=numpy.float32)
    valid = targets >= 0
    log_probs = log_softmax(logits)
    safe = numpy.maximum(targets, 0)[..., None]
    picked = numpy.take_along_axis(log_probs, safe, axis=-1)[..., 0]
    loss = -(picked * valid).sum() / normalizer
    grad = numpy.exp(log_probs)
    numpy.put_along_axis(grad, safe, numpy.take_along_axis(grad, safe, axis=-1) - 1.0, axis=-1)
    grad = grad * valid[..., None] / numpy.float32(normalizer)
    return float(loss), grad.astype(numpy.float32, copy=False)
