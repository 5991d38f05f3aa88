"""Model inputs of LUKE's NER recipe: passes (one window, one chunk of spans) and batches.

Pure functions over subword ids (numpy, no torch or spaCy): `collate` gives the padded arrays
that any backend feeds its network (torch tensors are made from them without a copy on CPU).
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass
from itertools import chain
from typing import Dict, Iterable, Iterator, List, Sequence, Tuple

import numpy

from .windowing import Span, Unit, equal_chunks, sentence_units, subword_offsets, window_for


@dataclass
class Pass:
    """One forward pass of the recipe: a word window and a chunk of candidate spans.

    doc (int): Index of the Doc in the batch.
    sentence (int): Index of the sentence in that Doc's sentence list.
    subwords (Sequence[int]): All subword ids of the Doc (shared by its passes, so a long Doc
        does not hold one copy of its window per pass).
    window (Tuple[int, int]): The window's subword range in the Doc.
    core (Tuple[int, int]): The subword range whose spans this pass scores.
    spans (List[Span]): Candidate word spans (Doc token indices, end exclusive).
    starts (List[int]): Position of each span's first subword in `input_ids`.
    ends (List[int]): Position of each span's last subword in `input_ids` (inclusive).
    """

    doc: int
    sentence: int
    subwords: Sequence[int]
    window: Tuple[int, int]
    core: Tuple[int, int]
    spans: List[Span]
    starts: List[int]
    ends: List[int]

    @property
    def length(self) -> int:
        """Word positions of the pass, the two special tokens included."""
        return self.window[1] - self.window[0] + 2

    def input_ids(self, cls_id: int, sep_id: int) -> List[int]:
        """The window's subword ids between the special tokens."""
        begin, end = self.window
        return [cls_id, *self.subwords[begin:end], sep_id]


@dataclass(frozen=True)
class RecipeSettings:
    """The knobs of the recipe (`NerSettings.recipe` gives them with their defaults).

    max_mention_length (int): Longest candidate span, in subwords.
    max_entity_length (int): Most candidate spans in one pass.
    max_length (int): Window size in subwords, special tokens not counted.
    document_context (bool): Fill the window with the Doc around the sentence.
    """

    max_mention_length: int
    max_entity_length: int
    max_length: int
    document_context: bool


@dataclass(frozen=True)
class SpecialIds:
    """The checkpoint's ids that `collate` writes besides the subwords.

    cls (int): The token before each window (`<s>`).
    sep (int): The token after it (`</s>`).
    pad (int): Word padding.
    mask_entity (int): The `[MASK]` entity of every candidate span.
    pad_entity (int): Entity padding.
    """

    cls: int
    sep: int
    pad: int
    mask_entity: int
    pad_entity: int


def plan_doc(
    doc_index: int,
    word_ids: Sequence[Sequence[int]],
    sentences: Sequence[Tuple[int, int]],
    settings: RecipeSettings,
    cover_all: bool = False,
) -> Iterator[Pass]:
    """All passes needed to score every candidate span of one Doc, sentence by sentence.

    A generator, so a long Doc's passes can be run as they are planned.

    doc_index (int): Index stored on each pass.
    word_ids (Sequence[Sequence[int]]): Subword ids of each word (token) of the Doc.
    sentences (Sequence[Tuple[int, int]]): Sentence word ranges, end exclusive.
    settings (RecipeSettings): Window, span and chunk limits.
    cover_all (bool): Add span-less passes for subwords that no pass's core covers (a
        sentence without candidates, over-long words), so every subword gets a word state.
    YIELDS (Pass): The passes, sentence by sentence.
    """
    offsets = subword_offsets(len(ids) for ids in word_ids)
    n_subwords = offsets[-1]
    # An array, not a list of int objects: a long Doc's subwords are held while it is scored.
    subwords = array("q", chain.from_iterable(word_ids))
    for sent_index, (start, end) in enumerate(sentences):
        units = sentence_units(
            offsets, start, end, settings.max_mention_length, settings.max_length
        )
        # Context comes from the whole Doc, or with sentence context from the sentence alone
        # (which matters for a sentence longer than the window, split into several units).
        context = (0, n_subwords) if settings.document_context else (offsets[start], offsets[end])
        if cover_all:
            units = _cover(units, (offsets[start], offsets[end]), settings.max_length)
        for unit in units:
            begin, stop = window_for(unit.core, context, settings.max_length)
            # +1 for the leading special token; ends are inclusive (last subword).
            starts = [offsets[i] - begin + 1 for i, _ in unit.spans]
            ends = [offsets[j] - begin for _, j in unit.spans]
            chunks = equal_chunks(len(unit.spans), settings.max_entity_length) or [(0, 0)]
            for lo, hi in chunks:
                yield Pass(
                    doc=doc_index,
                    sentence=sent_index,
                    subwords=subwords,
                    window=(begin, stop),
                    core=unit.core,
                    spans=unit.spans[lo:hi],
                    starts=starts[lo:hi],
                    ends=ends[lo:hi],
                )


