"""Docs into passes: the sentences luke_ner scores, and the forward passes of each Doc.

spaCy Docs in, `encoding.Pass` objects out; no torch. The subword ids of a Doc's words come
from a callable (the checkpoint's word tokenizer), so planning is testable without a model.
"""

from __future__ import annotations

from typing import Callable, Iterator, List, Optional, Sequence, Tuple

from spacy.pipeline import Sentencizer
from spacy.tokens import Doc

from .encoding import Pass, RecipeSettings, plan_doc

# Sentence word ranges of one Doc, end exclusive.
Sentences = List[Tuple[int, int]]


def sentence_ranges(doc: Doc, sentencizer: Sentencizer) -> Sentences:
    """The sentence word ranges luke_ner scores, end exclusive.

    `doc.sents` when the Doc has sentence boundaries; otherwise the boundaries spaCy's
    rule-based Sentencizer would set (punctuation), without writing them to the Doc.
    Sentences longer than the window are split further by the windowing, never truncated.
    """
    if len(doc) == 0:
        return []
    if doc.has_annotation("SENT_START"):
        return [(sent.start, sent.end) for sent in doc.sents]
    starts = [i for i, is_start in enumerate(sentencizer.predict([doc])[0]) if is_start]
    starts = starts if starts and starts[0] == 0 else [0, *starts]
    return list(zip(starts, [*starts[1:], len(doc)]))


def plan_docs(
    docs: Sequence[Doc],
    word_ids: Callable[[Doc], Sequence[Sequence[int]]],
    sentences: Callable[[Doc], Sentences],
    recipe: RecipeSettings,
    *,
    given: Optional[Sequence[Sentences]] = None,
    cover_all: bool = False,
) -> Iterator[Pass]:
    """The passes of the Docs, planned lazily Doc by Doc (see `encoding.plan_doc`).

    docs (Sequence[Doc]): The Docs; each pass carries its Doc's index.
    word_ids (Callable[[Doc], Sequence[Sequence[int]]]): Subword ids of each token of a Doc.
    sentences (Callable[[Doc], Sentences]): The sentences of a Doc (`sentence_ranges`).
    recipe (RecipeSettings): Window, span and chunk limits.
    given (Optional[Sequence[Sentences]]): Sentences of each Doc to use instead (gold
        sentences in training).
    cover_all (bool): Add span-less passes so that every subword gets a word state.
    YIELDS (Pass): The passes, Doc by Doc and sentence by sentence.
    """
    for d, doc in enumerate(docs):
        yield from plan_doc(
            d,
            word_ids(doc),
            sentences(doc) if given is None else given[d],
            recipe,
            cover_all=cover_all,
        )
