"""Greedy decoding of span logits, against hand-made cases and the notebook's decode loop."""

from __future__ import annotations

import numpy
import pytest
from conftest import notebook_decode

from luke_spacy.decoding import (
    decode_sentence,
    decode_sentence_nested,
    greedy_decode,
    label_thresholds,
    softmax,
)

ID2LABEL = {0: "NIL", 1: "MISC", 2: "PER", 3: "ORG", 4: "LOC"}
LABELS = list(ID2LABEL.values())


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


def triples(decode, spans, logits, **kwargs):
    """A sentence decoding's entities as (span, label id, candidate row) triples, in
    acceptance order; the row is the first candidate with that span whose argmax is that
    label."""
    logits = numpy.asarray(logits, dtype="f")
    found, labels, _ = decode(numpy.asarray(spans, "i").reshape(-1, 2), logits, **kwargs)
    spans = [tuple(span) for span in spans]
    return [
        (
            (s, e),
            label,
            next(
                k for k, span in enumerate(spans) if span == (s, e) and logits[k].argmax() == label
            ),
        )
        for (s, e), label in zip(found.tolist(), labels.tolist())
    ]


def flat(spans, logits, **kwargs):
    return triples(decode_sentence, spans, logits, **kwargs)


def one_hot(label, score, n_labels=5, rest=-1.0):
    row = [rest] * n_labels
    row[label] = score
    return row


def test_ties_keep_enumeration_order():
    spans = [(0, 2), (1, 3)]
    logits = [one_hot(2, 5.0), one_hot(3, 5.0)]
    assert flat(spans, logits) == [((0, 2), 2, 0)]
    # the same candidates enumerated the other way round: the other one wins
    assert flat(spans[::-1], logits[::-1]) == [((1, 3), 3, 0)]
    # a three-way tie: the first enumerated, then the first one that still fits
    spans = [(0, 1), (0, 2), (1, 2), (2, 3)]
    logits = [one_hot(1, 2.0)] * 4
    assert [s for s, _, _ in flat(spans, logits)] == [(0, 1), (1, 2), (2, 3)]


def test_overlaps_resolved_by_score():
    spans = [(0, 2), (1, 2), (2, 3), (0, 3)]
    logits = [one_hot(2, 3.0), one_hot(4, 4.0), one_hot(3, 1.0), one_hot(1, 2.5)]
    # (1,2) first; (0,2) and (0,3) overlap it; (2,3) is free
    assert flat(spans, logits) == [((1, 2), 4, 1), ((2, 3), 3, 2)]
    # raise (0,3) above everything: it blocks all the others
    logits[3] = one_hot(1, 9.0)
    assert flat(spans, logits) == [((0, 3), 1, 3)]


def test_no_entity_spans_are_dropped_and_block_nothing():
    spans = [(0, 3), (0, 1), (2, 3)]
    logits = [one_hot(0, 10.0), one_hot(1, 1.0), [0.5, 0.4, 0.2, 0.1, 0.0]]
    # (0,3) is NIL with the highest score, (2,3) is NIL too: only (0,1) survives
    assert flat(spans, logits) == [((0, 1), 1, 1)]
    # the no-entity id is configurable (mLUKE-style label sets put "O" at 0 too, but a
    # checkpoint may not): with no_entity_id=1, (0,1) is dropped and NIL=0 counts
    rows = numpy.asarray(logits)
    assert greedy_decode(spans, rows.max(1), rows.argmax(1).tolist(), no_entity_id=1) == [
        ((0, 3), 0, 0)
    ]
    assert flat([], numpy.zeros((0, 5))) == []


def test_first_max_wins_within_a_row():
    # argmax of a row with tied maxima is the first; a tie with NIL means NIL
    spans = [(0, 1), (1, 2)]
    logits = [[2.0, 2.0, 0.0, 0.0, 0.0], [0.0, 1.0, 1.0, 0.0, 0.0]]
    assert flat(spans, logits) == [((1, 2), 1, 1)]


def test_preset_taken_words_are_respected():
    spans = [(0, 1), (0, 2), (1, 2), (2, 4), (3, 4)]
    logits = [one_hot(2, 1.0), one_hot(3, 9.0), one_hot(4, 2.0), one_hot(1, 3.0), one_hot(2, 0.5)]
    assert flat(spans, logits) == [((0, 2), 3, 1), ((2, 4), 1, 3)]
    # word 1 already belongs to an entity, word 3 too
    got = flat(spans, logits, taken={1, 3})
    assert got == [((0, 1), 2, 0)]
    assert flat(spans, logits, taken=set(range(0, 4))) == []


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
    accepted = flat(spans, logits, taken=set(taken))
    assert to_tags(accepted, n_words, preset) == expected
    # acceptance order is descending by score
    scores = [float(logits[k].max()) for _, _, k in accepted]
    assert scores == sorted(scores, reverse=True)


