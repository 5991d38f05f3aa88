"""The component's logits equal transformers' own LUKE path where the recipes coincide.

transformers' path: `LukeTokenizer(text, entity_spans=all word spans)` (or MLukeTokenizer) and
`LukeForEntitySpanClassification`. It coincides with the component's recipe for a one-sentence
Doc whose every span is a candidate (max_mention_length covers the sentence), whose spans all
fit one pass (max_entity_length >= number of spans) and whose window is the whole sentence
(document context of a one-sentence Doc, or sentence context).
"""

from __future__ import annotations

import math

import numpy
import pytest
import torch
from conftest import make_nlp as base_nlp
from conftest import notebook_decode, recipe_context, shared_path
from spacy.tokens import Doc
from transformers import AutoTokenizer, LukeForEntitySpanClassification

# Ours: large enough for every span of the test sentences; the HF tokenizer keeps its own 30
# (position ids padded to 30 instead of 40 only changes the float summation order).
MAX_MENTION_LENGTH = 40
HF_MAX_MENTION_LENGTH = 30

SHORT_TEXTS = [
    "Beyoncé lives in Los Angeles .",
    "She met Barack Obama in Paris !",
    "EU rejects German call to boycott British lamb .",
    "The European Commission said on Thursday it disagreed with German advice .",
    "Peter Blackburn BRUSSELS 1996-08-22",
    "I didn't see Peter Blackburn in BRUSSELS, did you?",
    "Japan , China and South Korea ; 3,000 people ( 12.5 % )",
    "Germany, China and South Korea; 3,000 people (12.5%) -- \"quoted\" 'words'?",
]
REAL_BPE_TEXTS = [
    *SHORT_TEXTS,
    "Japan 's representative met O'Neil in New York on 1996-08-22 .",
    "Japan's 2nd-largest bank lost $1.5 billion in 1996, didn't it?",
    "東京 🙂 Москва naïve",
]
CASES = (
    [("tiny_luke", t) for t in SHORT_TEXTS]
    + [("tiny_luke_real_bpe", t) for t in REAL_BPE_TEXTS]
    + [("tiny_mluke", t) for t in SHORT_TEXTS]
)

_HF_CACHE: dict = {}
_NLP_CACHE: dict = {}


def hf_objects(path):
    key = str(path)
    if key not in _HF_CACHE:
        tokenizer = AutoTokenizer.from_pretrained(key)
        model = LukeForEntitySpanClassification.from_pretrained(key).eval()
        _HF_CACHE[key] = (tokenizer, model)
    return _HF_CACHE[key]


def hf_run(path, doc):
    """transformers' own path on all word spans of the Doc."""
    tokenizer, model = hf_objects(path)
    n = len(doc)
    char_spans = [(doc[i].idx, doc[j].idx + len(doc[j])) for i in range(n) for j in range(i, n)]
    word_spans = [(i, j + 1) for i in range(n) for j in range(i, n)]
    enc = tokenizer(doc.text, entity_spans=char_spans, return_tensors="pt")
    with torch.no_grad():
        out = model(**enc, output_hidden_states=True)
    return enc, word_spans, out


def make_nlp(path, context="document", **extra):
    key = (str(path), context, tuple(sorted(extra.items())))
    if key not in _NLP_CACHE:
        settings = {"max_mention_length": MAX_MENTION_LENGTH, "max_entity_length": 1000}
        _NLP_CACHE[key] = base_nlp(path, **{**settings, "context": context, **extra})
    return _NLP_CACHE[key]


@pytest.mark.parametrize(
    "context,attention", [("document", "eager"), ("sentence", "eager"), ("document", "sdpa")]
)
@pytest.mark.parametrize("fixture,text", CASES)
def test_logits_and_entities_equal_transformers(request, fixture, text, context, attention):
    path = request.getfixturevalue(fixture)
    nlp = make_nlp(path, context, attention=attention)
    doc = nlp.make_doc(text)
    enc, word_spans, out = hf_run(path, doc)
    n_subwords = enc["input_ids"].shape[1] - 2
    # preconditions of the comparison: every span is a candidate of both recipes
    assert n_subwords <= HF_MAX_MENTION_LENGTH

    pipe = nlp.get_pipe("luke_ner")
    passes = pipe.runtime.plan([doc])
    assert len(passes) == 1
    # tokenization: per-word with prefix space equals transformers' entity-span segmentation
    tokenizer = hf_objects(path)[0]
    ids = passes[0].input_ids(tokenizer.cls_token_id, tokenizer.sep_token_id)
    assert ids == enc["input_ids"][0].tolist()
    assert passes[0].starts == enc["entity_start_positions"][0].tolist()
    assert passes[0].ends == enc["entity_end_positions"][0].tolist()

    scores = pipe.span_scores([doc])[0]
    assert [tuple(s) for s in scores.spans.tolist()] == word_spans
    hf_logits = out.logits[0].numpy()
    assert scores.logits.shape == hf_logits.shape
    numpy.testing.assert_allclose(scores.logits, hf_logits, atol=1e-5, rtol=0)

    id2label = hf_objects(path)[1].config.id2label
    expected = notebook_decode(word_spans, hf_logits.tolist(), len(doc), id2label)
    doc = nlp(text)
    assert [(e.start, e.end, e.label_) for e in doc.ents] == expected


