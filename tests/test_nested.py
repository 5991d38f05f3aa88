"""Nested entities: the scored span group beside `doc.ents`, its scores, its training from
nested gold, and the decoding settings (per-label thresholds, temperature, nil_veto) end to end.
"""

from __future__ import annotations

import numpy
import pytest
import spacy
from confection import ConfigValidationError
from conftest import make_nlp
from spacy.tokens import Doc, Span, SpanGroup
from spacy.training import Example
from thinc.api import Adam

from luke_spacy.decoding import (
    decode_sentence,
    decode_sentence_nested,
    label_thresholds,
    softmax,
)
from luke_spacy.settings import SettingsError
from luke_spacy.training import Coverage, GoldDoc, coverage, gold_entities, span_targets

TEXTS = [
    "Peter Blackburn met Angela Merkel in New York City on Monday .",
    "The European Commission said on Thursday it disagreed with German advice .",
]


def spans_of(group):
    return [(span.start, span.end, span.label_) for span in group]


def test_nested_group_beside_unchanged_ents(tiny_luke):
    """doc.ents and the flat group are exactly the default pipeline's; the nested group is the
    nested decoding of the same span scores, each span with its label's probability."""
    plain = make_nlp(tiny_luke)
    both = make_nlp(tiny_luke, nested_spans_key="nested")
    ner = both.get_pipe("luke_ner")
    names = ["NIL", *ner.labels] if ner.labels else None
    n_inner = 0
    for text, doc, ref in zip(TEXTS, both.pipe(TEXTS), plain.pipe(TEXTS)):
        assert spans_of(doc.ents) == spans_of(ref.ents)
        numpy.testing.assert_array_equal(
            doc.spans["luke_ner"].attrs["scores"], ref.spans["luke_ner"].attrs["scores"]
        )
        assert "nested" not in ref.spans
        (scores,) = ner.span_scores([both.make_doc(text)])
        names = ["NIL", *ner.labels]
        # the wiring only: the nested rule itself is tested in test_decoding.py
        found, ids, _ = decode_sentence_nested(scores.spans, scores.logits)
        group = doc.spans["nested"]
        expected = zip(found.tolist(), ids.tolist())
        assert sorted(spans_of(group)) == sorted((s, e, names[k]) for (s, e), k in expected)
        rows = {tuple(span): k for k, span in enumerate(scores.spans.tolist())}
        for span, score in zip(group, group.attrs["scores"]):
            row = scores.logits[rows[(span.start, span.end)]]
            assert score == pytest.approx(softmax(row[None])[0].max(), abs=1e-6)
        n_inner += sum(
            any(o.start <= s.start and s.end <= o.end and o != s for o in group) for s in group
        )
    assert n_inner > 0  # the random model nests, so the rule is exercised


def test_nested_group_never_crosses_preset_entities(tiny_luke):
    nlp = make_nlp(tiny_luke, nested_spans_key="nested")
    doc = nlp.make_doc(TEXTS[0])
    doc.ents = [Span(doc, 3, 5, label="PER"), Span(doc, 7, 10, label="LOC")]
    doc = nlp(doc)
    preset = [(3, 5), (7, 10)]
    assert [(e.start, e.end) for e in doc.ents if (e.start, e.end) in preset] == preset
    group = doc.spans["nested"]
    assert len(group) > 0
    for span in group:
        for s, e in preset:
            assert (span.start, span.end) != (s, e)
            assert not (span.start < s < span.end < e or s < span.start < e < span.end)
    # with overwrite_ents the preset entities are not there to respect
    free = make_nlp(tiny_luke, nested_spans_key="nested", overwrite_ents=True)
    fresh = free(free.make_doc(TEXTS[0]))
    again = free.make_doc(TEXTS[0])
    again.ents = [Span(again, 3, 5, label="PER")]
    assert spans_of(free(again).spans["nested"]) == spans_of(fresh.spans["nested"])


def reference_with_group(nlp, text, spans):
    ref = Doc(nlp.vocab, words=[t.text for t in nlp.make_doc(text)])
    ref.spans["nested"] = SpanGroup(ref, spans=[Span(ref, s, e, label=lab) for s, e, lab in spans])
    return ref


def test_scorer_reports_the_nested_group(tiny_luke):
    nlp = make_nlp(tiny_luke, nested_spans_key="nested")
    predicted = [spans_of(doc.spans["nested"]) for doc in nlp.pipe(TEXTS)]
    assert all(predicted)
    # gold: the predictions but one, plus one entity the model does not find
    missed = (0, 1, "NOT_FOUND")
    gold = [predicted[0][1:] + [missed], predicted[1]]
    examples = [
        Example(nlp.make_doc(text), reference_with_group(nlp, text, spans))
        for text, spans in zip(TEXTS, gold)
    ]
    scores = nlp.evaluate(examples)
    n_pred, n_gold = sum(map(len, predicted)), sum(map(len, gold))
    tp = n_pred - 1
    assert scores["spans_nested_p"] == pytest.approx(tp / n_pred)
    assert scores["spans_nested_r"] == pytest.approx(tp / n_gold)
    assert scores["spans_nested_f"] == pytest.approx(2 * tp / (n_pred + n_gold))
    assert "NOT_FOUND" in scores["spans_nested_per_type"]
    assert scores["spans_nested_per_type"]["NOT_FOUND"]["r"] == 0.0
    assert {"ents_p", "ents_r", "ents_f", "ents_per_type"} <= set(scores)
    # nothing nested to score without the setting
    plain = make_nlp(tiny_luke).evaluate(examples)
    assert "ents_f" in plain and not any(key.startswith("spans_") for key in plain)


