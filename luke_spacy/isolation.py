"""Failure isolation: run a batch, and when it fails, find the items that make it fail."""

from __future__ import annotations

from typing import Callable, List, Optional, Sequence, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def run_isolated(
    items: Sequence[T],
    run: Callable[[Sequence[T]], Sequence[R]],
    *,
    on_error: Callable[[T, Exception], Optional[R]],
    retry: Optional[Callable[[Exception], bool]] = None,
) -> List[Optional[R]]:
    """Run a batch at once; if that raises, run its items one by one, so that only the items
    that fail on their own are lost, and each of them reaches `on_error`.

    The batch is run again as a whole while `retry(err)` returns True (e.g. after halving a
    memory budget on out-of-memory); then, or for any other error, each item runs alone.

    items (Sequence[T]): The batch.
    run (Callable[[Sequence[T]], Sequence[R]]): Runs items, one result per item in order.
    on_error (Callable[[T, Exception], Optional[R]]): Called with each item that fails alone
        and its error; what it returns takes the item's place (None to leave a gap).
    retry (Optional[Callable[[Exception], bool]]): Whether to run the whole batch again
        after a failure; by default never.
    RETURNS (List[Optional[R]]): One result per item, in order.
    """
    if not items:
        return []
    while True:
        try:
            return list(run(items))
        except Exception as err:  # isolated below
            if retry is None or not retry(err):
                break
    results: List[Optional[R]] = []
    for item in items:
        try:
            (result,) = run([item])
        except Exception as err:  # this item's error; the others go on
            results.append(on_error(item, err))
        else:
            results.append(result)
    return results
