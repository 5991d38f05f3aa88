"""`scheduling.score_passes` with a fake batch runner: no model, no spaCy Docs, no torch."""

from __future__ import annotations

import random
from typing import List, Tuple

import numpy
import pytest

from luke_spacy import scheduling
from luke_spacy.encoding import RecipeSettings, plan_doc
from luke_spacy.scheduling import DocStates, ScoredSentence, score_passes

N_LABELS = 3
HIDDEN = 2


def span_logits(doc: int, span: Tuple[int, int]) -> List[float]:
    """What the fake model scores a span with: its Doc and words, recoverable exactly."""
    return [float(doc), float(span[0]), float(span[1])]


class FakeRunner:
    """Scores a batch as `span_logits` would, in padded arrays as a backend returns them;
    word states are (subword id, position) of each window position."""

    def __init__(self) -> None:
        self.batches: List[list] = []

    def __call__(self, passes, want_words):
        self.batches.append(list(passes))
        width = max(len(p.spans) for p in passes) + 3  # padding the scheduler must drop
        length = max(p.length for p in passes)
        logits = numpy.full((len(passes), width, N_LABELS), -99.0, "f")
        words = numpy.full((len(passes), length, HIDDEN), -1.0, "f") if want_words else None
        for row, p in enumerate(passes):
            for k, span in enumerate(p.spans):
                logits[row, k] = span_logits(p.doc, span)
            if words is not None:
                ids = p.input_ids(-5, -6)
                words[row, : len(ids), 0] = ids
                words[row, : len(ids), 1] = numpy.arange(len(ids))
        return logits, words


def random_docs(seed: int, n_docs: int):
    """Word ids (some words without subwords) and sentence ranges of a few random Docs."""
    rng = random.Random(seed)
    docs = []
    next_id = iter(range(100, 10**6))
    for _ in range(n_docs):
        n = rng.randint(0, 60)
        lengths = [rng.choice([0, 1, 1, 2, 3]) for _ in range(n)]
        word_ids = [tuple(next(next_id) for _ in range(k)) for k in lengths]
        cuts = sorted(rng.sample(range(1, n), min(n - 1, rng.randint(0, 4)))) if n > 1 else []
        bounds = [0, *cuts, n] if n else []
        docs.append((word_ids, list(zip(bounds, bounds[1:]))))
    return docs


def plan(docs, recipe, cover_all=False):
    for d, (word_ids, sentences) in enumerate(docs):
        yield from plan_doc(d, word_ids, sentences, recipe, cover_all=cover_all)


RECIPE = RecipeSettings(
    max_mention_length=4, max_entity_length=5, max_length=12, document_context=True
)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("budget", [1, 60, 400])
def test_every_span_comes_back_once_with_its_own_logits(seed, budget):
    docs = random_docs(seed, 5)
    runner = FakeRunner()
    items = list(score_passes(plan(docs, RECIPE), runner, max_batch_items=budget))
    assert all(isinstance(item, ScoredSentence) for item in items)
    # sentences come Doc by Doc, in order, each once, with exactly the planned spans
    expected = {}
    for p in plan(docs, RECIPE):
        expected.setdefault((p.doc, p.sentence), []).extend(p.spans)
    keys = [(item.doc, item.spans.tolist()) for item in items]
    assert keys == [(d, [list(s) for s in spans]) for (d, _), spans in expected.items() if spans]
    for item in items:
        assert item.logits.shape == (len(item.spans), N_LABELS)
        want = [span_logits(item.doc, tuple(span)) for span in item.spans.tolist()]
        numpy.testing.assert_array_equal(item.logits, want)
    # batches stay within the budget (a pass larger than it runs alone)
    for batch in runner.batches:
        width = max(p.length for p in batch) + max(len(p.spans) for p in batch)
        assert len(batch) * width <= budget or len(batch) == 1


def test_groups_bound_what_is_planned_ahead(monkeypatch):
    """Passes are drawn from the stream group by group: never many budgets ahead of the
    batch that runs."""
    monkeypatch.setattr(scheduling, "GROUP_BATCHES", 2)
    budget = 80
    word_ids = [(i,) for i in range(2000)]
    sentences = [(i, i + 10) for i in range(0, 2000, 10)]
    drawn: List[int] = []

    def stream():
        for p in plan_doc(0, word_ids, sentences, RECIPE):
            drawn.append(p.length + len(p.spans))
            yield p

    runner = FakeRunner()
    ran = 0
    for _ in score_passes(stream(), runner, max_batch_items=budget):
        ran = sum(len(b) for b in runner.batches)
        # items drawn but not yet run: at most a group (two budgets) and one pass
        assert sum(drawn[ran:]) < 2 * budget + max(drawn)
    assert len(runner.batches) > 10


def test_word_states_cover_every_subword_from_the_first_pass():
    docs = random_docs(7, 4) + [([(1,), (2, 3)], [])]  # a Doc without sentences
    runner = FakeRunner()
    items = list(
        score_passes(
            plan(docs, RECIPE, cover_all=True), runner, max_batch_items=100, want_words=True
        )
    )
    states = {item.doc: item.states for item in items if isinstance(item, DocStates)}
    for d, (word_ids, sentences) in enumerate(docs):
        subwords = [i for word in word_ids for i in word]
        if not sentences or not subwords:
            assert d not in states
            continue
        # each state row is the subword's own (the window position differs per pass)
        assert states[d][:, 0].tolist() == subwords
    # a Doc's states come after its last sentence and before the next Doc's first
    order = [(item.doc, isinstance(item, DocStates)) for item in items]
    for (doc_a, is_states), (doc_b, _) in zip(order, order[1:]):
        if is_states:
            assert doc_b > doc_a


def test_nothing_to_run():
    runner = FakeRunner()
    assert list(score_passes(iter(()), runner, max_batch_items=10)) == []
    assert runner.batches == []