@pytest.mark.parametrize("fixture", ["tiny_luke", "tiny_luke_real_bpe", "tiny_mluke"])
def test_trf_data_equals_transformers_word_states(request, fixture):
    path = request.getfixturevalue(fixture)
    nlp = make_nlp(path, set_trf_data=True)
    text = "She met Barack Obama in Paris !"
    doc = nlp(text)
    enc, _, out = hf_run(path, doc)
    trf = doc._.trf_data
    hf_words = out.hidden_states[-1][0, 1:-1].numpy()
    assert trf.wordpieces.input_ids.tolist() == [enc["input_ids"][0, 1:-1].tolist()]
    assert trf.model_output.last_hidden_state.shape == (1, *hf_words.shape)
    numpy.testing.assert_allclose(
        trf.model_output.last_hidden_state[0], hf_words, atol=1e-5, rtol=0
    )


def test_mluke_labels_and_mask_id(tiny_mluke):
    """mLUKE puts [MASK] at entity id 0 and its no-entity label "O" first."""
    tokenizer, model = hf_objects(tiny_mluke)
    assert tokenizer.entity_vocab["[MASK]"] == 0
    nlp = make_nlp(tiny_mluke)
    nlp("She met Barack Obama in Paris !")
    assert nlp.get_pipe("luke_ner").labels == ("LOC", "PER", "ORG", "MISC")
    enc, _, _ = hf_run(tiny_mluke, nlp.make_doc("She met Barack Obama ."))
    assert set(enc["entity_ids"][0].tolist()) == {0}


# ---------------------------------------------------------------------------------------------
# Multi-sentence documents: the paper's recipe, transcribed from LUKE's legacy NER code
# (examples/legacy/ner/utils.py: balanced context, spans of <= max_mention_length subwords,
# equal chunks of <= max_entity_length spans), run through transformers' model directly.


def legacy_passes(word_subwords, sentence_boundaries, max_num_subwords, mml, mel):
    """Features of `convert_examples_to_features`, with every word tokenized with a prefix
    space (the AllenNLP reader's variant) and [MASK] entities."""
    subwords = [s for li in word_subwords for s in li]
    token2subword = [0]
    for li in word_subwords:
        token2subword.append(token2subword[-1] + len(li))
    subword_start_positions = frozenset(token2subword)
    subword2token = [i for i, li in enumerate(word_subwords) for _ in li]
    sent_bounds = [token2subword[p] for p in sentence_boundaries]
    features = []
    for n in range(len(sent_bounds) - 1):
        doc_sent_start, doc_sent_end = sent_bounds[n : n + 2]
        left_length = doc_sent_start
        right_length = len(subwords) - doc_sent_end
        sentence_length = doc_sent_end - doc_sent_start
        left_ctx, right_ctx = recipe_context(
            left_length, right_length, sentence_length, max_num_subwords
        )
        doc_offset = doc_sent_start - left_ctx
        window = subwords[doc_offset : doc_sent_end + right_ctx]
        ents = []
        for entity_start in range(left_ctx, left_ctx + sentence_length):
            if entity_start + doc_offset not in subword_start_positions:
                continue
            for entity_end in range(entity_start + 1, left_ctx + sentence_length + 1):
                if entity_end + doc_offset not in subword_start_positions:
                    continue
                if entity_end - entity_start > mml:
                    continue
                positions = list(range(entity_start + 1, entity_end + 1))
                positions += [-1] * (mml - entity_end + entity_start)
                span = (
                    subword2token[entity_start + doc_offset],
                    subword2token[entity_end + doc_offset - 1] + 1,
                )
                ents.append((entity_start + 1, entity_end, positions, span))
        split_size = math.ceil(len(ents) / mel)
        for i in range(split_size):
            size = math.ceil(len(ents) / split_size)
            features.append((window, ents[i * size : (i + 1) * size]))
    return features


