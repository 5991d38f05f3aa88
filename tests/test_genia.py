"""GENIA reading and conversion (luke_spacy.genia) and its scorer (benchmarks/genia_score.py)."""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import pytest
from conftest import shared_path
from spacy.tokens import DocBin
from spacy.vocab import Vocab

from luke_spacy.conll import CountMismatch
from luke_spacy.genia import (
    PUBLISHED_COUNTS,
    SPANS_KEY,
    GeniaFormatError,
    check_counts,
    convert,
    corpus_counts,
    flat_projection,
    inner_entities,
    main,
    make_doc,
    parse_genia,
    read_genia,
)

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
# benchmarks/ scripts import their neighbours (common.py) as top-level modules.
sys.path.insert(0, str(BENCHMARKS))


def mention(tokens, start, end, label):
    return {"start": start, "end": end, "entity_type": label, "text": " ".join(tokens[start:end])}


def record(doc_id, n, tokens, *entities):
    return json.dumps(
        {
            "tokens": tokens,
            "doc_id": doc_id,
            "sent_id": f"{doc_id}-{n}",
            "entity_mentions": [mention(tokens, *e) for e in entities],
        }
    )


S1 = "IL-2 gene expression requires NF-kappa B .".split()
S2 = "Human T cells express it .".split()
S3 = "The c-fos promoter binds .".split()
# Document A: "IL-2 gene" (DNA) holds "IL-2" (protein); "NF-kappa B" twice, with two types;
# "Human T cells" (cell_type) holds "T cells" (cell_type). Document B: one nested pair.
SAMPLE = "\n".join(
    [
        record("A", 0, S1, (0, 2, "DNA"), (0, 1, "protein"), (4, 6, "protein"), (4, 6, "DNA")),
        record("A", 1, S2, (0, 3, "cell_type"), (1, 3, "cell_type")),
        "",
        record("B", 0, S3, (1, 3, "DNA"), (1, 2, "DNA")),
    ]
)


def test_parse_groups_sentences_by_document():
    docs = parse_genia(SAMPLE.splitlines())
    assert [d.doc_id for d in docs] == ["A", "B"]
    assert [len(d.sentences) for d in docs] == [2, 1]
    assert docs[0].words == S1 + S2
    # Entities of later sentences are shifted to document offsets.
    assert docs[0].entities[-2:] == [(7, 10, "cell_type"), (8, 10, "cell_type")]


def test_parse_refuses_split_documents():
    lines = [record("A", 0, S1), record("B", 0, S3), record("A", 1, S2)]
    with pytest.raises(GeniaFormatError, match="'A' are not consecutive"):
        parse_genia(lines, source="f")


@pytest.mark.parametrize(
    "entity,message",
    [
        ({"start": 2, "end": 9, "entity_type": "DNA"}, "outside the sentence"),
        ({"start": 1, "end": 1, "entity_type": "DNA"}, "outside the sentence"),
        ({"start": 0, "end": 1, "entity_type": "DNA", "text": "gene"}, "its text is 'gene'"),
    ],
)
def test_parse_refuses_bad_mentions(entity, message):
    line = json.dumps({"tokens": S3, "doc_id": "B", "entity_mentions": [entity]})
    with pytest.raises(GeniaFormatError, match=message):
        parse_genia([line], source="f")


@pytest.mark.parametrize(
    "line,message",
    [
        ('["not", "an", "object"]', "f:1: not a JSON object"),
        ('{"doc_id": "B", "tokens": "IL-2 gene", "entity_mentions": []}', "not a list of strings"),
        ('{"doc_id": "B", "tokens": ["a"], "entity_mentions": {}}', "'entity_mentions' is not a"),
        ('{"doc_id": "B", "tokens": ["a"], "entity_mentions": [{"start": 0}]}', "without 'start'"),
        ('{"doc_id": "B", "tokens": ["a"], "entity_mentions": [7]}', "without 'start'"),
        (
            '{"doc_id": "B", "tokens": ["a"], "entity_mentions": '
            '[{"start": "0", "end": 1, "entity_type": "DNA"}]}',
            "offsets are not integers",
        ),
        (
            '{"doc_id": "B", "tokens": ["a"], "entity_mentions": '
            '[{"start": 0, "end": 1, "entity_type": null}]}',
            "entity type is not a name",
        ),
    ],
)
def test_parse_refuses_damaged_lines_by_place(line, message):
    """A damaged line is a GeniaFormatError naming the file and line (the converter prints
    it as one line), never a KeyError or TypeError."""
    with pytest.raises(GeniaFormatError, match=message) as err:
        parse_genia([line], source="f")
    assert str(err.value).startswith("f:1: ")


