"""Exact mode reproduces the straightforward recipe (B1) entity for entity.

B1 is written out here, independent of the component's batching, collation and decoding:
for each pass of the component's plan, the inputs are built by hand and run through
`LukeForEntitySpanClassification.forward` alone (batch of one, fp32, transformers' eager
attention, a model instance of its own), and each sentence is decoded greedily.
"""

from __future__ import annotations

from typing import Dict, List, Set, Tuple

import pytest
import spacy
import torch
from conftest import notebook_decode, shared_path
from spacy.tokens import Doc
from transformers import LukeForEntitySpanClassification

from luke_spacy.conll import read_conll, words_doc

Entity = Tuple[int, int, str]


def read_conll_documents(path) -> List[List[List[str]]]:
    """Documents -> sentences -> words of a CoNLL-2003 file."""
    return [[sent.words for sent in doc.sentences] for doc in read_conll(path)]


def sentence_starts(document: List[List[str]]) -> List[int]:
    out, start = [], 0
    for s in document:
        out.append(start)
        start += len(s)
    return out


def b1_inputs(p, tokenizer, mask_id: int, max_mention_length: int) -> Dict[str, torch.Tensor]:
    """The forward inputs of one pass, built by hand (no padding: a batch of one)."""
    begin, end = p.window
    ids = [tokenizer.cls_token_id, *p.subwords[begin:end], tokenizer.sep_token_id]
    positions = []
    for s, e in zip(p.starts, p.ends):
        span = list(range(s, e + 1))[:max_mention_length]
        positions.append(span + [-1] * (max_mention_length - len(span)))
    k = len(p.spans)
    return {
        "input_ids": torch.tensor([ids]),
        "attention_mask": torch.ones(1, len(ids), dtype=torch.long),
        "entity_ids": torch.full((1, k), mask_id, dtype=torch.long),
        "entity_attention_mask": torch.ones(1, k, dtype=torch.long),
        "entity_position_ids": torch.tensor([positions]),
        "entity_start_positions": torch.tensor([p.starts]),
        "entity_end_positions": torch.tensor([p.ends]),
    }


def b1_entities(pipe, model, docs, documents) -> List[List[Set[Entity]]]:
    """B1 on the component's passes: entities per document and sentence (sentence offsets)."""
    tokenizer = pipe.model.shims[0]._hfmodel.tokenizer
    mask_id = tokenizer.entity_vocab["[MASK]"]
    labels = [model.config.id2label[i] for i in range(len(model.config.id2label))]
    passes = pipe.runtime.plan(docs)
    spans: Dict[Tuple[int, int], list] = {}
    logits: Dict[Tuple[int, int], list] = {}
    with torch.inference_mode():
        for p in passes:
            out = model(**b1_inputs(p, tokenizer, mask_id, pipe.cfg["max_mention_length"]))
            spans.setdefault((p.doc, p.sentence), []).extend(p.spans)
            logits.setdefault((p.doc, p.sentence), []).append(out.logits[0])
    result = []
    for d, document in enumerate(documents):
        per_sentence = []
        for s, start in enumerate(sentence_starts(document)):
            if (d, s) not in spans:
                per_sentence.append(set())
                continue
            found = notebook_decode(
                spans[(d, s)],
                torch.cat(logits[(d, s)]).tolist(),
                len(document[s]) + start,
                dict(enumerate(labels)),
            )
            per_sentence.append({(a - start, b - start, lab) for a, b, lab in found})
        result.append(per_sentence)
    return result


def doc_entities(doc: Doc, document: List[List[str]]) -> List[Set[Entity]]:
    starts = sentence_starts(document)
    out: List[Set[Entity]] = [set() for _ in starts]
    for ent in doc.ents:
        s = max(i for i, start in enumerate(starts) if start <= ent.start)
        out[s].add((ent.start - starts[s], ent.end - starts[s], ent.label_))
    return out


