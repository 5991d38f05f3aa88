"""The `luke_ner` component end to end on tiny random checkpoints."""

from __future__ import annotations

import importlib.metadata
import json

import numpy
import pytest
import spacy
from conftest import make_nlp, notebook_decode
from spacy.tokens import Doc, Span
from spacy.training import Example
from transformers import AutoTokenizer, BertConfig, LukeConfig, LukeModel

from luke_spacy import CheckpointError
from luke_spacy.annotation import scored_span_group

TEXTS = [
    "She met Barack Obama in Paris !",
    "Beyoncé lives in Los Angeles . EU rejects German call to boycott British lamb .",
    "",
    "Peter Blackburn BRUSSELS 1996-08-22",
    "The European Commission said on Thursday it disagreed with German advice .",
]


@pytest.fixture(scope="module")
def nlp(tiny_luke):
    return make_nlp(tiny_luke)


@pytest.fixture(scope="module")
def hf_tokenizer(tiny_luke):
    return AutoTokenizer.from_pretrained(str(tiny_luke))


def n_subwords(tokenizer, word):
    """Subwords of one word on its own (the recipe's per-word tokenization)."""
    return len(tokenizer.tokenize(word)) if word.strip() else 0


def count_candidates(lengths, sentences, max_mention_length):
    """Candidate spans by brute force: inside one sentence, first and last word have subwords,
    at most max_mention_length subwords in all."""
    count = 0
    for a, b in sentences:
        for i in range(a, b):
            total = 0
            for j in range(i, b):
                total += lengths[j]
                if total > max_mention_length:
                    break
                if lengths[i] and lengths[j]:
                    count += 1
    return count


def assert_valid_ents(doc, labels):
    end = 0
    for ent in doc.ents:
        assert end <= ent.start < ent.end <= len(doc)
        end = ent.end
        assert ent.label_ in labels
        assert not doc[ent.start].is_space and not doc[ent.end - 1].is_space


def ents_of(doc):
    return [(e.start, e.end, e.label_) for e in doc.ents]


@pytest.mark.parametrize(
    "group,registry",
    [
        ("spacy_factories", "factories"),
        ("spacy_architectures", "architectures"),
        ("spacy_readers", "readers"),
    ],
)
def test_entry_points_give_what_spacy_resolves(group, registry):
    """spaCy finds the package through its entry points: each one loads, and spaCy's lookup
    of its name gives that same function."""
    eps = [ep for ep in importlib.metadata.entry_points(group=group) if "luke" in ep.name]
    assert eps
    for ep in eps:
        if registry == "factories":
            spacy.blank("en")  # a Language imports the factories' entry points
            assert spacy.Language.has_factory(ep.name)
        function = ep.load()
        assert getattr(spacy.registry, registry).get(ep.name) is function


@pytest.mark.parametrize(
    "text",
    [
        "",
        " ",
        "   \n\n\t ",
        "!!! ... ??? ( ) ;",
        "東京 🙂 Москва naïve",
        "🙂🙂🙂 👍🏽 🇯🇵",
        "Paris  London\n\nBerlin \t Rome",
        "a",
        ".",
    ],
)
@pytest.mark.parametrize("fixture", ["tiny_luke", "tiny_mluke"])
def test_odd_inputs_keep_their_text(request, fixture, text):
    path = request.getfixturevalue(fixture)
    nlp = make_nlp(path)
    doc = nlp(text)
    assert doc.text == text
    assert len(doc) == len(nlp.make_doc(text))
    pipe = nlp.get_pipe("luke_ner")
    assert_valid_ents(doc, pipe.labels)
    group = doc.spans["luke_ner"]
    assert len(group.attrs["scores"]) == len(group) == len(doc.ents)
    # every word with subwords was scored at least as a one-word candidate
    scores = pipe.span_scores([nlp.make_doc(text)])[0]
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    singles = {i for i, j in scores.spans.tolist() if j == i + 1}
    assert singles == {t.i for t in doc if n_subwords(tokenizer, t.text)}
    assert scores.logits.shape == (len(scores.spans), len(pipe.labels) + 1)