def _cover(units: List[Unit], sentence: Tuple[int, int], max_length: int) -> List[Unit]:
    """Units plus span-less units for the parts of the sentence no unit's core covers."""
    covered = sorted(unit.core for unit in units)
    gaps, pos = [], sentence[0]
    for begin, end in [*covered, (sentence[1], sentence[1])]:
        for lo in range(pos, begin, max_length):
            gaps.append(Unit((lo, min(begin, lo + max_length)), []))
        pos = max(pos, end)
    return sorted(units + gaps, key=lambda unit: unit.core)


def groups_of(passes: Iterable[Pass], max_items: int) -> Iterator[List[Pass]]:
    """Consecutive groups of passes of about `max_items` word+span positions each.

    Groups bound what is planned and held at once; within a group, `batch_by_budget` sorts.
    """
    group: List[Pass] = []
    items = 0
    for p in passes:
        group.append(p)
        items += p.length + len(p.spans)
        if items >= max_items:
            yield group
            group, items = [], 0
    if group:
        yield group


def batch_by_budget(passes: Sequence[Pass], max_batch_items: int) -> List[List[int]]:
    """Group passes into batches whose padded size stays within a budget.

    Passes are sorted by length so batches carry little padding. The padded size of a batch
    is rows x (longest window + most spans); a single pass larger than the budget still runs,
    alone.

    RETURNS (List[List[int]]): Indices into `passes`, one list per batch.
    """
    order = sorted(range(len(passes)), key=lambda i: (passes[i].length, len(passes[i].spans)))
    batches: List[List[int]] = []
    current: List[int] = []
    max_words = max_spans = 0
    for i in order:
        words = max(max_words, passes[i].length)
        spans = max(max_spans, len(passes[i].spans))
        if current and (len(current) + 1) * (words + spans) > max_batch_items:
            batches.append(current)
            current = []
            words, spans = passes[i].length, len(passes[i].spans)
        current.append(i)
        max_words, max_spans = words, spans
    if current:
        batches.append(current)
    return batches


def collate(
    passes: Sequence[Pass], ids: SpecialIds, max_mention_length: int
) -> Dict[str, numpy.ndarray]:
    """Pad passes into the int64 arrays `LukeForEntitySpanClassification.forward` takes.

    Entity position ids run over the span's subwords (`<s>` counted as position 0) and are
    padded with -1 to `max_mention_length`, as the recipe builds them.

    passes (Sequence[Pass]): One forward batch.
    ids (SpecialIds): The checkpoint's special token and entity ids.
    max_mention_length (int): Width of the entity position ids.
    RETURNS (Dict[str, numpy.ndarray]): input_ids, attention_mask, entity_ids,
        entity_attention_mask, entity_position_ids, entity_start_positions and
        entity_end_positions.
    """
    n = len(passes)
    n_words = max(p.length for p in passes)
    # At least one (masked) entity slot: a batch of span-less passes still runs.
    n_spans = max(1, max(len(p.spans) for p in passes))
    input_ids = numpy.full((n, n_words), ids.pad, dtype=numpy.int64)
    attention_mask = numpy.zeros((n, n_words), dtype=numpy.int64)
    entity_ids = numpy.full((n, n_spans), ids.pad_entity, dtype=numpy.int64)
    entity_mask = numpy.zeros((n, n_spans), dtype=numpy.int64)
    position_ids = numpy.full((n, n_spans, max_mention_length), -1, dtype=numpy.int64)
    starts = numpy.zeros((n, n_spans), dtype=numpy.int64)
    ends = numpy.zeros((n, n_spans), dtype=numpy.int64)
    steps = numpy.arange(max_mention_length, dtype=numpy.int64)
    for row, p in enumerate(passes):
        begin, end = p.window
        input_ids[row, 0] = ids.cls
        input_ids[row, 1 : p.length - 1] = p.subwords[begin:end]
        input_ids[row, p.length - 1] = ids.sep
        attention_mask[row, : p.length] = 1
        k = len(p.spans)
        if not k:
            continue
        entity_ids[row, :k] = ids.mask_entity
        entity_mask[row, :k] = 1
        s = numpy.asarray(p.starts, dtype=numpy.int64)
        e = numpy.asarray(p.ends, dtype=numpy.int64)
        starts[row, :k] = s
        ends[row, :k] = e
        pos = s[:, None] + steps[None, :]
        position_ids[row, :k] = numpy.where(pos <= e[:, None], pos, -1)
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "entity_ids": entity_ids,
        "entity_attention_mask": entity_mask,
        "entity_position_ids": position_ids,
        "entity_start_positions": starts,
        "entity_end_positions": ends,
    }
