"""Context windows, candidate spans and span chunks of LUKE's NER recipe.

Pure functions over subword counts, so the recipe can be checked without spaCy or torch.
Everything follows the paper's code (studio-ousia/luke `examples/ner/reader.py` and the legacy
`examples/legacy/ner/utils.py`): balanced document context of at most 510 subwords, candidate
spans of at most 16 subwords inside one sentence, and at most 128 spans per forward pass split
into equal chunks.
"""

from __future__ import annotations

import math
from array import array
from dataclasses import dataclass
from itertools import accumulate
from typing import Iterable, List, Sequence, Tuple

Span = Tuple[int, int]  # word indices, end exclusive


@dataclass(frozen=True)
class Unit:
    """A group of candidate spans that share one word window.

    core (Tuple[int, int]): Subword range that the window must contain in full.
    spans (List[Span]): The word spans classified with this window, in recipe order.
    """

    core: Tuple[int, int]
    spans: List[Span]


def subword_offsets(lengths: Iterable[int]) -> Sequence[int]:
    """Offsets of each word's first subword, plus the total as last item.

    An `array` (8 bytes per word, not a list of int objects), as a long Doc's is held while
    the Doc is scored.
    """
    offsets = array("q", [0])
    offsets.extend(accumulate(lengths))
    return offsets


def balanced_context(left: int, right: int, core: int, max_length: int) -> Tuple[int, int]:
    """How many subwords of left and right context fit around a core, as the recipe chooses.

    left (int): Subwords available before the core.
    right (int): Subwords available after the core.
    core (int): Subwords in the core (at most `max_length`).
    max_length (int): Window size without the two special tokens (510 in the recipe).
    RETURNS (Tuple[int, int]): The left and right context lengths.
    """
    if core > max_length:
        raise ValueError(f"core of {core} subwords does not fit a window of {max_length}")
    half = int((max_length - core) / 2)
    # The side with less context available is served first, so the window stays full when
    # the sentence sits near either end of the document.
    if left < right:
        n_left = min(left, half)
        n_right = min(right, max_length - n_left - core)
    else:
        n_right = min(right, half)
        n_left = min(left, max_length - n_right - core)
    return n_left, n_right


def candidate_spans(
    offsets: Sequence[int], start: int, end: int, max_mention_length: int
) -> List[Span]:
    """All word spans inside words [start, end) of at most `max_mention_length` subwords.

    A span must start and end on a word that has subwords, so whitespace tokens never bound
    a candidate. The order is the recipe's: start ascending, then end ascending.
    """
    spans: List[Span] = []
    for i in range(start, end):
        if offsets[i + 1] == offsets[i]:
            continue
        for j in range(i + 1, end + 1):
            length = offsets[j] - offsets[i]
            if length > max_mention_length:
                break
            if offsets[j] != offsets[j - 1]:
                spans.append((i, j))
    return spans


def sentence_units(
    offsets: Sequence[int], start: int, end: int, max_mention_length: int, max_length: int
) -> List[Unit]:
    """Split one sentence's candidate spans into units that each fit one window.

    A sentence that fits the window is one unit whose core is the whole sentence, exactly as
    the recipe does. A longer sentence is cut into consecutive runs of spans whose covered
    subwords fit the window, so every candidate is still classified (with the rest of the
    sentence as balanced context) instead of being truncated.
    """
    spans = candidate_spans(offsets, start, end, max_mention_length)
    if not spans:
        return []
    if offsets[end] - offsets[start] <= max_length:
        return [Unit((offsets[start], offsets[end]), spans)]
    units: List[Unit] = []
    current: List[Span] = []
    core_start = core_end = 0
    for span in spans:
        span_end = offsets[span[1]]
        if current and max(core_end, span_end) - core_start > max_length:
            units.append(Unit((core_start, core_end), current))
            current = []
        if not current:
            core_start, core_end = offsets[span[0]], span_end
        current.append(span)
        core_end = max(core_end, span_end)
    units.append(Unit((core_start, core_end), current))
    return units


def equal_chunks(n: int, max_size: int) -> List[Tuple[int, int]]:
    """Split n items into ceil(n / max_size) chunks of equal size (the last may be smaller).

    This is the recipe's `split_size = ceil(n / 128); size = ceil(n / split_size)`.
    """
    if n == 0:
        return []
    n_chunks = math.ceil(n / max_size)
    size = math.ceil(n / n_chunks)
    return [(i * size, min(n, (i + 1) * size)) for i in range(n_chunks) if i * size < n]


def window_for(core: Tuple[int, int], context: Tuple[int, int], max_length: int) -> Tuple[int, int]:
    """The subword range [begin, end) of the balanced window around a core.

    core (Tuple[int, int]): Subword range the window must contain.
    context (Tuple[int, int]): Subword range the window may draw from: the whole Doc for
        document context, the sentence for sentence context.
    max_length (int): Window size without special tokens.
    RETURNS (Tuple[int, int]): The window.
    """
    begin, end = core
    n_left, n_right = balanced_context(
        begin - context[0], context[1] - end, end - begin, max_length
    )
    return begin - n_left, end + n_right
