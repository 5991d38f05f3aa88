"""The recipe's windows, candidate spans, chunks and passes, checked by hand.

No model is needed: everything here runs on subword counts and made-up subword ids.
"""

from __future__ import annotations

import math
import random

import numpy
import pytest
from conftest import recipe_context

from luke_spacy.windowing import (
    Unit,
    balanced_context,
    candidate_spans,
    equal_chunks,
    sentence_units,
    subword_offsets,
    window_for,
)


def brute_force_spans(lengths, start, end, max_mention_length):
    """Every (i, j) inside the sentence whose first and last words have subwords and whose
    subword length is within the limit, sorted start-major."""
    out = []
    for i in range(start, end):
        for j in range(i + 1, end + 1):
            if lengths[i] == 0 or lengths[j - 1] == 0:
                continue
            if sum(lengths[i:j]) <= max_mention_length:
                out.append((i, j))
    return sorted(out)


# ---------------------------------------------------------------------------------------------
# balanced_context


@pytest.mark.parametrize(
    "left,right,core,expected",
    [
        # sentence at the start of a long document: everything goes right
        (0, 1000, 10, (0, 500)),
        # a little left context available: take all of it, fill the rest on the right
        (30, 1000, 10, (30, 470)),
        # sentence at the end: everything goes left
        (1000, 0, 10, (500, 0)),
        (1000, 40, 10, (460, 40)),
        # middle, even remainder: 250 each side
        (1000, 1000, 10, (250, 250)),
        # middle, odd remainder (499): left >= right serves the right first with half=249
        (1000, 1000, 11, (250, 249)),
        # middle, odd remainder, left < right: the left gets half=249
        (1000, 2000, 11, (249, 250)),
        # document shorter than the window: all of it
        (100, 50, 20, (100, 50)),
        (50, 100, 20, (50, 100)),
        (0, 0, 7, (0, 0)),
        # core fills the window: no context
        (300, 300, 510, (0, 0)),
    ],
)
def test_balanced_context_hand_checked(left, right, core, expected):
    assert balanced_context(left, right, core, 510) == expected
    assert recipe_context(left, right, core) == expected


def test_balanced_context_matches_recipe_and_fills_window():
    rng = random.Random(0)
    for _ in range(3000):
        max_length = rng.choice([8, 31, 64, 510])
        core = rng.randint(0, max_length)
        left, right = rng.randint(0, 700), rng.randint(0, 700)
        got = balanced_context(left, right, core, max_length)
        assert got == recipe_context(left, right, core, max_length)
        n_left, n_right = got
        assert 0 <= n_left <= left and 0 <= n_right <= right
        # the window is always as full as the document allows
        assert n_left + core + n_right == min(max_length, left + core + right)


def test_balanced_context_rejects_core_longer_than_window():
    with pytest.raises(ValueError):
        balanced_context(0, 0, 511, 510)


def test_window_for():
    # document of 1000 subwords, sentence at [400, 410)
    assert window_for((400, 410), (0, 1000), 510) == (150, 660)
    assert window_for((400, 410), (400, 410), 510) == (400, 410)
    # document shorter than the window: the whole document
    assert window_for((3, 7), (0, 12), 510) == (0, 12)
    # at the very end
    assert window_for((990, 1000), (0, 1000), 510) == (490, 1000)


# ---------------------------------------------------------------------------------------------
# candidate_spans


def test_subword_offsets():
    assert list(subword_offsets([1, 0, 2, 1])) == [0, 1, 1, 3, 4]
    assert list(subword_offsets([])) == [0]


def test_candidate_spans_whitespace_words_never_bound_a_span():
    lengths = [1, 0, 2, 1]  # word 1 is whitespace (no subwords)
    spans = candidate_spans(subword_offsets(lengths), 0, 4, 16)
    assert spans == [(0, 1), (0, 3), (0, 4), (2, 3), (2, 4), (3, 4)]
    # ... but may be inside one: (0, 3) and (0, 4) cover word 1
    # trailing and leading whitespace words
    assert candidate_spans(subword_offsets([0, 1, 0]), 0, 3, 16) == [(1, 2)]
    assert candidate_spans(subword_offsets([0, 0]), 0, 2, 16) == []


