"""Pipeline loading and output records shared by the command line and other engines."""

from __future__ import annotations

import pytest
import spacy
from spacy.language import Language
from spacy.tokens import Doc

from luke_spacy.loading import load_pipeline
from luke_spacy.model import CheckpointError
from luke_spacy.records import doc_to_record, error_record, run_isolated

TEXT = "Peter lives in Paris ."


@Language.component("fragile_for_tests")
def fragile(doc: Doc) -> Doc:
    """A component that raises on one text."""
    if "BOOM" in doc.text:
        raise RuntimeError("BOOM")
    return doc


@pytest.fixture(scope="module")
def saved_pipeline(tiny_luke, tmp_path_factory):
    nlp = spacy.blank("en")
    nlp.add_pipe("luke_ner", name="ner_a", config={"model": {"name": str(tiny_luke)}})
    nlp.get_pipe("ner_a").initialize(nlp=nlp)
    path = tmp_path_factory.mktemp("pipelines") / "saved"
    nlp.to_disk(path)
    return path


def test_saved_pipeline_overrides_are_config(saved_pipeline):
    overrides = {"context": "sentence", "max_batch_items": 2048, "dtype": "bfloat16"}
    nlp, spans_keys = load_pipeline(pipeline=str(saved_pipeline), overrides=overrides)
    assert nlp.pipe_names == ["sentencizer", "ner_a"] and spans_keys == ["luke_ner"]
    config = nlp.config["components"]["ner_a"]
    assert {key: config[key] for key in overrides} == overrides
    assert nlp.get_pipe("ner_a").cfg["context"] == "sentence"
    # Validated like any config: by type, then by the component's own checks.
    with pytest.raises(ValueError, match="max_batch_items"):
        load_pipeline(pipeline=str(saved_pipeline), overrides={"max_batch_items": "many"})
    with pytest.raises(ValueError, match="context.*'document', 'sentence'"):
        load_pipeline(pipeline=str(saved_pipeline), overrides={"context": "paragraph"})


def test_blank_pipeline_and_errors(tiny_luke, tmp_path):
    nlp, spans_keys = load_pipeline(model=str(tiny_luke), overrides={"spans_key": "ents"})
    assert nlp.pipe_names == ["sentencizer", "luke_ner"] and spans_keys == ["ents"]
    nlp, _ = load_pipeline(model=str(tiny_luke), sentencizer=False)
    assert nlp.pipe_names == ["luke_ner"]
    with pytest.raises(ValueError, match="not both"):
        load_pipeline(model=str(tiny_luke), pipeline=str(tmp_path))
    with pytest.raises(CheckpointError, match="is not a folder"):
        load_pipeline(model=str(tmp_path / "missing"))
    with pytest.raises(OSError, match="cannot load the pipeline"):
        load_pipeline(pipeline=str(tmp_path / "missing"))
    spacy.blank("en").to_disk(tmp_path / "no_luke")
    with pytest.raises(ValueError, match="has no luke_ner component"):
        load_pipeline(pipeline=str(tmp_path / "no_luke"))


def test_records_and_isolated_failures(tiny_luke):
    nlp, spans_keys = load_pipeline(model=str(tiny_luke))

    nlp.add_pipe("fragile_for_tests", first=True)
    docs = run_isolated(nlp, [TEXT, "BOOM .", TEXT])
    assert isinstance(docs[1], RuntimeError)
    first, last = (doc_to_record(doc, spans_keys, {"id": 1}) for doc in (docs[0], docs[2]))
    assert first == last and first["text"] == TEXT and first["meta"] == {"id": 1}
    assert all(ent["score"] is not None for ent in first["entities"])
    assert run_isolated(nlp, []) == []
    assert error_record("bad", "f:1") == {"text": None, "error": "bad", "source": "f:1"}
