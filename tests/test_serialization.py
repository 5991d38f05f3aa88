"""Saving and loading pipelines with `luke_ner`: weights travel with the pipeline."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy
import pytest
import spacy
from conftest import make_nlp
from spacy import util

from luke_spacy.settings import NerSettings

TEXTS = [
    "She met Barack Obama in Paris !",
    "Beyoncé lives in Los Angeles . EU rejects German call to boycott British lamb .",
    "Peter Blackburn BRUSSELS 1996-08-22",
]


def outputs(nlp):
    pipe = nlp.get_pipe("luke_ner")
    docs = [nlp(t) for t in TEXTS]
    scores = pipe.span_scores([nlp.make_doc(t) for t in TEXTS])
    return [[(e.start, e.end, e.label_) for e in d.ents] for d in docs], scores


def assert_same(a, b):
    ents_a, scores_a = a
    ents_b, scores_b = b
    assert ents_a == ents_b
    assert any(ents_a)
    for x, y in zip(scores_a, scores_b):
        assert x.spans.tolist() == y.spans.tolist()
        numpy.testing.assert_array_equal(x.logits, y.logits)


@pytest.fixture()
def private_checkpoint(tiny_luke, tmp_path):
    """A copy of the tiny checkpoint that a test may delete."""
    return shutil.copytree(tiny_luke, tmp_path / "private_ckpt")


@pytest.fixture()
def no_network(monkeypatch, tmp_path):
    """Block sockets and point the Hugging Face cache at an empty folder."""

    def refuse(*args, **kwargs):
        raise OSError("network access in a test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    empty = tmp_path / "empty_hf_home"
    empty.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(empty))
    monkeypatch.setenv("HF_HUB_CACHE", str(empty / "hub"))
    return empty


def test_to_disk_from_disk(tiny_luke, tmp_path):
    nlp = make_nlp(tiny_luke)
    before = outputs(nlp)
    nlp.to_disk(tmp_path / "pipeline")
    model_dir = tmp_path / "pipeline" / "luke_ner" / "model"
    assert (model_dir / "model.safetensors").is_file()
    assert (model_dir / "config.json").is_file()
    for name in ("vocab.json", "merges.txt", "entity_vocab.json", "tokenizer_config.json"):
        assert (model_dir / name).is_file(), name
    assert not list(model_dir.glob("*.bin"))
    # into a fresh component of the same config
    other = make_nlp(tiny_luke).from_disk(tmp_path / "pipeline")
    assert_same(before, outputs(other))
    # and through spacy.load
    assert_same(before, outputs(spacy.load(tmp_path / "pipeline")))


def test_to_bytes_from_bytes(tiny_luke):
    nlp = make_nlp(tiny_luke)
    before = outputs(nlp)
    data = nlp.to_bytes()
    other = make_nlp(tiny_luke).from_bytes(data)
    assert_same(before, outputs(other))
    pipe_data = nlp.get_pipe("luke_ner").to_bytes()
    other = make_nlp(tiny_luke)
    other.get_pipe("luke_ner").from_bytes(pipe_data)
    assert_same(before, outputs(other))
    assert other.get_pipe("luke_ner").labels == nlp.get_pipe("luke_ner").labels


def test_from_bytes_uses_the_saved_weights_not_the_named_checkpoint(
    tiny_luke, private_checkpoint, tmp_path
):
    nlp = make_nlp(private_checkpoint)
    before = outputs(nlp)
    data = nlp.to_bytes()
    shutil.rmtree(private_checkpoint)
    # spaCy's way to restore bytes: build from the config, then load (the named folder is gone,
    # so add_pipe itself would refuse it).
    other = util.get_lang_class("en").from_config(nlp.config).from_bytes(data)
    assert_same(before, outputs(other))


def test_mluke_round_trip(tiny_mluke, tmp_path):
    nlp = make_nlp(tiny_mluke)
    before = outputs(nlp)
    nlp.to_disk(tmp_path / "mluke")
    assert (tmp_path / "mluke" / "luke_ner" / "model" / "model.safetensors").is_file()
    loaded = spacy.load(tmp_path / "mluke")
    assert_same(before, outputs(loaded))
    assert loaded.get_pipe("luke_ner").labels == ("LOC", "PER", "ORG", "MISC")
    from_bytes = make_nlp(tiny_mluke).from_bytes(nlp.to_bytes())
    assert_same(before, outputs(from_bytes))


def test_spacy_load_offline(private_checkpoint, tmp_path, no_network):
    nlp = make_nlp(private_checkpoint, max_mention_length=8, context="sentence")
    before = outputs(nlp)
    nlp.to_disk(tmp_path / "pipeline")
    # the checkpoint the config names is gone: only the saved folder can provide weights
    shutil.rmtree(private_checkpoint)
    with pytest.raises(OSError, match="network"):
        socket.create_connection(("huggingface.co", 443))
    loaded = spacy.load(tmp_path / "pipeline")
    pipe = loaded.get_pipe("luke_ner")
    assert pipe.cfg["max_mention_length"] == 8 and pipe.cfg["context"] == "sentence"
    assert_same(before, outputs(loaded))
    assert not any(no_network.iterdir()), "nothing was written to the HF cache"


CONFIG = """
[nlp]
lang = "en"
pipeline = ["luke_ner"]