def test_candidate_spans_mention_length_limit():
    # 10 + 6 = 16 fits, 17 does not
    assert candidate_spans(subword_offsets([10, 6, 1]), 0, 3, 16) == [
        (0, 1),
        (0, 2),
        (1, 2),
        (1, 3),
        (2, 3),
    ]
    # a word longer than the limit is never a candidate, and nothing spans across it
    assert candidate_spans(subword_offsets([2, 20, 1]), 0, 3, 16) == [(0, 1), (2, 3)]
    # exactly 16 one-subword words: the whole run is a candidate, 17 is not
    spans = candidate_spans(subword_offsets([1] * 17), 0, 17, 16)
    assert (0, 16) in spans and (1, 17) in spans and (0, 17) not in spans
    assert len(spans) == 17 * 18 // 2 - 1


def test_candidate_spans_stay_inside_the_sentence_in_recipe_order():
    offsets = subword_offsets([1, 1, 1, 1, 1])
    assert candidate_spans(offsets, 1, 3, 16) == [(1, 2), (1, 3), (2, 3)]
    rng = random.Random(1)
    for _ in range(500):
        n = rng.randint(1, 14)
        lengths = [rng.choice([0, 1, 1, 2, 3, 5]) for _ in range(n)]
        start = rng.randint(0, n - 1)
        end = rng.randint(start + 1, n)
        mml = rng.randint(1, 8)
        got = candidate_spans(subword_offsets(lengths), start, end, mml)
        assert got == brute_force_spans(lengths, start, end, mml)


# ---------------------------------------------------------------------------------------------
# equal_chunks


@pytest.mark.parametrize(
    "n,expected",
    [
        (0, []),
        (1, [(0, 1)]),
        (128, [(0, 128)]),
        (129, [(0, 65), (65, 129)]),
        (256, [(0, 128), (128, 256)]),
        (257, [(0, 86), (86, 172), (172, 257)]),
        (300, [(0, 100), (100, 200), (200, 300)]),
    ],
)
def test_equal_chunks(n, expected):
    assert equal_chunks(n, 128) == expected


def test_equal_chunks_cover_everything_in_recipe_sized_chunks():
    for n in range(0, 700):
        for max_size in (1, 2, 3, 7, 128):
            chunks = equal_chunks(n, max_size)
            if n == 0:
                assert chunks == []
                continue
            # the recipe: split_size = ceil(n / max); size = ceil(n / split_size)
            k = math.ceil(n / max_size)
            size = math.ceil(n / k)
            assert len(chunks) <= k
            assert chunks[0][0] == 0 and chunks[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(chunks, chunks[1:]))
            assert all(hi - lo == size for lo, hi in chunks[:-1])
            assert all(0 < hi - lo <= max_size for lo, hi in chunks)


# ---------------------------------------------------------------------------------------------
# sentence_units


def test_sentence_unit_in_a_long_document():
    lengths = [1] * 1000
    offsets = subword_offsets(lengths)
    units = sentence_units(offsets, 400, 410, 16, 510)
    assert len(units) == 1
    assert units[0].core == (400, 410)
    assert units[0].spans == brute_force_spans(lengths, 400, 410, 16)
    assert len(units[0].spans) == 55
    assert window_for(units[0].core, (0, 1000), 510) == (150, 660)


def test_one_word_sentence():
    offsets = subword_offsets([2, 3, 2])
    assert sentence_units(offsets, 1, 2, 16, 510) == [Unit((2, 5), [(1, 2)])]
    assert window_for((2, 5), (0, 7), 510) == (0, 7)
    # a one-word sentence whose word is longer than max_mention_length has no candidates
    assert sentence_units(subword_offsets([20]), 0, 1, 16, 510) == []
    # a whitespace-only sentence has none either
    assert sentence_units(subword_offsets([1, 0, 0]), 1, 3, 16, 510) == []


