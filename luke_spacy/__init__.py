"""LUKE span-based named entity recognition for spaCy (`nlp.add_pipe("luke_ner")`)."""

from importlib import import_module
from typing import Any

__version__ = "0.1.0"
# Public names and their modules, imported on first use: spaCy finds the component through the
# package's entry points, and `luke-spacy` answers --help and Ctrl-C before torch is imported.
_EXPORTS = {
    "CheckpointError": "errors",
    "LukeEntityRecognizer": "pipe",
    "LukeRuntime": "runtime",
    "NerSettings": "settings",
    "NotLoadedError": "runtime",
    "build_luke_span_classifier": "model",
    "copy_gold_sentences": "corpus",
    "create_gold_sentence_corpus": "corpus",
    "export_onnx": "onnx_export",
    "make_luke_ner": "pipe",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f".{module}", __name__), name)