[components]

[components.luke_ner]
factory = "luke_ner"
max_mention_length = 12

[components.luke_ner.model]
name = "{name}"
"""


@pytest.mark.slow  # a subprocess that imports torch and spaCy: ~15 s
def test_config_round_trip_with_spacy_assemble(private_checkpoint, tmp_path):
    config = tmp_path / "config.cfg"
    config.write_text(CONFIG.format(name=private_checkpoint.as_posix()))
    out = tmp_path / "assembled"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "spacy", "assemble", str(config), str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert (out / "luke_ner" / "model" / "model.safetensors").is_file()
    expected = outputs(make_nlp(private_checkpoint, max_mention_length=12))
    shutil.rmtree(private_checkpoint)
    nlp = spacy.load(out)
    assert nlp.pipe_names == ["luke_ner"]
    assert nlp.get_pipe("luke_ner").cfg["max_mention_length"] == 12
    assert nlp.config["components"]["luke_ner"]["model"]["@architectures"] == (
        "luke_spacy.LukeSpanClassifier.v1"
    )
    assert_same(expected, outputs(nlp))


def test_load_time_config_overrides_are_applied(tiny_luke, tmp_path):
    nlp = make_nlp(tiny_luke, max_mention_length=8)
    nlp.initialize()
    nlp.to_disk(tmp_path / "pipeline")
    overrides = {"components": {"luke_ner": {"max_mention_length": 2, "context": "sentence"}}}
    loaded = spacy.load(tmp_path / "pipeline", config=overrides)
    assert loaded.config["components"]["luke_ner"]["max_mention_length"] == 2
    pipe = loaded.get_pipe("luke_ner")
    # what the component does must follow the config it reports
    assert pipe.cfg["max_mention_length"] == 2
    assert pipe.cfg["context"] == "sentence"


SAVED_BY_94AFFBC = Path(__file__).resolve().parent / "data" / "pipeline-94affbc"


def test_a_pipeline_saved_by_an_earlier_version_loads_unchanged(tmp_path, no_network):
    """A pipeline folder that luke_spacy 94affbc wrote (tests/data/README.md), whose config
    names a checkpoint folder that is gone, loads offline and gives the entities and scores
    that version gave; saving it again writes the same cfg and checkpoint files."""
    expected = json.loads((SAVED_BY_94AFFBC / "expected.json").read_text(encoding="utf8"))
    saved = SAVED_BY_94AFFBC / "pipeline"
    nlp = spacy.load(saved)
    assert not Path(nlp.config["components"]["luke_ner"]["model"]["name"]).exists()
    assert nlp.get_pipe("luke_ner").labels == tuple(expected["labels"])
    for text, ents, scores in zip(expected["texts"], expected["entities"], expected["scores"]):
        doc = nlp(text)
        assert [[e.start, e.end, e.label_] for e in doc.ents] == ents
        numpy.testing.assert_allclose(doc.spans["luke_ner"].attrs["scores"], scores, atol=1e-6)
    assert sum(map(len, expected["entities"])) > 20
    nlp.to_disk(tmp_path / "again")
    old, new = saved / "luke_ner", tmp_path / "again" / "luke_ner"
    new_cfg, old_cfg = (json.loads((f / "cfg").read_text()) for f in (new, old))
    assert {key: new_cfg[key] for key in old_cfg} == old_cfg
    # settings added since then are saved with their defaults
    added = {key: value for key, value in new_cfg.items() if key not in old_cfg}
    assert added == {key: NerSettings().to_dict()[key] for key in added}
    names = [sorted(p.name for p in (folder / "model").iterdir()) for folder in (old, new)]
    assert names[0] == names[1] and "model.safetensors" in names[0]


@pytest.fixture()
def umask_027():
    """A umask that lets the group read and others nothing: new files are 0640."""
    old = os.umask(0o027)
    yield 0o640
    os.umask(old)


def test_weights_get_the_permissions_of_new_files(tiny_luke, tmp_path, capsys, umask_027):
    # Issue 17 item 11: safetensors wrote model.safetensors 0600, whatever the umask, so a
    # pipeline shared with others (or Ray workers under another account) could not load it.
    from luke_spacy.cli import main

    nlp = make_nlp(tiny_luke)
    nlp.initialize()
    nlp.to_disk(tmp_path / "pipeline")
    assert main(["random-model", str(tmp_path / "random")]) == 0, capsys.readouterr().err
    for folder in (tmp_path / "pipeline" / "luke_ner" / "model", tmp_path / "random"):
        modes = {p.name: p.stat().st_mode & 0o777 for p in folder.iterdir()}
        assert modes["model.safetensors"] == umask_027, modes
        assert set(modes.values()) == {umask_027}, modes  # every file alike