@pytest.mark.parametrize(
    "threshold", [0.5, 0.7, 0.9, {"PER": 0.7}, {"PER": 0.9, "LOC": 0.5}, {"MISC": 0.6}]
)
def test_threshold_treats_unlikely_spans_as_no_entity(threshold):
    """A span whose best label's probability is under its label's threshold decodes like a NIL
    span, in both decodings; with a table, labels not listed are decoded as without one."""
    rng = numpy.random.default_rng(3 if isinstance(threshold, float) else 7)
    n_words = 10 if isinstance(threshold, float) else 12
    spans = [(i, j) for i in range(n_words) for j in range(i + 1, min(n_words, i + 4) + 1)]
    logits = rng.normal(scale=2.0, size=(len(spans), 5))
    e = numpy.exp(logits - logits.max(axis=1, keepdims=True))
    best = (e / e.sum(axis=1, keepdims=True)).max(axis=1)
    cuts = label_thresholds(threshold, LABELS)
    under = best < (cuts[logits.argmax(axis=1)] if isinstance(threshold, dict) else cuts)
    assert under.any() and (~under & (logits.argmax(axis=1) > 0)).any()
    as_nil = logits.copy()
    as_nil[under, 0] = as_nil[under].max(axis=1) + 1.0
    expected = notebook_tags(spans, as_nil.tolist(), n_words)
    accepted = flat(spans, logits, threshold=cuts)
    assert to_tags(accepted, n_words) == expected
    assert nested(spans, logits, threshold=cuts) == nested(spans, as_nil)
    assert flat(spans, logits, threshold=0.0) == flat(spans, logits)


def test_the_same_threshold_for_every_label_is_the_scalar():
    rng = numpy.random.default_rng(7)
    spans = [(i, j) for i in range(12) for j in range(i + 1, min(12, i + 4) + 1)]
    logits = rng.normal(scale=2.0, size=(len(spans), 5))
    same = label_thresholds(dict.fromkeys(LABELS[1:], 0.7), LABELS)
    assert flat(spans, logits, threshold=same) == flat(spans, logits, threshold=0.7)


# -- nested decoding ---------------------------------------------------------------------------


def nested(spans, logits, **kwargs):
    return triples(decode_sentence_nested, spans, logits, **kwargs)


def test_nested_refuses_crossing_and_keeps_containment_either_way():
    spans = [(0, 3), (1, 2), (2, 4), (3, 5), (0, 5), (1, 3)]
    logits = [
        one_hot(4, 6.0),  # (0,3) first
        one_hot(2, 5.0),  # (1,2) inside it: kept
        one_hot(3, 4.0),  # (2,4) crosses (0,3): refused
        one_hot(1, 3.0),  # (3,5) only touches (0,3): kept
        one_hot(4, 2.0),  # (0,5) around everything: kept
        one_hot(2, 1.0),  # (1,3) inside (0,3), around (1,2): kept
    ]
    assert nested(spans, logits) == [
        ((0, 3), 4, 0),
        ((1, 2), 2, 1),
        ((3, 5), 1, 3),
        ((0, 5), 4, 4),
        ((1, 3), 2, 5),
    ]
    # the flat decoding of the same candidates keeps only non-overlapping ones
    assert flat(spans, logits) == [((0, 3), 4, 0), ((3, 5), 1, 3)]
    # an inner span scored first does not stop the outer one
    assert nested([(1, 2), (0, 3)], [one_hot(2, 9.0), one_hot(4, 1.0)]) == [
        ((1, 2), 2, 0),
        ((0, 3), 4, 1),
    ]


def test_nested_keeps_identical_spans_once():
    """The same span twice (e.g. scored by two passes) is one entity, the likelier label."""
    spans = [(0, 2), (0, 2), (0, 1)]
    logits = [one_hot(1, 2.0), one_hot(3, 5.0), one_hot(2, 1.0)]
    assert nested(spans, logits) == [((0, 2), 3, 1), ((0, 1), 2, 2)]
    # ties keep the enumeration order, as in the flat decoding
    assert nested(spans[:2], [one_hot(1, 5.0), one_hot(3, 5.0)]) == [((0, 2), 1, 0)]


def test_nested_respects_fixed_spans():
    spans = [(0, 2), (1, 3), (1, 2), (3, 4), (0, 4)]
    logits = [one_hot(1, 5.0), one_hot(2, 4.0), one_hot(3, 3.0), one_hot(4, 2.0), one_hot(1, 1.0)]
    # (0,2) is an entity already: not again; (1,3) crosses it; (1,2) inside, (0,4) around
    got = nested(spans, logits, fixed=[(0, 2)])
    assert got == [((1, 2), 3, 2), ((3, 4), 4, 3), ((0, 4), 1, 4)]


def test_nested_without_nil_and_the_no_entity_id():
    spans = [(0, 2), (0, 1)]
    logits = [one_hot(0, 9.0), one_hot(2, 1.0)]
    assert nested(spans, logits) == [((0, 1), 2, 1)]
    assert nested([], numpy.zeros((0, 5))) == []


