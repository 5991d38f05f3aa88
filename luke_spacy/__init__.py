"""LUKE span-based named entity recognition for spaCy (`nlp.add_pipe("luke_ner")`)."""

from .corpus import copy_gold_sentences, create_gold_sentence_corpus
from .model import CheckpointError, build_luke_span_classifier
from .pipe import LukeEntityRecognizer, make_luke_ner
from .runtime import LukeRuntime, NotLoadedError
from .settings import NerSettings

__all__ = [
    "CheckpointError",
    "LukeEntityRecognizer",
    "LukeRuntime",
    "NerSettings",
    "NotLoadedError",
    "build_luke_span_classifier",
    "copy_gold_sentences",
    "create_gold_sentence_corpus",
    "make_luke_ner",
]
__version__ = "0.1.0"