def test_long_doc_without_sentence_boundaries(tiny_luke, hf_tokenizer):
    n = 100_000
    k = n_subwords(hf_tokenizer, "word")
    mml = 2 * k  # one- and two-word candidates
    nlp = make_nlp(tiny_luke, max_mention_length=mml, max_length=8 * k, max_batch_items=8192)
    doc = nlp.make_doc("word " * n)
    assert len(doc) == n
    pipe = nlp.get_pipe("luke_ner")
    passes = pipe.runtime.plan([doc])
    spans = [span for p in passes for span in p.spans]
    expected = count_candidates([k] * n, [(0, n)], mml)
    assert expected == 2 * n - 1
    # each candidate planned once
    assert len(spans) == len(set(spans)) == expected
    pipe.set_annotations([doc], pipe.predict([doc]))
    assert doc.text == "word " * n
    assert_valid_ents(doc, pipe.labels)
    assert all(e.end - e.start <= 2 for e in doc.ents)
    assert not doc.has_annotation("SENT_START")


def test_very_long_tokens(nlp, hf_tokenizer):
    words = ["x" * 5000, "Paris", "is", "y" * 300, "nice", "Paris" * 3, "."]
    doc = Doc(nlp.vocab, words=words)
    pipe = nlp.get_pipe("luke_ner")
    scores = pipe.span_scores([doc])[0]
    lengths = [n_subwords(hf_tokenizer, w) for w in words]
    assert lengths[0] > 510  # longer than a whole window
    mml = pipe.cfg["max_mention_length"]
    sentences = pipe.runtime.sentences(doc)
    assert len(scores.spans) == count_candidates(lengths, sentences, mml)
    spans = {tuple(s) for s in scores.spans.tolist()}
    assert (1, 2) in spans and (0, 1) not in spans
    doc = nlp(doc)
    assert [t.text for t in doc] == words
    assert_valid_ents(doc, pipe.labels)


def test_existing_entities_are_kept_by_default(nlp):
    text = "She met Barack Obama in Paris ! Beyoncé lives in Los Angeles ."
    pipe = nlp.get_pipe("luke_ner")
    scores = pipe.span_scores([nlp.make_doc(text)])[0]
    spans = [tuple(s) for s in scores.spans.tolist()]
    fresh = notebook_decode(spans, scores.logits.tolist(), len(nlp.make_doc(text)))
    assert fresh, "the tiny model predicts something on this text"
    # pre-set an entity on a word that the model would otherwise use
    w = fresh[0][0]
    doc = nlp.make_doc(text)
    doc.ents = [Span(doc, w, w + 1, label="CUSTOM")]
    doc = nlp(doc)
    kept = [(w, w + 1, "CUSTOM")]
    expected = notebook_decode(spans, scores.logits.tolist(), len(doc), preset=[w])
    expected = [(s, e, pipe.labels[i - 1]) for s, e, i in expected]
    assert ents_of(doc) == sorted(kept + expected)
    # the span group holds only the new entities
    assert [(s.start, s.end, s.label_) for s in doc.spans["luke_ner"]] == expected


def test_existing_entities_are_replaced_with_overwrite_ents(tiny_luke, nlp):
    text = "She met Barack Obama in Paris ! Beyoncé lives in Los Angeles ."
    plain = ents_of(nlp(text))
    overwrite = make_nlp(tiny_luke, overwrite_ents=True)
    doc = overwrite.make_doc(text)
    doc.ents = [Span(doc, 0, 2, label="CUSTOM")]
    doc = overwrite(doc)
    assert ents_of(doc) == plain
    assert all(e.label_ != "CUSTOM" for e in doc.ents)


@pytest.mark.parametrize("n_process", [1, 2])
def test_nlp_pipe_matches_single_calls(nlp, n_process, capfd):
    texts = TEXTS * 3
    single = [ents_of(nlp(t)) for t in texts]
    docs = list(nlp.pipe(texts, n_process=n_process, batch_size=4))
    assert [d.text for d in docs] == texts
    assert [ents_of(d) for d in docs] == single
    for doc in docs:
        assert len(doc.spans["luke_ner"].attrs["scores"]) == len(doc.ents)
    # forked workers after the parent tokenized: no warning from the tokenizers library
    assert "forked" not in "".join(capfd.readouterr())


