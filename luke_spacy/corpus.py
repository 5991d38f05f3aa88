"""A corpus reader that keeps gold sentence boundaries on the predicted Docs.

spaCy's `Corpus` builds each Example's predicted Doc from the gold words (or text) alone, so
gold sentence boundaries are lost and luke_ner falls back to punctuation-based sentences.
CoNLL-2003 is full of sentences that do not end in punctuation (headlines, datelines, sports
tables), and LUKE's recipe scores each gold sentence with its document as context, so for
training and evaluation the predicted Doc gets the gold sentence starts whenever its words are
the gold words.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional, Union

from spacy.language import Language
from spacy.tokens import Doc
from spacy.training import Corpus, Example
from spacy.util import registry


def same_words(a: Doc, b: Doc) -> bool:
    """Whether two Docs have the same tokens (texts), so token indices carry over."""
    return len(a) == len(b) and all(x.text == y.text for x, y in zip(a, b))


def copy_gold_sentences(example: Example) -> Example:
    """Give the predicted Doc the reference's sentence starts when both have the same words."""
    predicted, reference = example.predicted, example.reference
    if (
        reference.has_annotation("SENT_START")
        and not predicted.has_annotation("SENT_START")
        and same_words(predicted, reference)
    ):
        for token, gold in zip(predicted, reference):
            token.is_sent_start = gold.is_sent_start
    return example


@registry.readers("luke_spacy.Corpus.v1")
def create_gold_sentence_corpus(
    path: Optional[Union[str, Path]],
    *,
    gold_preproc: bool = False,
    max_length: int = 0,
    limit: int = 0,
    augmenter: Optional[Callable] = None,
    shuffle: bool = False,
) -> Callable[[Language], Iterable[Example]]:
    """spaCy's `spacy.Corpus.v1`, with gold sentence boundaries on the predicted Docs.

    Arguments are those of `spacy.Corpus.v1`.
    """
    if path is None:
        raise ValueError("luke_spacy.Corpus.v1 needs a path to a .spacy file or folder.")
    corpus = Corpus(
        path,
        gold_preproc=gold_preproc,
        max_length=max_length,
        limit=limit,
        augmenter=augmenter,
        shuffle=shuffle,
    )

    def read(nlp: Language) -> Iterator[Example]:
        for example in corpus(nlp):
            yield copy_gold_sentences(example)

    return read