@pytest.mark.parametrize("seed", range(6))
def test_nested_rule_on_random_logits(seed):
    """No two accepted spans cross or repeat, and every candidate left out crosses or repeats
    an accepted span that came first in the score order (the rule, checked independently)."""
    rng = numpy.random.default_rng(seed)
    n_words = int(rng.integers(2, 14))
    spans = [(i, j) for i in range(n_words) for j in range(i + 1, min(n_words, i + 5) + 1)]
    logits = rng.integers(-3, 4, size=(len(spans), 5)).astype("f")
    accepted = nested(spans, logits)
    got = [span for span, _, _ in accepted]
    assert len(set(got)) == len(got)
    for a in got:
        for b in got:
            assert not (a[0] < b[0] < a[1] < b[1]), (a, b)
    rank = {k: r for r, (_, _, k) in enumerate(accepted)}
    order = sorted(range(len(spans)), key=lambda k: -logits[k].max())
    position = {k: i for i, k in enumerate(order)}
    for k, (s, e) in enumerate(spans):
        if logits[k].argmax() == 0 or k in rank:
            continue
        blockers = [
            j
            for j in rank
            if position[j] < position[k]
            and (
                spans[j] == (s, e)
                or spans[j][0] < s < spans[j][1] < e
                or s < spans[j][0] < e < spans[j][1]
            )
        ]
        assert blockers, (s, e)
    # labels are each span's argmax
    for (s, e), label, k in accepted:
        assert label == int(logits[k].argmax()) and spans[k] == (s, e)


def test_disjoint_candidates_decode_alike_flat_and_nested():
    spans = [(0, 1), (1, 3), (3, 4), (5, 7)]
    logits = [one_hot(1, 1.0), one_hot(2, 4.0), one_hot(0, 3.0), one_hot(3, 2.0)]
    assert nested(spans, logits) == flat(spans, logits)


# -- per-label thresholds, temperature, nil_veto ---------------------------------------------


def test_label_thresholds_table():
    labels = ["NIL", "MISC", "PER", "ORG", "LOC"]
    assert label_thresholds(0.4, labels) == 0.4
    cuts = label_thresholds({"PER": 0.6, "LOC": 0.2}, labels)
    assert cuts.tolist() == [0.0, 0.0, 0.6, 0.0, 0.2]  # labels not listed: 0.0, the recipe
    with pytest.raises(ValueError, match=r"threshold names labels .*\['XYZ'\]"):
        label_thresholds({"PER": 0.6, "XYZ": 0.2}, labels)
    with pytest.raises(ValueError, match="XYZ"):
        label_thresholds({"NIL": 0.5, "XYZ": 0.2}, labels)


def test_temperature_rescales_probabilities_not_the_order():
    rng = numpy.random.default_rng(1)
    spans = numpy.asarray([(i, j) for i in range(8) for j in range(i + 1, min(8, i + 3) + 1)])
    logits = rng.normal(scale=3.0, size=(len(spans), 5)).astype("f")
    plain = decode_sentence(spans, logits)
    hot = decode_sentence(spans, logits, temperature=2.0)
    assert plain[0].tolist() == hot[0].tolist() and plain[1].tolist() == hot[1].tolist()
    rows = [next(k for k, s in enumerate(spans.tolist()) if s == span) for span in hot[0].tolist()]
    expected = softmax(logits[rows] / 2.0).max(axis=1)
    numpy.testing.assert_allclose(hot[2], expected, rtol=1e-12)
    assert (hot[2] < plain[2]).all()  # a temperature above 1 softens confident scores
    # with a threshold, the tempered probability is the one compared
    cut = float(numpy.median(hot[2]))
    kept = decode_sentence(spans, logits, temperature=2.0, threshold=cut)
    assert (kept[2] >= cut).all() and len(kept[0]) < len(hot[0])


def test_nil_veto_off_lets_likely_entities_under_nil_compete():
    spans = [(0, 1), (1, 2), (2, 3)]
    logits = numpy.asarray(
        [
            [2.0, 1.5, 0.0, 0.0, 0.0],  # NIL first, MISC close behind: p(MISC) ~ 0.32
            [3.0, 0.0, 0.0, 0.0, 0.0],  # clearly no entity: p ~ 0.04 each
            [0.0, 0.0, 2.0, 0.0, 0.0],  # PER: the recipe's only entity
        ]
    )
    assert flat(spans, logits) == [((2, 3), 2, 2)]
    got = decode_sentence(numpy.asarray(spans), logits, threshold=0.3, nil_veto=False)
    assert got[0].tolist() == [[2, 3], [0, 1]] and got[1].tolist() == [2, 1]
    numpy.testing.assert_allclose(got[2][1], softmax(logits[:1])[0, 1])
    # the order is each span's entity logit: (0,1) at 1.5 comes after (2,3) at 2.0
    nested_got = decode_sentence_nested(numpy.asarray(spans), logits, threshold=0.3, nil_veto=False)
    assert nested_got[0].tolist() == got[0].tolist()
    with pytest.raises(ValueError, match="nil_veto"):
        decode_sentence(numpy.asarray(spans), logits, nil_veto=False)
    with pytest.raises(ValueError, match="nil_veto"):
        cuts = label_thresholds({"PER": 0.5}, LABELS)  # the others at 0.0
        decode_sentence(numpy.asarray(spans), logits, threshold=cuts, nil_veto=False)