def test_scores_are_probabilities_of_the_entities(nlp):
    text = TEXTS[1]
    pipe = nlp.get_pipe("luke_ner")
    scores = pipe.span_scores([nlp.make_doc(text)])[0]
    index = {tuple(s): k for k, s in enumerate(scores.spans.tolist())}
    doc = nlp(text)
    group = doc.spans["luke_ner"]
    assert [(s.start, s.end, s.label_) for s in group] == ents_of(doc)
    assert len(doc.ents) > 0
    probs = group.attrs["scores"]
    assert probs.shape == (len(group),)
    for span, p in zip(group, probs.tolist()):
        row = scores.logits[index[(span.start, span.end)]].astype("float64")
        softmax = numpy.exp(row - row.max()) / numpy.exp(row - row.max()).sum()
        assert pipe.labels[int(row.argmax()) - 1] == span.label_
        assert p == pytest.approx(softmax.max(), abs=1e-6)
        assert 0.0 < p <= 1.0


def test_spans_key_none_sets_no_group(tiny_luke):
    nlp = make_nlp(tiny_luke, spans_key=None)
    doc = nlp(TEXTS[0])
    assert "luke_ner" not in doc.spans


def test_evaluate_reports_ner_scores(nlp):
    texts = [TEXTS[0], TEXTS[1]]
    predicted = [ents_of(nlp(t)) for t in texts]
    assert predicted[0] and predicted[1]
    golds = [predicted[0], [(0, 1, "PER")]]
    examples = []
    for text, gold in zip(texts, golds):
        ref = nlp.make_doc(text)
        ref.ents = [Span(ref, s, e, label=lab) for s, e, lab in gold]
        examples.append(Example(nlp.make_doc(text), ref))
    result = nlp.evaluate(examples)
    pred_set = {(k, *e) for k, ents in enumerate(predicted) for e in ents}
    gold_set = {(k, *e) for k, ents in enumerate(golds) for e in ents}
    tp = len(pred_set & gold_set)
    p, r = tp / len(pred_set), tp / len(gold_set)
    f = 2 * p * r / (p + r) if tp else 0.0
    assert result["ents_p"] == pytest.approx(p)
    assert result["ents_r"] == pytest.approx(r)
    assert result["ents_f"] == pytest.approx(f)
    labels = {e[-1] for e in pred_set | gold_set}
    assert set(result["ents_per_type"]) == labels


@pytest.mark.parametrize(
    "cfg,key",
    [
        # spaCy's validation of the factory's types, NerSettings', the backend's (device);
        # every rule of NerSettings is in test_settings.py
        ({"context": "paragraph"}, "context"),
        ({"max_mention_length": 40, "max_length": 20}, "max_mention_length"),
        ({"device": "not-a-device"}, "device"),
    ],
)
def test_invalid_settings_raise_at_add_pipe(tiny_luke, cfg, key):
    nlp = spacy.blank("en")
    with pytest.raises(ValueError, match=key):
        nlp.add_pipe("luke_ner", config={"model": {"name": str(tiny_luke)}, **cfg})


def test_max_length_beyond_the_checkpoint_raises(tiny_luke):
    # the tiny checkpoint has max_position_embeddings = 514: at most 510 subwords per window
    nlp = make_nlp(tiny_luke, max_length=511)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        nlp("Paris")


def test_missing_checkpoint_says_use_a_local_folder(tmp_path):
    missing = tmp_path / "no" / "such" / "checkpoint"
    with pytest.raises(CheckpointError, match="local folder"):
        nlp = make_nlp(missing)
        nlp("Paris")
    with pytest.raises(CheckpointError, match="local folder"):
        nlp = make_nlp("no-such-user/no-such-luke-checkpoint")
        nlp.initialize()


def test_checkpoint_without_span_head_is_rejected(tmp_path):
    config = LukeConfig(
        vocab_size=100,
        entity_vocab_size=10,
        hidden_size=16,
        entity_emb_size=8,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
    )
    LukeModel(config).save_pretrained(str(tmp_path / "luke_model"))
    saved = json.loads((tmp_path / "luke_model" / "config.json").read_text())
    assert saved["architectures"] == ["LukeModel"]
    with pytest.raises(CheckpointError, match="span classifier"):
        make_nlp(tmp_path / "luke_model")("Paris")


