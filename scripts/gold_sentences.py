"""`spacy evaluate --code` module: predicted Docs keep the gold sentence boundaries.

spaCy's `Corpus` builds the predicted Doc of each evaluation Example from the gold words
alone (the CoNLL .spacy files have unknown spaces, so the words are kept), which drops the gold
sentence boundaries. luke_ner would then fall back to punctuation-based sentences, and
CoNLL-2003 is full of sentences that do not end in punctuation (headlines, datelines, sports
tables): on eng.testb that rule reproduces only 1,113 of the 3,453 gold sentences. LUKE's
recipe scores each gold sentence with its document as context, so this module copies the
gold sentence starts onto the predicted Doc whenever its words are the gold words. Nothing
else changes: the pipeline, the scorer and the whole-document Docs are spaCy's.
"""

from __future__ import annotations

from spacy.tokens import Doc
from spacy.training import Corpus, Example

from luke_spacy.corpus import copy_gold_sentences

_make_example = Corpus._make_example


def _make_example_with_sentences(self, nlp, reference: Doc, gold_preproc: bool) -> Example:
    return copy_gold_sentences(_make_example(self, nlp, reference, gold_preproc))


# `spacy evaluate` builds its Corpus itself, so a reader cannot be configured: patch it.
Corpus._make_example = _make_example_with_sentences