@pytest.fixture(scope="module")
def test_documents():
    return read_conll_documents(shared_path("conll2003", "eng.testb"))


@pytest.fixture(scope="module")
def exact_nlp(tiny_luke_real_bpe):
    nlp = spacy.blank("en")
    nlp.add_pipe("luke_ner", config={"model": {"name": str(tiny_luke_real_bpe)}})
    nlp.initialize()
    return nlp


@pytest.mark.slow
def test_exact_mode_equals_b1_on_every_test_sentence(exact_nlp, tiny_luke_real_bpe, test_documents):
    pipe = exact_nlp.get_pipe("luke_ner")
    # Exact mode is the default: fp32 and default batching, whatever the attention default.
    assert pipe.cfg["dtype"] == "float32"
    model = LukeForEntitySpanClassification.from_pretrained(str(tiny_luke_real_bpe)).eval()
    documents = test_documents
    assert sum(len(d) for d in documents) == 3453
    ours = [
        doc_entities(doc, document)
        for doc, document in zip(
            exact_nlp.pipe(words_doc(exact_nlp.vocab, d) for d in documents), documents
        )
    ]
    reference = b1_entities(
        pipe, model, [words_doc(exact_nlp.vocab, d) for d in documents], documents
    )
    differing = [
        (d, s, sorted(a), sorted(b))
        for d, (doc_a, doc_b) in enumerate(zip(reference, ours))
        for s, (a, b) in enumerate(zip(doc_a, doc_b))
        if a != b
    ]
    n_entities = sum(len(s) for doc in reference for s in doc)
    assert n_entities > 1000, "the random model should find entities for the test to bite"
    assert not differing, f"{len(differing)} of 3453 sentences differ, e.g. {differing[:3]}"


def test_exact_mode_equals_b1_on_first_documents(exact_nlp, tiny_luke_real_bpe, test_documents):
    """The same check on a few documents, cheap enough for every run."""
    pipe = exact_nlp.get_pipe("luke_ner")
    model = LukeForEntitySpanClassification.from_pretrained(str(tiny_luke_real_bpe)).eval()
    documents = test_documents[:6]
    docs = list(exact_nlp.pipe(words_doc(exact_nlp.vocab, d) for d in documents))
    ours = [doc_entities(doc, document) for doc, document in zip(docs, documents)]
    reference = b1_entities(
        pipe, model, [words_doc(exact_nlp.vocab, d) for d in documents], documents
    )
    assert sum(len(s) for doc in reference for s in doc) > 20
    assert ours == reference


@pytest.mark.parametrize("max_batch_items", [4096, 1500])
def test_pipe_never_exceeds_batch_budget(tiny_luke_real_bpe, test_documents, max_batch_items):
    from luke_spacy.model import get_scorer

    nlp = spacy.blank("en")
    nlp.add_pipe(
        "luke_ner",
        config={"model": {"name": str(tiny_luke_real_bpe)}, "max_batch_items": max_batch_items},
    )
    nlp.initialize()
    pipe = nlp.get_pipe("luke_ner")
    scorer = get_scorer(pipe.model)
    shapes: List[Tuple[int, int, int]] = []
    forward = scorer.forward

    def spy(batch, *args, **kwargs):
        rows, words = batch["input_ids"].shape
        shapes.append((rows, words, batch["entity_ids"].shape[1]))
        return forward(batch, *args, **kwargs)

    scorer.forward = spy
    try:
        documents = test_documents[:8]
        docs = [words_doc(nlp.vocab, d) for d in documents]
        passes = pipe.runtime.plan(docs)
        out = list(nlp.pipe(docs, batch_size=1000))
    finally:
        del scorer.forward
    assert len(out) == len(documents)
    assert sum(rows for rows, _, _ in shapes) == len(passes)
    assert len(shapes) > 1
    for rows, words, spans in shapes:
        assert rows * (words + spans) <= max_batch_items or rows == 1, (rows, words, spans)
