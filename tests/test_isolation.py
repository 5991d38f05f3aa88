"""`isolation.run_isolated`: a failing item fails alone."""

from __future__ import annotations

from typing import List, Sequence

import pytest

from luke_spacy.isolation import run_isolated


class Runner:
    """Doubles numbers; raises on any batch that holds a negative one."""

    def __init__(self) -> None:
        self.calls: List[List[int]] = []

    def __call__(self, items: Sequence[int]) -> List[int]:
        self.calls.append(list(items))
        if any(x < 0 for x in items):
            raise ValueError(f"negative in {list(items)}")
        return [2 * x for x in items]


def test_a_batch_that_succeeds_runs_once():
    run = Runner()
    assert run_isolated([1, 2, 3], run, on_error=pytest.fail) == [2, 4, 6]
    assert run.calls == [[1, 2, 3]]


def test_failing_items_go_to_on_error_and_the_others_are_kept():
    run = Runner()
    errors = []

    def on_error(item, err):
        errors.append((item, str(err)))
        return "failed"

    assert run_isolated([1, -2, 3, -4], run, on_error=on_error) == [2, "failed", 6, "failed"]
    assert errors == [(-2, "negative in [-2]"), (-4, "negative in [-4]")]
    assert run.calls == [[1, -2, 3, -4], [1], [-2], [3], [-4]]


def test_retry_runs_the_whole_batch_again_while_it_says_so():
    budget = [4]

    def run(items):
        if len(items) > budget[0]:
            raise MemoryError("too many")
        return [x + 1 for x in items]

    def shrink(err):  # e.g. halve a memory budget on out-of-memory, down to a floor
        if isinstance(err, MemoryError) and budget[0] > 1:
            budget[0] //= 2
            return True
        return False

    items = list(range(3))
    budget[0] = 2
    assert run_isolated(items, run, on_error=pytest.fail, retry=shrink) == [1, 2, 3]
    assert budget[0] == 1  # halved once, then each item alone fits


def test_nothing_to_run():
    assert run_isolated([], Runner(), on_error=pytest.fail) == []