def test_non_luke_checkpoint_is_rejected(tmp_path):
    BertConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2).save_pretrained(
        str(tmp_path / "bert")
    )
    with pytest.raises(CheckpointError, match="bert"):
        make_nlp(tmp_path / "bert")("Paris")


def test_mluke_checkpoint_end_to_end(tiny_mluke):
    nlp = make_nlp(tiny_mluke)
    docs = list(nlp.pipe(TEXTS))
    pipe = nlp.get_pipe("luke_ner")
    assert pipe.labels == ("LOC", "PER", "ORG", "MISC")
    assert [d.text for d in docs] == TEXTS
    for doc in docs:
        assert_valid_ents(doc, pipe.labels)
    assert any(doc.ents for doc in docs)
    assert {e.label_ for d in docs for e in d.ents} <= {"LOC", "PER", "ORG", "MISC"}


def test_sentence_boundaries_from_a_sentencizer_or_not(tiny_luke, hf_tokenizer):
    text = "Peter met Mary in Paris . She lives in Los Angeles ! Germany won 3-1 ?"
    with_sents = make_nlp(tiny_luke)
    with_sents.add_pipe("sentencizer", first=True)
    without = make_nlp(tiny_luke)
    doc_a = with_sents(text)
    doc_b = without(text)
    assert doc_a.text == doc_b.text == text
    assert len(list(doc_a.sents)) == 3
    # the component does not write sentence boundaries itself
    assert not doc_b.has_annotation("SENT_START")
    pipe = without.get_pipe("luke_ner")
    pred_a = with_sents.get_pipe("luke_ner").span_scores([doc_a])[0]
    pred_b = pipe.span_scores([without.make_doc(text)])[0]
    bounds = [(s.start, s.end) for s in doc_a.sents]
    lengths = [n_subwords(hf_tokenizer, t.text) for t in doc_a]
    mml = pipe.cfg["max_mention_length"]
    # every word of every sentence is scored; no candidate crosses a sentence boundary
    for pred in (pred_a, pred_b):
        spans = [tuple(s) for s in pred.spans.tolist()]
        assert len(spans) == count_candidates(lengths, bounds, mml)
        assert all(any(a <= i < j <= b for a, b in bounds) for i, j in spans)
        assert {i for i, j in spans if j == i + 1} == set(range(len(doc_a)))
    # the same rule-based boundaries, so the same predictions
    assert pred_a.spans.tolist() == pred_b.spans.tolist()
    numpy.testing.assert_allclose(pred_a.logits, pred_b.logits, atol=1e-5)
    assert ents_of(doc_a) == ents_of(doc_b)
    # boundaries set by hand are followed too
    doc = without.make_doc(text)
    for token in doc:
        token.is_sent_start = token.i in (0, 2)
    pred = pipe.span_scores([doc])[0]
    assert all(j <= 2 or i >= 2 for i, j in pred.spans.tolist())
    assert len(pred.spans) == count_candidates(lengths, [(0, 2), (2, len(doc))], mml)


def test_set_trf_data(tiny_luke, hf_tokenizer):
    nlp = make_nlp(tiny_luke, set_trf_data=True)
    text = "Beyoncé lives in  Los Angeles .\n\nShe met Barack Obama in Paris !"
    doc = nlp(text)
    lengths = [n_subwords(hf_tokenizer, t.text) for t in doc]
    assert 0 in lengths  # whitespace tokens have no subwords
    trf = doc._.trf_data
    assert trf.align.lengths.tolist() == lengths
    assert trf.align.dataXd.tolist() == list(range(sum(lengths)))
    hidden = trf.model_output.last_hidden_state
    width = json.loads((tiny_luke / "config.json").read_text())["hidden_size"]
    assert hidden.shape == (1, sum(lengths), width)
    # every subword got a representation from a forward pass
    assert (numpy.abs(hidden[0]).sum(axis=1) > 0).all()
    tokens = [piece for t in doc if t.text.strip() for piece in hf_tokenizer.tokenize(t.text)]
    ids = hf_tokenizer.convert_tokens_to_ids(tokens)
    assert trf.wordpieces.input_ids.tolist() == [ids]


