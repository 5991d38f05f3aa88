"""Greedy decoding of span logits, against hand-made cases and the notebook's decode loop."""

from __future__ import annotations

import numpy
import pytest
from conftest import notebook_decode

from luke_spacy.decoding import decode_logits

ID2LABEL = {0: "NIL", 1: "MISC", 2: "PER", 3: "ORG", 4: "LOC"}


def tagged(entities, n_words, preset=None):
    """BIO tags of (start, end, label name) entities over preset tags."""
    tags = list(preset) if preset is not None else ["O"] * n_words
    for s, e, label in entities:
        tags[s] = "B-" + label
        tags[s + 1 : e] = ["I-" + label] * (e - s - 1)
    return tags


def notebook_tags(word_spans, logits, n_words, preset=None):
    """Tags from the notebook's decode loop (the reference), preset words taken."""
    taken = [i for i, tag in enumerate(preset or []) if tag != "O"]
    found = notebook_decode(word_spans, logits, n_words, ID2LABEL, preset=taken)
    return tagged(found, n_words, preset)


def to_tags(accepted, n_words, preset=None):
    return tagged([(s, e, ID2LABEL[label]) for (s, e), label, _k in accepted], n_words, preset)


def one_hot(label, score, n_labels=5, rest=-1.0):
    row = [rest] * n_labels
    row[label] = score
    return row


def test_ties_keep_enumeration_order():
    spans = [(0, 2), (1, 3)]
    logits = [one_hot(2, 5.0), one_hot(3, 5.0)]
    assert decode_logits(spans, logits) == [((0, 2), 2, 0)]
    # the same candidates enumerated the other way round: the other one wins
    assert decode_logits(spans[::-1], logits[::-1]) == [((1, 3), 3, 0)]
    # a three-way tie: the first enumerated, then the first one that still fits
    spans = [(0, 1), (0, 2), (1, 2), (2, 3)]
    logits = [one_hot(1, 2.0)] * 4
    assert [s for s, _, _ in decode_logits(spans, logits)] == [(0, 1), (1, 2), (2, 3)]


def test_overlaps_resolved_by_score():
    spans = [(0, 2), (1, 2), (2, 3), (0, 3)]
    logits = [one_hot(2, 3.0), one_hot(4, 4.0), one_hot(3, 1.0), one_hot(1, 2.5)]
    # (1,2) first; (0,2) and (0,3) overlap it; (2,3) is free
    assert decode_logits(spans, logits) == [((1, 2), 4, 1), ((2, 3), 3, 2)]
    # raise (0,3) above everything: it blocks all the others
    logits[3] = one_hot(1, 9.0)
    assert decode_logits(spans, logits) == [((0, 3), 1, 3)]


def test_no_entity_spans_are_dropped_and_block_nothing():
    spans = [(0, 3), (0, 1), (2, 3)]
    logits = [one_hot(0, 10.0), one_hot(1, 1.0), [0.5, 0.4, 0.2, 0.1, 0.0]]
    # (0,3) is NIL with the highest score, (2,3) is NIL too: only (0,1) survives
    assert decode_logits(spans, logits) == [((0, 1), 1, 1)]
    # the no-entity id is configurable (mLUKE-style label sets put "O" at 0 too, but a
    # checkpoint may not): with no_entity_id=1, (0,1) is dropped and NIL=0 counts
    assert decode_logits(spans, logits, no_entity_id=1) == [((0, 3), 0, 0)]
    assert decode_logits([], numpy.zeros((0, 5))) == []


def test_first_max_wins_within_a_row():
    # argmax of a row with tied maxima is the first; a tie with NIL means NIL
    spans = [(0, 1), (1, 2)]
    logits = [[2.0, 2.0, 0.0, 0.0, 0.0], [0.0, 1.0, 1.0, 0.0, 0.0]]
    assert decode_logits(spans, logits) == [((1, 2), 1, 1)]


def test_preset_taken_words_are_respected():
    spans = [(0, 1), (0, 2), (1, 2), (2, 4), (3, 4)]
    logits = [one_hot(2, 1.0), one_hot(3, 9.0), one_hot(4, 2.0), one_hot(1, 3.0), one_hot(2, 0.5)]
    assert decode_logits(spans, logits) == [((0, 2), 3, 1), ((2, 4), 1, 3)]
    # word 1 already belongs to an entity, word 3 too
    got = decode_logits(spans, logits, taken=[1, 3])
    assert got == [((0, 1), 2, 0)]
    # taken is any iterable, e.g. a generator or a range
    assert decode_logits(spans, logits, taken=(w for w in [1, 3])) == got
    assert decode_logits(spans, logits, taken=range(0, 4)) == []


@pytest.mark.parametrize("seed", range(5))
def test_matches_notebook_decode_on_random_logits(seed):
    rng = numpy.random.default_rng(seed)
    n_words = int(rng.integers(1, 12))
    spans = [(i, j) for i in range(n_words) for j in range(i + 1, min(n_words, i + 4) + 1)]
    # small integer logits make ties (within and across rows) common
    logits = rng.integers(-3, 4, size=(len(spans), 5)).astype("f")
    preset = ["O"] * n_words
    taken = []
    if n_words > 2 and seed % 2:
        preset[1] = "B-X"
        taken = [1]
    expected = notebook_tags(spans, logits.tolist(), n_words, preset)
    accepted = decode_logits(spans, logits, taken=taken)
    assert to_tags(accepted, n_words, preset) == expected
    # acceptance order is descending by score
    scores = [float(logits[k].max()) for _, _, k in accepted]
    assert scores == sorted(scores, reverse=True)


@pytest.mark.parametrize("threshold", [0.5, 0.7, 0.9])
def test_threshold_treats_unlikely_spans_as_no_entity(threshold):
    """A span whose best label's probability is under the threshold decodes like a NIL span."""
    rng = numpy.random.default_rng(3)
    n_words = 10
    spans = [(i, j) for i in range(n_words) for j in range(i + 1, min(n_words, i + 4) + 1)]
    logits = rng.normal(scale=2.0, size=(len(spans), 5))
    e = numpy.exp(logits - logits.max(axis=1, keepdims=True))
    best = (e / e.sum(axis=1, keepdims=True)).max(axis=1)
    assert (best < threshold).any() and (best >= threshold).any()
    as_nil = logits.copy()
    as_nil[best < threshold, 0] = as_nil[best < threshold].max(axis=1) + 1.0
    expected = notebook_tags(spans, as_nil.tolist(), n_words)
    accepted = decode_logits(spans, logits, threshold=threshold)
    assert to_tags(accepted, n_words) == expected
    assert decode_logits(spans, logits, threshold=0.0) == decode_logits(spans, logits)