def legacy_logits(path, words, sentence_boundaries, max_length, mml, mel):
    tokenizer, model = hf_objects(path)
    word_subwords = [tokenizer.convert_tokens_to_ids(tokenizer.tokenize(w)) for w in words]
    mask_id = tokenizer.entity_vocab["[MASK]"]
    spans, logits = [], []
    for window, ents in legacy_passes(word_subwords, sentence_boundaries, max_length, mml, mel):
        k = len(ents)
        inputs = {
            "input_ids": torch.tensor([[tokenizer.cls_token_id, *window, tokenizer.sep_token_id]]),
            "attention_mask": torch.ones((1, len(window) + 2), dtype=torch.long),
            "entity_ids": torch.full((1, k), mask_id, dtype=torch.long),
            "entity_attention_mask": torch.ones((1, k), dtype=torch.long),
            "entity_position_ids": torch.tensor([[e[2] for e in ents]]),
            "entity_start_positions": torch.tensor([[e[0] for e in ents]]),
            "entity_end_positions": torch.tensor([[e[1] for e in ents]]),
        }
        with torch.no_grad():
            logits.append(model(**inputs).logits[0].numpy())
        spans.extend(e[3] for e in ents)
    return spans, numpy.concatenate(logits)


def check_against_legacy(path, words, sentence_boundaries, max_length, mml, mel):
    nlp = make_nlp(path, max_length=max_length, max_mention_length=mml, max_entity_length=mel)
    starts = set(sentence_boundaries[:-1])
    doc = Doc(nlp.vocab, words=words, sent_starts=[i in starts for i in range(len(words))])
    spans, logits = legacy_logits(path, words, sentence_boundaries, max_length, mml, mel)
    pipe = nlp.get_pipe("luke_ner")
    scores = pipe.span_scores([doc])[0]
    assert [tuple(s) for s in scores.spans.tolist()] == spans
    numpy.testing.assert_allclose(scores.logits, logits, atol=1e-5, rtol=0)
    id2label = hf_objects(path)[1].config.id2label
    expected = notebook_decode(spans, logits.tolist(), len(words), id2label)
    pipe.set_annotations([doc], pipe.predict([doc]))
    assert [(e.start, e.end, e.label_) for e in doc.ents] == expected
    return scores


def test_document_context_equals_legacy_recipe_small_windows(tiny_luke):
    # about 24 sentences, windows of 40 subwords, spans of <= 4 subwords, <= 8 spans per pass:
    # balanced context at the start, middle and end, and many chunked passes
    from luke_spacy.random_model import SAMPLE_TEXT

    tokenizer = hf_objects(tiny_luke)[0]
    fitting = [
        s.split() for s in SAMPLE_TEXT if sum(len(tokenizer.tokenize(w)) for w in s.split()) <= 40
    ]
    sentences = (fitting + fitting[::-1]) * 2
    words = [w for s in sentences for w in s]
    bounds = [0]
    for s in sentences:
        bounds.append(bounds[-1] + len(s))
    lengths = [len(tokenizer.tokenize(w)) for w in words]
    assert sum(lengths) >= 10 * 40
    assert max(sum(lengths[a:b]) for a, b in zip(bounds, bounds[1:])) <= 40
    scores = check_against_legacy(tiny_luke, words, bounds, 40, 4, 8)
    assert len(scores.spans) > 8 * len(sentences)


def read_conll_documents(path):
    docs, words, bounds = [], [], []
    for line in path.read_text().splitlines():
        if line.startswith("-DOCSTART"):
            if words:
                docs.append((words, bounds + [len(words)] if bounds[-1] != len(words) else bounds))
            words, bounds = [], [0]
            continue
        if not line.strip():
            if words and bounds[-1] != len(words):
                bounds.append(len(words))
        else:
            words.append(line.split(" ")[0])
    if words:
        docs.append((words, bounds + [len(words)] if bounds[-1] != len(words) else bounds))
    return docs


def test_conll_document_equals_legacy_recipe(tiny_luke_real_bpe):
    conll = shared_path("conll2003", "eng.testb")
    tokenizer = hf_objects(tiny_luke_real_bpe)[0]
    found = next(
        (
            (words, bounds)
            for words, bounds in read_conll_documents(conll)
            if 520 <= sum(len(tokenizer.tokenize(w)) for w in words) <= 700
        ),
        None,
    )
    if found is None:
        pytest.fail("no CoNLL test document of 520 to 700 subwords")
    words, bounds = found
    # the paper's settings: 510-subword windows, spans <= 16 subwords, <= 128 per pass
    check_against_legacy(tiny_luke_real_bpe, words, bounds, 510, 16, 128)