def test_bfloat16_runs_on_cpu(tiny_luke):
    nlp = make_nlp(tiny_luke, dtype="bfloat16", device="cpu")
    doc = nlp(TEXTS[1])
    assert_valid_ents(doc, nlp.get_pipe("luke_ner").labels)
    fp16 = make_nlp(tiny_luke, dtype="float16", device="cpu")
    with pytest.raises(ValueError, match="GPU"):
        fp16(TEXTS[1])


def test_trf_data_rows_for_a_sentence_without_candidates(tiny_luke, hf_tokenizer):
    nlp = make_nlp(tiny_luke, set_trf_data=True)
    url = "https://www.example.com/a/very/long/path/to/some/page.html?query=1"
    assert n_subwords(hf_tokenizer, url) > nlp.get_pipe("luke_ner").cfg["max_mention_length"]
    doc = nlp(Doc(nlp.vocab, words=[url]))
    hidden = doc._.trf_data.model_output.last_hidden_state[0]
    assert hidden.shape[0] == n_subwords(hf_tokenizer, url)
    assert (numpy.abs(hidden).sum(axis=1) > 0).all()


def test_batching_does_not_change_the_logits(tiny_luke):
    """Passes of several Docs padded into one batch, or run one by one, score the same."""
    texts = [TEXTS[0], TEXTS[1] * 12, "", TEXTS[3]]
    one_by_one = make_nlp(tiny_luke, max_batch_items=1)
    batched = make_nlp(tiny_luke, max_batch_items=10**7)
    docs = [batched.make_doc(t) for t in texts]
    together = batched.get_pipe("luke_ner").span_scores(docs)
    single = one_by_one.get_pipe("luke_ner").span_scores(docs)
    for doc, a, b in zip(docs, together, single):
        alone = batched.get_pipe("luke_ner").span_scores([doc])[0]
        assert a.spans.tolist() == b.spans.tolist() == alone.spans.tolist()
        numpy.testing.assert_allclose(a.logits, b.logits, atol=1e-5)
        numpy.testing.assert_allclose(a.logits, alone.logits, atol=1e-5)
    # the long Doc needs several passes, and the batch mixes window lengths of all Docs
    assert len(batched.get_pipe("luke_ner").runtime.plan(docs[1:2])) > 1


def test_predict_streams_a_long_doc_in_bounded_groups(tiny_luke, monkeypatch):
    """A long Doc is planned and run group by group and decoded sentence by sentence, with
    the entities that decoding all of its scores at once gives."""
    from luke_spacy import scheduling
    from luke_spacy.decoding import decode_sentence

    budget = 256
    nlp = make_nlp(tiny_luke, max_batch_items=budget)
    ner = nlp.get_pipe("luke_ner")
    doc = nlp.make_doc(" ".join(TEXTS * 10))
    doc.ents = [Span(doc, 3, 4, label="CUSTOM")]
    scores = ner.span_scores([doc])[0]
    found, ids, _ = decode_sentence(scores.spans, scores.logits, taken={3})
    expected = list(zip(map(tuple, found.tolist()), ids.tolist()))
    assert len(expected) > 10

    monkeypatch.setattr(scheduling, "GROUP_BATCHES", 2)
    held = []
    real_groups_of = scheduling.groups_of

    def spy(passes, max_items):
        for group in real_groups_of(passes, max_items):
            # what the group held before its last pass reached the limit
            held.append(sum(p.length + len(p.spans) for p in group[:-1]))
            yield group

    monkeypatch.setattr(scheduling, "groups_of", spy)
    pred = ner.predict([doc])[0]
    assert len(held) > 3
    assert max(held) < 2 * budget
    assert [(s, e, label) for (s, e), label in zip(pred.spans.tolist(), pred.labels.tolist())] == (
        sorted((s, e, label) for (s, e), label in expected)
    )
    ner.set_annotations([doc], [pred])
    assert ents_of(doc) == sorted(
        [(3, 4, "CUSTOM")] + [(s, e, ner.labels[label - 1]) for (s, e), label in expected]
    )