def test_flat_projection_keeps_outermost_then_first():
    entities = [(0, 1, "protein"), (0, 2, "DNA"), (4, 6, "protein"), (4, 6, "DNA"), (5, 6, "X")]
    assert flat_projection(entities) == [(0, 2, "DNA"), (4, 6, "protein")]


def test_flat_projection_of_crossing_spans_prefers_the_longer():
    assert flat_projection([(0, 2, "A"), (1, 4, "B"), (4, 5, "C")]) == [(1, 4, "B"), (4, 5, "C")]
    # Equal length: the earlier start wins.
    assert flat_projection([(1, 3, "B"), (0, 2, "A")]) == [(0, 2, "A")]


def test_inner_entities():
    entities = [(0, 2, "DNA"), (0, 1, "protein"), (4, 6, "protein"), (4, 6, "DNA"), (3, 7, "X")]
    # A span with two types is not inside itself, but both lie inside (3, 7).
    assert inner_entities(entities) == [(0, 1, "protein"), (4, 6, "protein"), (4, 6, "DNA")]
    assert inner_entities([(0, 1, "A"), (1, 2, "B")]) == []


def test_make_doc_has_nested_spans_flat_ents_and_sentences():
    document = parse_genia(SAMPLE.splitlines())[0]
    doc = make_doc(Vocab(), document)
    assert [s.text for s in doc.sents] == [" ".join(S1), " ".join(S2)]
    gold = [(s.start, s.end, s.label_) for s in doc.spans[SPANS_KEY]]
    assert gold == document.entities
    assert [(e.start, e.end, e.label_) for e in doc.ents] == [
        (0, 2, "DNA"),
        (4, 6, "protein"),
        (7, 10, "cell_type"),
    ]
    assert doc.user_data["doc_id"] == "A"


def test_corpus_counts():
    docs = [make_doc(Vocab(), d, spans_key="k") for d in parse_genia(SAMPLE.splitlines())]
    counts = corpus_counts(docs, spans_key="k")
    assert counts["documents"] == 2 and counts["sentences"] == 3
    assert counts["tokens"] == len(S1) + len(S2) + len(S3)
    assert counts["entities"] == 8 and counts["flat_ents"] == 4
    assert counts["dropped_by_flat_projection"] == 4
    assert counts["inner"] == 3
    assert counts["inner_per_type"] == {"DNA": 1, "cell_type": 1, "protein": 1}
    assert counts["same_span_other_type"] == 1
    assert counts["DNA"] == 4 and counts["protein"] == 2 and counts["RNA"] == 0
    assert counts["entity_lengths"] == {"1": 2, "2": 5, "3": 1}


