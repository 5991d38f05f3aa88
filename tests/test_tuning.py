"""Per-label thresholds and a temperature tuned on a dev corpus (luke_spacy.tuning), and the
`luke-spacy tune-thresholds` command on a tiny model and corpus."""

from __future__ import annotations

import json

import numpy
import pytest
import spacy
from conftest import make_nlp
from spacy.tokens import DocBin, Span, SpanGroup

from luke_spacy.cli import main
from luke_spacy.decoding import decode_sentence, label_thresholds
from luke_spacy.tuning import (
    Decoding,
    ScoredCorpus,
    Tuner,
    _grid,
    candidate_targets,
    expected_calibration_error,
    fit_temperature,
    score_corpus,
    tune_thresholds,
)

LABELS = ["NIL", "A", "B"]


def test_expected_calibration_error():
    # two bins: 0.9 (half right: |0.5 - 0.9|) and 0.1 (none right: |0 - 0.1|), half each
    assert expected_calibration_error([0.9, 0.9, 0.1, 0.1], [1, 0, 0, 0]) == pytest.approx(0.25)
    assert expected_calibration_error([1.0, 1.0], [1, 1]) == 0.0  # 1.0 falls in the last bin
    assert expected_calibration_error([], []) == 0.0


def random_corpus(seed, n_docs=40, scale=1.0, labels=LABELS):
    """Docs of disjoint one-word candidate spans with random logits (so the flat decoding is
    every span's argmax), gold drawn from softmax(logits / scale)."""
    rng = numpy.random.default_rng(seed)
    spans, logits, gold, all_targets = [], [], [], []
    for _ in range(n_docs):
        n = 50
        z = rng.normal(scale=2.0, size=(n, len(labels)))
        p = numpy.exp(z - z.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        targets = [rng.choice(len(labels), p=row) for row in p]
        doc_spans = numpy.asarray([(i, i + 1) for i in range(n)])
        spans.append(doc_spans)
        logits.append(z * scale)
        gold.append({(i, i + 1, labels[t]) for i, t in enumerate(targets) if t})
        all_targets.append(numpy.asarray(targets))
    return ScoredCorpus(spans, logits, gold, list(labels), all_targets)


def test_fit_temperature_recovers_the_scale_of_the_logits():
    corpus = random_corpus(0, scale=3.0)
    assert fit_temperature(corpus) == pytest.approx(3.0, rel=0.1)
    assert fit_temperature(random_corpus(1, scale=0.5)) == pytest.approx(0.5, rel=0.1)


def test_tuning_finds_the_thresholds_the_gold_was_made_with():
    """Gold = the flat decoding under {A: 0.6} (B unthresholded) of overlapping spans: tuning
    from 0.0 reaches F1 1.0 for both labels, and B, which gains nothing, keeps 0.0."""
    rng = numpy.random.default_rng(5)
    spans, logits, gold = [], [], []
    cuts = label_thresholds({"A": 0.6}, LABELS)
    for _ in range(30):
        n_words = 12
        doc_spans = numpy.asarray(
            [(i, j) for i in range(n_words) for j in range(i + 1, min(n_words, i + 3) + 1)]
        )
        z = rng.normal(scale=2.0, size=(len(doc_spans), 3))
        found, ids, _ = decode_sentence(doc_spans, z, threshold=cuts)
        spans.append(doc_spans)
        logits.append(z)
        gold.append({(s, e, LABELS[i]) for (s, e), i in zip(found.tolist(), ids.tolist())})
    tuner = Tuner(ScoredCorpus(spans, logits, gold, LABELS, targets=[]))  # no temperature
    start = Decoding({"A": 0.0, "B": 0.0})
    before = tuner.outcome(start)
    assert before.per_label["A"].f < 1.0
    grid = [round(0.05 * i, 2) for i in range(20)]
    table = tune_thresholds(tuner, start, grid)
    assert table["B"] == 0.0 and 0.0 < table["A"] <= 0.6
    after = tuner.outcome(Decoding(table))
    assert after.per_label["A"].f == after.per_label["B"].f == 1.0
    # the nested decoding of the same candidates is tuned the same way
    nested = tuner.outcome(Decoding(table, nested=True))
    assert nested.overall.predicted >= after.overall.predicted


# -- the command --------------------------------------------------------------------------


TEXTS = [
    "Peter Blackburn met Angela Merkel in New York City on Monday .",
    "The European Commission said on Thursday it disagreed with German advice .",
    "Germany 's representative to the European Union 's veterinary committee spoke .",
    "Fischler proposed EU-wide measures after reports from Britain and France .",
] * 2


def pipeline_and_gold(tiny_luke, tmp_path, **settings):
    """The tiny pipeline saved to disk, and a dev corpus whose gold is that pipeline's output
    with the first entity's label thresholded at 0.6."""
    nlp = make_nlp(tiny_luke, **settings)
    docs = list(nlp.pipe(TEXTS))
    nlp.to_disk(tmp_path / "pipeline")
    label = docs[0].ents[0].label_
    strict = make_nlp(tiny_luke, threshold={label: 0.6}, **settings)
    gold = list(strict.pipe(TEXTS))
    assert sum(len(d.ents) for d in gold) < sum(len(d.ents) for d in docs)
    return label, gold


def run(capsys, *argv):
    code = main(["tune-thresholds", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def test_tune_thresholds_command(tiny_luke, tmp_path, capsys):
    label, gold = pipeline_and_gold(tiny_luke, tmp_path)
    for doc in gold:
        del doc.spans["luke_ner"]
    DocBin(docs=gold).to_disk(tmp_path / "dev.spacy")
    pipeline, out, scores = tmp_path / "pipeline", tmp_path / "tuned", tmp_path / "scores.json"
    code, stdout, err = run(capsys, pipeline, tmp_path / "dev.spacy", out, "--scores", scores)
    assert code == 0, err
    assert "doc.ents before" in stdout and "doc.ents after" in stdout
    report = json.loads(scores.read_text())
    assert report["before"]["per_label"]["(all)"]["f"] < 1.0
    assert report["after"]["per_label"]["(all)"]["f"] == 1.0
    assert report["after"]["per_label"][label]["f"] == 1.0
    table = report["settings"]["threshold"]
    assert 0.0 < table[label] <= 0.6 and set(table) == set(report["after"]["per_label"]) - {"(all)"}
    # OUT is the pipeline with the table in its config (and its component's cfg)
    tuned = spacy.load(out)
    assert tuned.get_pipe("luke_ner").settings.threshold == table
    assert "[components.luke_ner.threshold]" in (out / "config.cfg").read_text()
    assert json.loads((out / "luke_ner" / "cfg").read_text())["threshold"] == table
    for doc, ref in zip(tuned.pipe(TEXTS), gold):
        assert [(e.start, e.end, e.label_) for e in doc.ents] == [
            (e.start, e.end, e.label_) for e in ref.ents
        ]
    # an existing OUT is never overwritten without --force; the pipeline itself never
    code, _, err = run(capsys, pipeline, tmp_path / "dev.spacy", out)
    assert code == 2 and "already holds files" in err and "--force" in err
    code, _, err = run(capsys, pipeline, tmp_path / "dev.spacy", pipeline, "--force")
    assert code == 2 and "the pipeline itself" in err
    # --temperature: one temperature fitted first, the calibration error before and after
    code, stdout, err = run(
        capsys, pipeline, tmp_path / "dev.spacy", out, "--force", "--temperature",
        "--scores", scores,
    )  # fmt: skip
    assert code == 0, err
    calibration = json.loads(scores.read_text())["calibration"]
    assert calibration["temperature"] > 0 and calibration["nll_after"] <= calibration["nll_before"]
    assert "expected calibration error" in stdout
    assert spacy.load(out).get_pipe("luke_ner").settings.temperature == calibration["temperature"]


def test_tune_thresholds_for_the_nested_group(tiny_luke, tmp_path, capsys):
    label, gold = pipeline_and_gold(tiny_luke, tmp_path, nested_spans_key="nested")
    for doc in gold:
        nested = doc.spans["nested"]
        doc.spans["nested"] = SpanGroup(doc, spans=list(nested))  # without scores
        doc.ents = []  # nothing flat: the nested group is the gold
    DocBin(docs=gold).to_disk(tmp_path / "dev.spacy")
    scores = tmp_path / "scores.json"
    argv = [tmp_path / "pipeline", tmp_path / "dev.spacy", tmp_path / "out", "--scores", scores]
    code, stdout, err = run(capsys, *argv, "--target", "nested")
    assert code == 0, err
    assert "doc.spans['nested'] after" in stdout
    report = json.loads(scores.read_text())
    assert report["after"]["per_label"]["(all)"]["f"] == 1.0
    assert 0.0 < report["settings"]["threshold"][label] <= 0.6
    # the flat target has no gold here
    code, _, err = run(capsys, *argv[:2], tmp_path / "out2")
    assert code == 2 and "no gold entities in doc.ents" in err


def test_tune_thresholds_nested_needs_the_nested_group(tiny_luke, tmp_path, capsys):
    nlp = make_nlp(tiny_luke)
    nlp.initialize()
    nlp.to_disk(tmp_path / "pipeline")
    DocBin(docs=[]).to_disk(tmp_path / "dev.spacy")
    argv = [tmp_path / "pipeline", tmp_path / "dev.spacy", tmp_path / "out", "--target", "nested"]
    code, _, err = run(capsys, *argv)
    assert code == 2 and "no nested_spans_key" in err


def test_grid_keeps_every_step_below_one():
    assert _grid(0.3, positive=False) == [0.0, 0.3, 0.6, 0.9]
    assert _grid(0.4, positive=False) == [0.0, 0.4, 0.8]
    assert _grid(0.25, positive=True) == [0.25, 0.5, 0.75]
    assert _grid(0.05, positive=False) == [round(0.05 * i, 2) for i in range(20)]


def test_tune_thresholds_keeps_the_pipelines_nil_veto(tiny_luke, tmp_path, capsys):
    nlp = make_nlp(tiny_luke, nil_veto=False, threshold=0.3)
    gold = list(nlp.pipe(TEXTS))
    for doc in gold:
        del doc.spans["luke_ner"]
    nlp.to_disk(tmp_path / "pipeline")
    DocBin(docs=gold).to_disk(tmp_path / "dev.spacy")
    argv = [tmp_path / "pipeline", tmp_path / "dev.spacy", tmp_path / "out", "--step", "0.25"]
    code, stdout, err = run(capsys, *argv)
    assert code == 0, err
    assert "nil_veto = false" in stdout
    assert spacy.load(tmp_path / "out").get_pipe("luke_ner").settings.nil_veto is False
    code, stdout, err = run(capsys, *argv, "--force", "--nil-veto")
    assert code == 0, err
    assert spacy.load(tmp_path / "out").get_pipe("luke_ner").settings.nil_veto is True


def test_tune_thresholds_refuses_a_scores_file_it_would_damage(tiny_luke, tmp_path, capsys):
    nlp = make_nlp(tiny_luke)
    nlp.initialize()
    nlp.to_disk(tmp_path / "pipeline")
    dev = tmp_path / "dev.spacy"
    DocBin(docs=[]).to_disk(dev)
    before = dev.read_bytes()
    out = tmp_path / "out"
    (tmp_path / "taken.json").write_text("mine")
    for scores, message in [
        (dev, "is the dev corpus"),
        (tmp_path / "." / "dev.spacy", "is the dev corpus"),
        (tmp_path / "pipeline" / "config.cfg", "inside PIPELINE"),
        (tmp_path / "pipeline" / "new.json", "inside PIPELINE"),
        (out / "scores.json", "inside OUT"),
        (tmp_path / "taken.json", "already exists"),
        (tmp_path / "nowhere" / "scores.json", "there is no folder"),
    ]:
        code, stdout, err = run(capsys, tmp_path / "pipeline", dev, out, "--scores", scores)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
        assert stdout == "" and not out.exists()  # before any work
    assert dev.read_bytes() == before
    assert (tmp_path / "taken.json").read_text() == "mine"


def test_temperature_targets_are_the_training_targets(tiny_luke, tmp_path):
    """A span with two gold labels is the first one's, as in training (not alphabetical)."""
    nlp = make_nlp(tiny_luke, nested_spans_key="nested")
    nlp.initialize()
    labels = ["NIL", *nlp.get_pipe("luke_ner").labels]
    first, second = sorted(labels[1:])[1], sorted(labels[1:])[0]  # group order != alphabetical
    doc = nlp.make_doc("Peter Blackburn met Angela Merkel .")
    doc.spans["nested"] = [Span(doc, 0, 2, first), Span(doc, 0, 2, second), Span(doc, 3, 5, first)]
    DocBin(docs=[doc]).to_disk(tmp_path / "dev.spacy")
    corpus = score_corpus(nlp, "luke_ner", str(tmp_path / "dev.spacy"), "nested")
    _, targets = candidate_targets(corpus)
    spans = numpy.concatenate(corpus.spans).tolist()
    by_span = {tuple(span): labels[t] for span, t in zip(spans, targets.tolist())}
    assert by_span[(0, 2)] == first and by_span[(3, 5)] == first
    assert {label for span, label in by_span.items() if span not in {(0, 2), (3, 5)}} == {"NIL"}