THRESHOLD_TEXTS = [t for t in TEXTS if t] * 2


def thresholded(tiny_luke, cut):
    """Docs annotated with `threshold = cut`, checked against decoding the span scores."""
    from luke_spacy.decoding import decode_sentence, softmax

    nlp = make_nlp(tiny_luke)
    ner = nlp.get_pipe("luke_ner")
    scores = ner.span_scores([nlp.make_doc(t) for t in THRESHOLD_TEXTS])
    best = numpy.concatenate([softmax(s.logits).max(axis=1) for s in scores])
    assert (best < cut).any() and (best >= cut).any()
    strict = make_nlp(tiny_luke, threshold=cut)
    gold = []
    for text, score in zip(THRESHOLD_TEXTS, scores):
        doc = strict(text)
        found, ids, _ = decode_sentence(score.spans, score.logits, threshold=cut)
        expected = zip(found.tolist(), ids.tolist())
        assert ents_of(doc) == sorted((s, e, ner.labels[i - 1]) for (s, e), i in expected)
        gold.append(doc)
    assert sum(map(len, (d.ents for d in gold))) < sum(len(nlp(t).ents) for t in THRESHOLD_TEXTS)
    return nlp, gold


def test_threshold_drops_unlikely_spans(tiny_luke):
    thresholded(tiny_luke, 0.6)


@pytest.mark.slow  # spaCy reloads the pipeline for each of 6 thresholds: ~15 s
def test_spacy_find_threshold_tunes_the_threshold(tiny_luke, tmp_path):
    from spacy.cli.find_threshold import find_threshold
    from spacy.tokens import DocBin

    nlp, gold = thresholded(tiny_luke, 0.6)
    # spaCy's find-threshold reloads the pipeline with each threshold; gold made at 0.6
    # is matched exactly there, and nothing is predicted at 1.0.
    nlp.to_disk(tmp_path / "pipeline")
    DocBin(docs=gold).to_disk(tmp_path / "dev.spacy")
    _, best_score, by_threshold = find_threshold(
        str(tmp_path / "pipeline"), tmp_path / "dev.spacy", "luke_ner", "threshold", "ents_f",
        n_trials=6,
    )  # fmt: skip
    by_threshold = {round(float(t), 3): f for t, f in by_threshold.items()}
    assert by_threshold[0.6] == best_score == 1.0
    assert by_threshold[1.0] == 0.0
    assert by_threshold[0.0] < 1.0


def test_error_handler_gets_the_failing_doc_and_the_others_are_annotated(tiny_luke, monkeypatch):
    nlp = make_nlp(tiny_luke)
    ner = nlp.get_pipe("luke_ner")
    texts = [TEXTS[0], "BOOM breaks here .", TEXTS[1], TEXTS[4]]
    expected = [ents_of(nlp(t)) for t in (TEXTS[0], TEXTS[1], TEXTS[4])]
    word_ids = ner.runtime.word_ids

    def fragile(doc):
        if doc[0].text == "BOOM":
            raise RuntimeError("cannot tokenize BOOM")
        return word_ids(doc)

    monkeypatch.setattr(ner.runtime, "word_ids", fragile)
    seen = []
    nlp.set_error_handler(lambda name, proc, docs, err: seen.append((name, docs, str(err))))
    done = list(nlp.pipe(texts, batch_size=8))
    assert [(name, [d.text for d in docs], err) for name, docs, err in seen] == [
        ("luke_ner", ["BOOM breaks here ."], "cannot tokenize BOOM")
    ]
    assert [ents_of(doc) for doc in done] == expected
    # without a handler, spaCy's default raises
    nlp.set_error_handler(spacy.util.raise_error)
    with pytest.raises(RuntimeError, match="BOOM"):
        list(nlp.pipe(texts, batch_size=8))