def test_settings_round_trip_through_config_and_disk(tiny_luke, tmp_path):
    settings = {
        "nested_spans_key": "nested",
        "gold_spans_key": "gold",
        "threshold": {"PER": 0.25, "LOC": 0.5},
        "temperature": 1.5,
        "nil_veto": False,
    }
    with pytest.raises(ConfigValidationError, match=r"leaves out \['MISC', 'ORG'\]"):
        make_nlp(tiny_luke, **settings).initialize()  # refused before any Doc
    settings["threshold"] = {"PER": 0.25, "LOC": 0.5, "MISC": 0.3, "ORG": 0.3}
    nlp = make_nlp(tiny_luke, **settings)
    ner = nlp.get_pipe("luke_ner")
    for key, value in settings.items():
        assert getattr(ner.settings, key) == value
    docs = list(nlp.pipe(TEXTS))
    nlp.to_disk(tmp_path / "pipeline")
    config_text = (tmp_path / "pipeline" / "config.cfg").read_text()
    assert "[components.luke_ner.threshold]" in config_text and "PER = 0.25" in config_text
    loaded = spacy.load(tmp_path / "pipeline")
    again = spacy.util.load_model_from_config(nlp.config, auto_fill=True)
    again.get_pipe("luke_ner").from_bytes(ner.to_bytes())
    for other in (loaded, again):
        assert other.get_pipe("luke_ner").settings == ner.settings
        for doc, redo in zip(docs, other.pipe(TEXTS)):
            assert spans_of(redo.ents) == spans_of(doc.ents)
            assert spans_of(redo.spans["nested"]) == spans_of(doc.spans["nested"])
            numpy.testing.assert_allclose(
                redo.spans["nested"].attrs["scores"], doc.spans["nested"].attrs["scores"]
            )


def test_threshold_table_must_name_the_models_labels(tiny_luke, tmp_path):
    """Refused as soon as the checkpoint's labels are known (initialize, load, the lazy first
    load), as the settings' config error, not when the first sentence is decoded."""
    table = {"threshold": {"PERSON": 0.5}}
    with pytest.raises(ConfigValidationError, match=r"threshold\s+names labels .*PERSON"):
        make_nlp(tiny_luke, **table).initialize()
    with pytest.raises(SettingsError, match=r"threshold names labels .*PERSON"):
        make_nlp(tiny_luke, **table)("Peter lives in Paris .")  # the lazy first load
    plain = make_nlp(tiny_luke)
    plain.initialize()
    plain.to_disk(tmp_path / "pipeline")
    path = tmp_path / "pipeline" / "config.cfg"
    config = spacy.util.load_config(path, interpolate=False)
    config["components"]["luke_ner"].update(table)
    config.to_disk(path)
    with pytest.raises(ConfigValidationError, match=r"names labels .*PERSON"):
        spacy.load(tmp_path / "pipeline")


def test_a_threshold_table_thresholds_its_labels_only(tiny_luke):
    plain = make_nlp(tiny_luke)
    docs = list(plain.pipe(TEXTS))
    label = docs[0].ents[0].label_
    strict = make_nlp(tiny_luke, threshold={label: 1.0})
    cut_docs = list(strict.pipe(TEXTS))
    ner = strict.get_pipe("luke_ner")
    names = ["NIL", *ner.labels]
    cuts = label_thresholds({label: 1.0}, names)
    for text, cut in zip(TEXTS, cut_docs):
        assert label not in {e.label_ for e in cut.ents}
        (scores,) = ner.span_scores([strict.make_doc(text)])
        found, ids, _ = decode_sentence(scores.spans, scores.logits, threshold=cuts)
        expected = zip(found.tolist(), ids.tolist())
        assert spans_of(cut.ents) == sorted((s, e, names[k]) for (s, e), k in expected)
    # the same number for every label is the scalar threshold
    table = make_nlp(tiny_luke, threshold=dict.fromkeys(ner.labels, 0.6))
    scalar = make_nlp(tiny_luke, threshold=0.6)
    for a, b in zip(table.pipe(TEXTS), scalar.pipe(TEXTS)):
        assert spans_of(a.ents) == spans_of(b.ents)


# -- training from nested gold -------------------------------------------------------------