def test_convert_round_trips_and_holds_out_dev_documents(tmp_path):
    (tmp_path / "dev.jsonlines").write_text(SAMPLE + "\n")
    (tmp_path / "test.jsonlines").write_text(record("C", 0, S3, (1, 2, "DNA")) + "\n")
    counts = convert(tmp_path, tmp_path / "out", holdout_docs=1, check=False)
    assert sorted(counts) == ["dev", "dev-holdout", "dev-train", "test"]
    vocab = Vocab()
    dev = list(DocBin().from_disk(tmp_path / "out" / "dev.spacy").get_docs(vocab))
    expected = [make_doc(vocab, d) for d in read_genia(tmp_path / "dev.jsonlines")]
    for got, want in zip(dev, expected):
        assert [t.text for t in got] == [t.text for t in want]
        assert [t.is_sent_start for t in got] == [t.is_sent_start for t in want]
        assert [(s.start, s.end, s.label_) for s in got.spans[SPANS_KEY]] == [
            (s.start, s.end, s.label_) for s in want.spans[SPANS_KEY]
        ]
        assert [(e.start, e.end, e.label_) for e in got.ents] == [
            (e.start, e.end, e.label_) for e in want.ents
        ]
        # Unknown spaces: spaCy's Corpus keeps these words as the predicted tokens.
        assert got.has_unknown_spaces
    train = list(DocBin().from_disk(tmp_path / "out" / "dev-train.spacy").get_docs(vocab))
    held = list(DocBin().from_disk(tmp_path / "out" / "dev-holdout.spacy").get_docs(vocab))
    assert [d.user_data["doc_id"] for d in train] == ["A"]
    assert [d.user_data["doc_id"] for d in held] == ["B"]
    saved = json.loads((tmp_path / "out" / "counts.json").read_text())
    assert saved["counts"]["test"]["entities"] == 1 and saved["spans_key"] == SPANS_KEY


def test_convert_checks_counts(tmp_path):
    (tmp_path / "dev.jsonlines").write_text(SAMPLE + "\n")
    with pytest.raises(CountMismatch, match="documents: got 2, expected 199"):
        convert(tmp_path, tmp_path / "out")
    with pytest.raises(ValueError, match="leaves no dev document"):
        convert(tmp_path, tmp_path / "out", holdout_docs=2, check=False)


def test_cli(tmp_path, capsys):
    (tmp_path / "dev.jsonlines").write_text(SAMPLE + "\n")
    assert main([str(tmp_path), str(tmp_path / "out"), "--max-docs", "1"]) == 0
    out = capsys.readouterr().out
    assert "dev: documents 1, sentences 2" in out and "not compared" in out
    assert main([str(tmp_path / "missing"), str(tmp_path / "out")]) == 1
    assert "No GENIA files" in capsys.readouterr().err


def test_real_files_match_the_published_counts(tmp_path):
    genia = shared_path("genia")
    counts = convert(genia, tmp_path, holdout_docs=20)
    for split, expected in PUBLISHED_COUNTS.items():
        check_counts(split, counts[split])
        assert (
            counts[split]["flat_ents"] + counts[split]["dropped_by_flat_projection"]
            == (expected["entities"])
        )
    # No crossing entities in GENIA: the projection drops exactly the inner entities and the
    # second type of a span annotated twice (one such span is itself inner in dev).
    assert counts["dev"]["dropped_by_flat_projection"] == 447
    assert counts["test"]["dropped_by_flat_projection"] == 608
    assert counts["dev-train"]["documents"] + counts["dev-holdout"]["documents"] == 199


def test_score_entities_counts_inner_recall_apart():
    score = runpy.run_path(str(BENCHMARKS / "genia_score.py"))["score_entities"]
    gold = [[(0, 2, "DNA"), (0, 1, "protein"), (4, 6, "protein")], [(1, 3, "DNA"), (1, 2, "DNA")]]
    pred = [[(0, 2, "DNA"), (4, 6, "DNA"), (0, 1, "protein")], [(1, 3, "DNA")]]
    result = score(gold, pred)
    assert (result["tp"], result["predicted"], result["gold"]) == (3, 4, 5)
    assert result["p"] == pytest.approx(0.75) and result["r"] == pytest.approx(0.6)
    assert result["inner"] == {"recall": 0.5, "tp": 1, "gold": 2}
    assert result["outer"] == {"recall": pytest.approx(2 / 3), "tp": 2, "gold": 3}
    assert result["per_type"]["protein"]["r"] == 0.5
    assert result["per_type"]["DNA"]["p"] == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="2 gold documents but 1 predicted"):
        score(gold, pred[:1])