def test_running_twice_keeps_the_scores_of_kept_entities(tiny_luke):
    nlp = make_nlp(tiny_luke)
    ner = nlp.get_pipe("luke_ner")
    doc = nlp(TEXTS[1])
    first = [(s.start, s.end, s.label_) for s in doc.spans["luke_ner"]]
    scores = doc.spans["luke_ner"].attrs["scores"].tolist()
    assert first and first == ents_of(doc)
    ner(doc)
    assert ents_of(doc) == first
    assert [(s.start, s.end, s.label_) for s in doc.spans["luke_ner"]] == first
    assert doc.spans["luke_ner"].attrs["scores"].tolist() == scores


def _spans_of(group):
    return [(s.start, s.end, s.label_) for s in group]


def test_scored_span_group_sorts_the_spans_with_their_scores():
    doc = Doc(spacy.blank("en").vocab, words="Peter met Mary in Paris".split())
    new = [Span(doc, 4, 5, "LOC"), Span(doc, 0, 1, "PER"), Span(doc, 2, 3, "PER")]
    group = scored_span_group(doc, "key", (), new, [0.5, 0.75, 0.25])
    assert group.name == "key"
    assert _spans_of(group) == [(0, 1, "PER"), (2, 3, "PER"), (4, 5, "LOC")]
    assert group.attrs["scores"].dtype == numpy.float32
    assert group.attrs["scores"].tolist() == [0.75, 0.25, 0.5]
    empty = scored_span_group(doc, "key", (), [], [])
    assert len(empty) == 0 and empty.attrs["scores"].tolist() == []


def test_scored_span_group_keeps_the_earlier_scores_of_kept_entities():
    doc = Doc(spacy.blank("en").vocab, words="Peter met Mary in Paris".split())
    earlier = [Span(doc, 0, 1, "PER"), Span(doc, 2, 3, "PER"), Span(doc, 4, 5, "LOC")]
    doc.spans["key"] = scored_span_group(doc, "key", (), earlier, [0.75, 0.25, 0.5])
    # kept: Peter as before, Mary with another label (not the scored span), Paris not kept
    kept = (Span(doc, 0, 1, "PER"), Span(doc, 2, 3, "ORG"))
    group = scored_span_group(doc, "key", kept, [Span(doc, 3, 4, "MISC")], [0.125])
    assert _spans_of(group) == [(0, 1, "PER"), (3, 4, "MISC")]
    assert group.attrs["scores"].tolist() == [0.75, 0.125]
    # under another key, or without earlier scores, kept entities have no score to carry
    assert _spans_of(scored_span_group(doc, "other", kept, [], [])) == []
    doc.spans["key"].attrs.pop("scores")
    assert _spans_of(scored_span_group(doc, "key", kept, [], [])) == []


def test_saving_an_uninitialized_pipe_raises_instead_of_downloading(tmp_path):
    from luke_spacy import NotLoadedError

    nlp = spacy.blank("en")
    nlp.add_pipe("luke_ner", config={"model": {"name": "no-such-user/no-such-luke"}})
    with pytest.raises(NotLoadedError, match="initialize"):
        nlp.to_disk(tmp_path / "pipeline")
    with pytest.raises(NotLoadedError, match="initialize"):
        nlp.to_bytes()


def test_trf_data_of_a_doc_without_subwords_pools_to_a_row_per_token(tiny_luke):
    """A whitespace-only Doc gets what spacy-transformers gives a Doc without outputs: one
    zero row per token, so pooling (any reduction) and a listener give (n_tokens, width)
    (#23 item 2)."""
    from spacy_transformers.layers.trfs2arrays import trfs2arrays
    from thinc.api import reduce_max, reduce_mean

    nlp = make_nlp(tiny_luke, set_trf_data=True)
    width = json.loads((tiny_luke / "config.json").read_text())["hidden_size"]
    docs = [nlp("   "), nlp(Doc(nlp.vocab, words=[" ", "\n"], spaces=[False, False]))]
    for doc in docs:
        trf = doc._.trf_data
        assert trf.model_output.last_hidden_state.shape == (1, len(doc), width)
        assert trf.align.lengths.tolist() == [1] * len(doc)
    for pooling in (reduce_mean(), reduce_max()):
        rows = trfs2arrays(pooling, 1.0).predict([doc._.trf_data for doc in docs])
        assert [r.shape for r in rows] == [(len(doc), width) for doc in docs]
        assert not any(r.any() for r in rows)