def test_sentence_longer_than_window_hand_checked():
    # 10 one-subword words, window of 4 subwords, spans of at most 2 subwords
    offsets = subword_offsets([1] * 10)
    units = sentence_units(offsets, 0, 10, 2, 4)
    assert units == [
        Unit((0, 4), [(0, 1), (0, 2), (1, 2), (1, 3), (2, 3), (2, 4), (3, 4)]),
        Unit((3, 7), [(3, 5), (4, 5), (4, 6), (5, 6), (5, 7), (6, 7)]),
        Unit((6, 10), [(6, 8), (7, 8), (7, 9), (8, 9), (8, 10), (9, 10)]),
    ]


def _check_units(lengths, start, end, mml, max_length):
    offsets = subword_offsets(lengths)
    units = sentence_units(offsets, start, end, mml, max_length)
    expected = brute_force_spans(lengths, start, end, mml)
    # every candidate exactly once, in recipe order
    assert [s for u in units for s in u.spans] == expected
    for unit in units:
        assert unit.spans
        a, b = unit.core
        assert 0 < b - a <= max_length
        assert offsets[start] <= a and b <= offsets[end]
        for i, j in unit.spans:
            assert a <= offsets[i] and offsets[j] <= b
        win = window_for(unit.core, (0, offsets[-1]), max_length)
        assert win[0] <= a and b <= win[1] and win[1] - win[0] <= max_length
        assert 0 <= win[0] and win[1] <= offsets[-1]
    if expected and offsets[end] - offsets[start] <= max_length:
        # a sentence that fits is one unit whose core is the whole sentence
        assert [u.core for u in units] == [(offsets[start], offsets[end])]
    return units


def test_sentence_units_of_long_sentences_cover_every_span_once():
    # a sentence of 1200 subwords inside a 2000-subword document, recipe settings
    lengths = [1, 2, 3, 0, 1] * 400
    units = _check_units(lengths, 300, 1100, 16, 510)
    assert len(units) > 1
    rng = random.Random(2)
    for _ in range(300):
        n = rng.randint(1, 60)
        lengths = [rng.choice([0, 1, 1, 1, 2, 4, 9]) for _ in range(n)]
        start = rng.randint(0, n - 1)
        end = rng.randint(start + 1, n)
        max_length = rng.randint(1, 20)
        mml = rng.randint(1, max_length)
        _check_units(lengths, start, end, mml, max_length)


# ---------------------------------------------------------------------------------------------
# encoding: passes and tensors

CLS, SEP, PAD, MASK_ENT, PAD_ENT = 0, 2, 1, 2, 0


def _collate(passes, mml):
    from luke_spacy.encoding import SpecialIds, collate

    ids = SpecialIds(cls=CLS, sep=SEP, pad=PAD, mask_entity=MASK_ENT, pad_entity=PAD_ENT)
    return collate(passes, ids, mml)


# words: [10] [11 12] [] [13] [14 15 16]; offsets 0 1 3 3 4 7
WORD_IDS = [(10,), (11, 12), (), (13,), (14, 15, 16)]
SENTENCES = [(0, 2), (2, 5)]


