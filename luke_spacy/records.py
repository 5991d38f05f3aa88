"""The output records of annotation: one JSON object per input text.

A good record:

    {"text": str, "entities": [{"text", "label", "start", "end", "score"}, ...], "meta": {...}}

`start`/`end` are character offsets into `text`, `score` is the probability of the label (None
for entities that luke_ner did not set), and `meta` (only when not empty) holds the input
record's other fields. A bad input record, or one that made the pipeline raise, becomes:

    {"text": str or None, "error": str, "source": "FILE:LINE", "meta": {...}}

with `text` None when the input had no readable text. A record is an error record exactly when
it has an "error" key. `json_line` writes a record as strict JSON: numbers that JSON cannot
hold (NaN, Infinity, -Infinity, and 1e400, which Python reads as infinity) become null, as
JavaScript's JSON.stringify writes them. `run_isolated` runs a batch so that one failing text
does not fail the others.
"""

import json
import math
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

from spacy.language import Language
from spacy.tokens import Doc

from . import isolation
from .errors import error_line
from .reading import LONE_SURROGATE


def doc_to_record(
    doc: Any, spans_keys: Sequence[str], meta: Optional[Dict[str, Any]] = None
) -> Dict[str, Any]:
    """The output record of a Doc: text, `doc.ents` with character offsets and scores.

    Scores come from `doc.spans[key].attrs["scores"]`; entities that luke_ner did not set
    (kept from an earlier component) have score None.

    doc (Doc): The processed Doc.
    spans_keys (Sequence[str]): The spans keys of the pipeline's luke_ner components.
    meta (Optional[Dict[str, Any]]): The input record's other fields.
    RETURNS (Dict[str, Any]): The record.
    """
    entities = scored_entities(doc, spans_keys)
    record: Dict[str, Any] = {"text": doc.text, "entities": entities}
    if meta:
        record["meta"] = meta
    return record


def scored_entities(doc: Doc, spans_keys: Sequence[str]) -> List[Dict[str, Any]]:
    """`doc.ents` with character offsets and the score of their label.

    Scores come from `doc.spans[key].attrs["scores"]`; an entity that luke_ner did not set
    (e.g. kept from an entity_ruler) has score None.
    RETURNS (List[Dict[str, Any]]): One {"text", "label", "start", "end", "score"} per entity.
    """
    scores: Dict[Tuple[int, int, str], float] = {}
    for key in spans_keys:
        group = doc.spans.get(key)
        values = group.attrs.get("scores") if group is not None else None
        if values is None:
            continue
        for span, score in zip(group, values):
            scores[(span.start, span.end, span.label_)] = float(score)
    return [
        {
            "text": ent.text,
            "label": ent.label_,
            "start": ent.start_char,
            "end": ent.end_char,
            "score": scores.get((ent.start, ent.end, ent.label_)),
        }
        for ent in doc.ents
    ]


def error_record(
    error: str,
    source: str,
    *,
    text: Optional[str] = None,
    meta: Optional[Dict[str, Any]] = None,
) -> Dict[str, Any]:
    """The record of an input that could not be annotated.

    error (str): What went wrong, in one line.
    source (str): Where the input came from, e.g. "docs.jsonl:12".
    text (Optional[str]): The input text, None when it could not be read.
    meta (Optional[Dict[str, Any]]): The input record's other fields.
    RETURNS (Dict[str, Any]): The record.
    """
    record: Dict[str, Any] = {"text": text, "error": error, "source": source}
    if meta:
        record["meta"] = meta
    return record


def pipeline_error(err: BaseException) -> str:
    """The error of a text that made the pipeline raise, as both engines report it."""
    return f"the pipeline failed on this text: {error_line(err, with_type=True)}"


def json_line(record: Dict[str, Any], default: Optional[Callable[[Any], Any]] = None) -> str:
    """A record as one line of strict JSON (RFC 8259), without the line break.

    Non-finite numbers become null (JSON has none). Lone surrogates, which a meta keeps as they
    came, are written as \\u escapes so that the line stays valid UTF-8; other text as is.

    record (Dict[str, Any]): The record.
    default (Optional[Callable[[Any], Any]]): How values JSON does not know are written (as
        `json.dumps`' `default`); None raises on them.
    RETURNS (str): The line.
    """
    try:
        line = json.dumps(record, ensure_ascii=False, allow_nan=False, default=default)
    except ValueError:  # NaN or an infinity somewhere in the record
        record = _finite(record)
        line = json.dumps(record, ensure_ascii=False, allow_nan=False, default=default)
    if LONE_SURROGATE.search(line):
        line = json.dumps(record, allow_nan=False, default=default)
    return line


def _finite(value: Any) -> Any:
    """`value` with every NaN or infinite float replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value


def run_isolated(
    nlp: Language, texts: Sequence[str], retry: Optional[Callable[[Exception], bool]] = None
) -> List[Union[Doc, Exception]]:
    """Run the pipeline on a batch of texts so that a text that makes it raise fails alone.

    The batch goes through `nlp.pipe`; when that raises, each text runs alone and the texts
    that still fail get their exception in their place (`isolation.run_isolated`). An error
    handler set with `nlp.set_error_handler` could only drop a failing Doc, without its
    text's place.

    nlp (Language): The pipeline.
    texts (Sequence[str]): The texts of one batch.
    retry (Optional[Callable[[Exception], bool]]): Whether to run the whole batch again after
        a failure (the Ray engine halves its memory budget on CUDA out-of-memory).
    RETURNS (List[Union[Doc, Exception]]): A Doc or an exception per text, in order.
    """
    return isolation.run_isolated(
        texts,
        lambda batch: list(nlp.pipe(batch, batch_size=len(batch))),
        on_error=lambda text, err: err,
        retry=retry,
    )