def nested_reference(vocab, words, spans, key="gold"):
    ref = Doc(vocab, words=words, sent_starts=[True] + [False] * (len(words) - 1))
    ref.spans[key] = [Span(ref, s, e, label=lab) for s, e, lab in spans]
    # the flat projection, as luke_spacy.genia writes it: outermost entities, first label
    outer = {}
    for s, e, lab in spans:
        if not any(a <= s and e <= b and (a, b) != (s, e) for a, b, _ in spans):
            outer.setdefault((s, e), lab)
    ref.ents = [Span(ref, s, e, label=lab) for (s, e), lab in outer.items()]
    return ref


def test_targets_from_nested_gold(tiny_luke):
    nlp = make_nlp(tiny_luke)
    words = "the IL-2 gene is expressed in T cells".split()
    gold = [(1, 3, "DNA"), (1, 2, "protein"), (6, 8, "cell_type"), (6, 8, "cell_line")]
    ref = nested_reference(nlp.vocab, words, gold)
    eg = Example(Doc(nlp.vocab, words=words), ref)
    flat = gold_entities(eg)
    assert flat.entities == {(1, 3): "DNA", (6, 8): "cell_type"}
    found = gold_entities(eg, "gold")
    # every span its own label; a span annotated twice keeps the first and is counted
    assert found.entities == {(1, 3): "DNA", (1, 2): "protein", (6, 8): "cell_type"}
    assert (found.n_misaligned, found.n_same_span) == (0, 1)
    ids = {"NIL": 0, "DNA": 1, "protein": 2, "cell_type": 3, "cell_line": 4}
    spans = [(1, 2), (1, 3), (2, 3), (6, 8)]
    assert span_targets([spans], [found.entities], ids, 5).tolist() == [[2, 1, 0, 3, -1]]
    # another tokenization: spans are aligned onto the predicted Doc, nested ones included
    other = Doc(nlp.vocab, words=["the", "IL", "-2", "gene", "is", "expressed", "in", "T", "cells"])
    aligned = gold_entities(Example(other, ref), "gold")
    assert aligned.entities == {(1, 4): "DNA", (1, 3): "protein", (7, 9): "cell_type"}
    report = coverage(
        GoldDoc(eg.predicted, [(0, 8)], found.entities, 0, 1), [1] * 8, 16, Coverage()
    )
    assert report.n_entities == 4 and report.n_lost == 1
    assert "on the span of another gold entity" in report.describe()
    # a Doc without the group has no gold entities
    assert (
        gold_entities(Example(Doc(nlp.vocab, words=words), Doc(nlp.vocab, words=words)), "gold")[0]
        == {}
    )


def test_misspelled_gold_spans_key_is_refused(tiny_luke):
    nlp = make_nlp(tiny_luke, gold_spans_key="nestd")
    words = "the IL-2 gene is expressed".split()
    ref = nested_reference(nlp.vocab, words, [(1, 3, "DNA"), (1, 2, "protein")])
    with pytest.raises(ValueError, match=r"gold_spans_key = 'nestd'.*\['gold'\]"):
        nlp.initialize(lambda: [Example(Doc(nlp.vocab, words=words), ref)])
    # an inference pipeline (spaCy's placeholder example) still initializes
    make_nlp(tiny_luke, gold_spans_key="nested").initialize()


NESTED_DATA = [
    ("the IL-2 gene is expressed", [(1, 3, "DNA"), (1, 2, "protein")]),
    ("a p53 gene was found", [(1, 3, "DNA"), (1, 2, "protein")]),
    ("IL-2 binds the receptor", [(0, 1, "protein")]),
    ("the NF-kB gene is silent", [(1, 3, "DNA"), (1, 2, "protein")]),
    ("p53 is a protein", [(0, 1, "protein")]),
    ("NF-kB gene promoter", [(0, 2, "DNA"), (0, 1, "protein")]),
]


def test_a_tiny_model_learns_a_nested_pair_from_nested_gold(tiny_luke):
    nlp = make_nlp(tiny_luke, gold_spans_key="gold", nested_spans_key="gold")
    examples = [
        Example(Doc(nlp.vocab, words=text.split()), nested_reference(nlp.vocab, text.split(), g))
        for text, g in NESTED_DATA
    ]
    nlp.initialize(lambda: examples)
    ner = nlp.get_pipe("luke_ner")
    assert ner.labels == ("DNA", "protein")  # from the group, inner labels included
    assert ner.cfg["coverage"] == {"n_entities": 10}
    optimizer = Adam(5e-3)
    for _ in range(80):
        nlp.update(examples, sgd=optimizer, drop=0.0)
    scores = nlp.evaluate(examples)
    assert scores["spans_gold_f"] == 1.0, scores
    doc = nlp(nlp.make_doc("the IL-2 gene is expressed"))
    assert sorted(spans_of(doc.spans["gold"])) == [(1, 2, "protein"), (1, 3, "DNA")]
    # doc.ents holds one of the two: a flat decoding cannot hold both
    assert spans_of(doc.ents) in ([(1, 3, "DNA")], [(1, 2, "protein")])
    assert scores["ents_f"] < 1.0