def test_plan_doc_document_context_hand_checked():
    from luke_spacy.encoding import RecipeSettings, plan_doc

    settings = RecipeSettings(
        max_mention_length=3, max_entity_length=128, max_length=510, document_context=True
    )
    passes = list(plan_doc(7, WORD_IDS, SENTENCES, settings))
    assert len(passes) == 2
    p0, p1 = passes
    assert (p0.doc, p0.sentence, p1.doc, p1.sentence) == (7, 0, 7, 1)
    # the whole (short) document is the window of both sentences
    assert p0.window == p1.window == (0, 7)
    assert p0.input_ids(CLS, SEP) == [0, 10, 11, 12, 13, 14, 15, 16, 2]
    assert p0.length == 9
    assert p0.core == (0, 3) and p1.core == (3, 7)
    assert p0.spans == [(0, 1), (0, 2), (1, 2)]
    assert p0.starts == [1, 1, 2]
    assert p0.ends == [1, 3, 3]
    # word 2 is whitespace; (3, 5) has 4 subwords > 3
    assert p1.spans == [(3, 4), (4, 5)]
    assert p1.starts == [4, 5]
    assert p1.ends == [4, 7]

    t = _collate(passes, 3)
    assert t["input_ids"].tolist() == [[0, 10, 11, 12, 13, 14, 15, 16, 2]] * 2
    assert t["attention_mask"].tolist() == [[1] * 9] * 2
    assert t["entity_ids"].tolist() == [[2, 2, 2], [2, 2, 0]]
    assert t["entity_attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert t["entity_start_positions"].tolist() == [[1, 1, 2], [4, 5, 0]]
    assert t["entity_end_positions"].tolist() == [[1, 3, 3], [4, 7, 0]]
    assert t["entity_position_ids"].tolist() == [
        [[1, -1, -1], [1, 2, 3], [2, 3, -1]],
        [[4, -1, -1], [5, 6, 7], [-1, -1, -1]],
    ]


def test_plan_doc_sentence_context_and_padding():
    from luke_spacy.encoding import RecipeSettings, plan_doc

    settings = RecipeSettings(
        max_mention_length=3, max_entity_length=128, max_length=510, document_context=False
    )
    p0, p1 = list(plan_doc(0, WORD_IDS, SENTENCES, settings))
    assert p0.window == (0, 3) and p1.window == (3, 7)
    assert p1.starts == [1, 2] and p1.ends == [1, 4]
    t = _collate([p0, p1], 5)
    assert t["input_ids"].tolist() == [[0, 10, 11, 12, 2, 1], [0, 13, 14, 15, 16, 2]]
    assert t["attention_mask"].tolist() == [[1, 1, 1, 1, 1, 0], [1] * 6]
    # position ids are padded to max_mention_length with -1
    assert t["entity_position_ids"].tolist()[1] == [
        [1, -1, -1, -1, -1],
        [2, 3, 4, -1, -1],
        [-1, -1, -1, -1, -1],
    ]
    for key in ("input_ids", "entity_ids", "entity_position_ids", "entity_start_positions"):
        assert t[key].dtype == numpy.int64


def test_plan_doc_chunks_share_the_window():
    from luke_spacy.encoding import RecipeSettings, plan_doc

    settings = RecipeSettings(
        max_mention_length=3, max_entity_length=2, max_length=510, document_context=True
    )
    passes = list(plan_doc(0, WORD_IDS, SENTENCES, settings))
    # sentence 0 has 3 spans -> 2 chunks of sizes 2 and 1; sentence 1 has 2 -> 1 chunk
    assert [p.spans for p in passes] == [[(0, 1), (0, 2)], [(1, 2)], [(3, 4), (4, 5)]]
    assert [p.sentence for p in passes] == [0, 0, 1]
    assert passes[0].window == passes[1].window
    assert passes[1].starts == [2] and passes[1].ends == [3]


def test_plan_doc_positions_point_at_the_span_subwords():
    """For random documents, input_ids[start..end] is exactly the span's subwords."""
    from luke_spacy.encoding import RecipeSettings, plan_doc

    rng = random.Random(3)
    for _ in range(60):
        n = rng.randint(1, 80)
        next_id = iter(range(100, 10_000))
        word_ids = [
            tuple(next(next_id) for _ in range(rng.choice([0, 1, 1, 2, 3]))) for _ in range(n)
        ]
        cuts = sorted(rng.sample(range(1, n), min(n - 1, rng.randint(0, 5)))) if n > 1 else []
        bounds = [0, *cuts, n]
        sentences = list(zip(bounds, bounds[1:]))
        max_length = rng.randint(4, 24)
        settings = RecipeSettings(
            max_mention_length=rng.randint(1, 4),
            max_entity_length=rng.randint(1, 9),
            max_length=max_length,
            document_context=rng.random() < 0.7,
        )
        passes = list(plan_doc(0, word_ids, sentences, settings))
        offsets = subword_offsets([len(w) for w in word_ids])
        seen = []
        for p in passes:
            ids = p.input_ids(CLS, SEP)
            assert len(ids) <= max_length + 2
            # the window holds the core and is as full as its context allows
            a, b = (0, offsets[-1])
            if not settings.document_context:
                a, b = offsets[sentences[p.sentence][0]], offsets[sentences[p.sentence][1]]
            assert a <= p.window[0] <= p.core[0] < p.core[1] <= p.window[1] <= b
            assert p.window[1] - p.window[0] == min(max_length, b - a)
            assert ids[0] == CLS and ids[-1] == SEP
            assert len(p.spans) <= settings.max_entity_length
            s0, s1 = sentences[p.sentence]
            for (i, j), start, end in zip(p.spans, p.starts, p.ends):
                assert s0 <= i < j <= s1
                expected = [x for w in word_ids[i:j] for x in w]
                assert ids[start : end + 1] == expected
            seen.extend(p.spans)
        expected_spans = [
            s
            for a, b in sentences
            for s in brute_force_spans(
                [len(w) for w in word_ids], a, b, settings.max_mention_length
            )
        ]
        assert seen == expected_spans


def _fake_pass(length, n_spans):
    from luke_spacy.encoding import Pass

    return Pass(
        doc=0,
        sentence=0,
        subwords=[5] * length,
        window=(0, length - 2),
        core=(0, 1),
        spans=[(0, 1)] * n_spans,
        starts=[1] * n_spans,
        ends=[1] * n_spans,
    )


def test_batch_by_budget_hand_checked():
    from luke_spacy.encoding import batch_by_budget

    # 10 passes of 10 positions + 5 spans = 15 each; a budget of 45 fits 3 per batch
    passes = [_fake_pass(10, 5) for _ in range(10)]
    batches = batch_by_budget(passes, 45)
    assert [len(b) for b in batches] == [3, 3, 3, 1]
    assert sorted(i for b in batches for i in b) == list(range(10))
    # a pass bigger than the budget still runs, alone
    batches = batch_by_budget([_fake_pass(10, 5), _fake_pass(100, 50)], 45)
    assert sorted(map(sorted, batches)) == [[0], [1]]
    assert batch_by_budget([], 45) == []


def test_batch_by_budget_respects_budget_and_returns_every_pass_once():
    from luke_spacy.encoding import batch_by_budget

    rng = random.Random(4)
    for _ in range(100):
        passes = [
            _fake_pass(rng.randint(3, 60), rng.randint(1, 40)) for _ in range(rng.randint(1, 40))
        ]
        budget = rng.randint(20, 600)
        batches = batch_by_budget(passes, budget)
        assert sorted(i for b in batches for i in b) == list(range(len(passes)))
        for batch in batches:
            assert batch
            words = max(passes[i].length for i in batch)
            spans = max(len(passes[i].spans) for i in batch)
            if len(batch) > 1:
                assert len(batch) * (words + spans) <= budget
        # everything fits in one batch under a huge budget
        assert len(batch_by_budget(passes, 10**9)) == 1


def test_long_sentence_gets_balanced_context_from_its_own_sentence():
    """A sentence longer than the window, split into units: with sentence context, each unit's
    window is filled from the rest of the sentence (balanced), never from other sentences; for
    a one-sentence Doc, sentence and document context are the same thing."""
    from luke_spacy.encoding import RecipeSettings, plan_doc

    word_ids = [(100 + i,) for i in range(30)]
    doc_settings = RecipeSettings(
        max_mention_length=2, max_entity_length=128, max_length=10, document_context=True
    )
    sent_settings = RecipeSettings(
        max_mention_length=2, max_entity_length=128, max_length=10, document_context=False
    )
    by_doc = list(plan_doc(0, word_ids, [(0, 30)], doc_settings))
    by_sent = list(plan_doc(0, word_ids, [(0, 30)], sent_settings))
    assert [(p.window, p.spans, p.starts, p.ends) for p in by_sent] == [
        (p.window, p.spans, p.starts, p.ends) for p in by_doc
    ]
    # the last unit, core (27, 30) by the hand-checked splitting rule, is near the end:
    # its window takes 7 subwords on the left
    assert by_sent[-1].core == (27, 30)
    assert by_sent[-1].window == (20, 30)

    # two sentences: words 0-4 and the long one 5-34
    word_ids = [(100 + i,) for i in range(35)]
    passes = list(plan_doc(0, word_ids, [(0, 5), (5, 35)], sent_settings))
    for p in passes:
        a, b = (0, 5) if p.sentence == 0 else (5, 35)
        assert a <= p.window[0] <= p.core[0] and p.core[1] <= p.window[1] <= b
        assert p.window[1] - p.window[0] == min(10, b - a)


def test_groups_of_keeps_order_and_bounds_each_group():
    from luke_spacy.encoding import groups_of

    rng = random.Random(7)
    passes = [_fake_pass(rng.randint(3, 60), rng.randint(0, 40)) for _ in range(200)]
    groups = list(groups_of(iter(passes), 300))
    assert [p for g in groups for p in g] == passes  # same objects, same order
    for group in groups:
        items = [p.length + len(p.spans) for p in group]
        # a group closes on the pass that reaches the budget
        assert sum(items[:-1]) < 300
    assert all(sum(p.length + len(p.spans) for p in g) >= 300 for g in groups[:-1])
    assert list(groups_of(iter([]), 300)) == []


# ---------------------------------------------------------------------------------------------
# planning: the sentences of a Doc


def _doc(text: str, sent_starts=None):
    import spacy
    from spacy.tokens import Doc

    return Doc(spacy.blank("en").vocab, words=text.split(), sent_starts=sent_starts)


def test_sentence_ranges_follow_the_docs_own_boundaries():
    from spacy.pipeline import Sentencizer

    from luke_spacy.planning import sentence_ranges

    # boundaries the punctuation would not give: they win over the rule-based ones
    doc = _doc("Peter met Mary . She left", [True, False, True, False, False, False])
    assert sentence_ranges(doc, Sentencizer()) == [(0, 2), (2, 6)]
    assert sentence_ranges(_doc(""), Sentencizer()) == []


def test_sentence_ranges_fall_back_to_the_sentencizer_without_writing_to_the_doc():
    from spacy.pipeline import Sentencizer

    from luke_spacy.planning import sentence_ranges

    doc = _doc("Peter met Mary . She lives in Paris ! ! Germany won")
    assert not doc.has_annotation("SENT_START")
    assert sentence_ranges(doc, Sentencizer()) == [(0, 4), (4, 10), (10, 12)]
    assert not doc.has_annotation("SENT_START")
    # the sentencizer given is the one asked, with its own punctuation
    assert sentence_ranges(doc, Sentencizer(punct_chars=["!"])) == [(0, 10), (10, 12)]
    assert sentence_ranges(_doc("no punctuation at all"), Sentencizer()) == [(0, 4)]


def test_sentence_ranges_always_start_at_the_first_word():
    from luke_spacy.planning import sentence_ranges

    class NoFirstStart:
        """A sentencizer whose guesses leave the first word unmarked."""

        def predict(self, docs):
            return [[False, False, True, False]]

    assert sentence_ranges(_doc("a b c d"), NoFirstStart()) == [(0, 2), (2, 4)]
