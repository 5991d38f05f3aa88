"""What luke_ner writes onto a Doc besides `doc.ents`: scored spans and word representations."""

from __future__ import annotations

from typing import Any, List, Optional, Sequence, Tuple

import numpy
from spacy.tokens import Doc, Span, SpanGroup
from spacy_transformers.data_classes import TransformerData, WordpieceBatch
from thinc.types import Ragged
from transformers.modeling_outputs import BaseModelOutput


def scored_span_group(
    doc: Doc, key: str, kept: Sequence[Span], new: Sequence[Span], scores: Sequence[float]
) -> SpanGroup:
    """The entities with their label probabilities (`attrs["scores"]`), sorted by start.

    Entities kept from before (`kept`) keep the scored span of an earlier run under `key`,
    so running the component twice loses no scores.
    """
    spans, values = list(new), [float(x) for x in scores]
    group = doc.spans.get(key)
    earlier = None if group is None else group.attrs.get("scores")
    if kept and earlier is not None:
        still = {(e.start, e.end, e.label) for e in kept}
        for span, score in zip(group, earlier):
            if (span.start, span.end, span.label) in still:
                spans.append(span)
                values.append(float(score))
    order = sorted(range(len(spans)), key=lambda i: spans[i].start)
    return SpanGroup(
        doc,
        name=key,
        spans=[spans[i] for i in order],
        attrs={"scores": numpy.asarray([values[i] for i in order], "f")},
    )


def trf_data(
    word_ids: Sequence[Sequence[int]],
    states: Optional[numpy.ndarray],
    tokenizer: Any,
    hidden_size: int,
    xp: Any = numpy,
) -> TransformerData:
    """LUKE's final subword states of a Doc as spacy-transformers' TransformerData.

    word_ids (Sequence[Sequence[int]]): Subword ids of each token.
    states (Optional[numpy.ndarray]): (n_subwords, hidden) final states; None for a Doc that
        had no passes (no subwords).
    tokenizer: The checkpoint's tokenizer (for the subword strings).
    hidden_size (int): Width of the states.
    xp (module): The array module of the states written (numpy, or cupy on a GPU), as
        spacy-transformers writes them for the current ops.
    """
    ids: List[int] = [i for word in word_ids for i in word]
    n = len(ids)
    if n == 0:
        # Tokens without a single subword (a whitespace-only Doc): what spacy-transformers
        # gives such a Doc, one zero "wordpiece" per token, so pooling yields a row per token.
        return TransformerData.zeros(len(word_ids), hidden_size, xp=xp)
    if states is None:
        states = numpy.zeros((n, hidden_size), "f")
    wordpieces = WordpieceBatch(
        strings=[tokenizer.convert_ids_to_tokens(ids)],
        input_ids=numpy.asarray([ids], dtype="i").reshape(1, n),
        attention_mask=numpy.ones((1, n), dtype="bool"),
        lengths=[n],
        token_type_ids=None,
    )
    lengths = numpy.asarray([len(w) for w in word_ids], "i")
    return TransformerData(
        wordpieces=wordpieces,
        model_output=BaseModelOutput(last_hidden_state=xp.asarray(states)[None]),
        align=Ragged(numpy.arange(n, dtype="i"), lengths),
    )


def word_spans(doc: Doc, spans: numpy.ndarray, labels: Sequence[str]) -> Tuple[Span, ...]:
    """Spans of the Doc from (k, 2) token offsets and their label names."""
    return tuple(Span(doc, s, e, label=label) for (s, e), label in zip(spans.tolist(), labels))
