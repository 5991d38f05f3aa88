"""Damaged or unusual checkpoints: a named CheckpointError, never silently wrong entities."""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import socket
import sys
from pathlib import Path
from typing import List

import pytest
import spacy
import torch

from luke_spacy import CheckpointError, cli
from luke_spacy.checkpoint import SETTINGS_NAME
from luke_spacy.model import check_device
from luke_spacy.random_model import build_random_checkpoint

TEXT = "Peter Blackburn met Mary in Paris . EU rejects German call to boycott British lamb ."


def make_nlp(name, **cfg):
    nlp = spacy.blank("en")
    nlp.add_pipe("luke_ner", config={"model": {"name": str(name)}, **cfg})
    return nlp


def ents(nlp):
    return [(e.start, e.end, e.label_) for e in nlp(TEXT).ents]


@pytest.fixture(scope="session")
def saved_pipeline(tiny_luke, tmp_path_factory):
    """A tiny pipeline saved once per session, with its entities on TEXT."""
    nlp = make_nlp(tiny_luke)
    nlp.initialize()
    path = tmp_path_factory.mktemp("saved") / "pipeline"
    nlp.to_disk(path)
    return path, ents(nlp)


@pytest.fixture()
def pipeline_copy(saved_pipeline, tmp_path):
    """A private copy of the saved pipeline that a test may damage."""
    return shutil.copytree(saved_pipeline[0], tmp_path / "pipeline")


def edit_json(file: Path, edit) -> None:
    data = json.loads(file.read_text())
    edit(data)
    file.write_text(json.dumps(data))


def set_labels(*labels):
    def edit(config):
        config["id2label"] = {str(i): label for i, label in enumerate(labels)}
        config["label2id"] = {label: i for i, label in enumerate(labels)}

    return edit


def truncate(file: Path, size: int) -> None:
    file.write_bytes(file.read_bytes()[:size])


def edit_weights(model_dir: Path, edit) -> None:
    """Rewrite model.safetensors with `edit` applied to its tensors (a dict, in place)."""
    from safetensors.torch import load_file, save_file

    file = model_dir / "model.safetensors"
    tensors = load_file(file)
    edit(tensors)
    save_file(tensors, file, metadata={"format": "pt"})


def drop_keys(*prefixes: str):
    def edit(tensors):
        for key in [key for key in tensors if key.startswith(prefixes)]:
            del tensors[key]

    return edit


def set_layers(n: int):
    return lambda m: edit_json(m / "config.json", lambda c: c.update(num_hidden_layers=n))


# damage kind: (what to do to luke_ner/model, the file the error must name, more it must say)
DAMAGES = {
    "weights truncated": (lambda m: truncate(m / "model.safetensors", 3000), "model.safetensors"),
    "weights cut short": (
        lambda m: truncate(m / "model.safetensors", (m / "model.safetensors").stat().st_size - 9),
        "model.safetensors",
    ),
    "weights empty": (lambda m: truncate(m / "model.safetensors", 0), "model.safetensors"),
    "weights garbage": (
        lambda m: (m / "model.safetensors").write_bytes(b"\x00garbage" * 500),
        "model.safetensors",
    ),
    "weights missing": (lambda m: (m / "model.safetensors").unlink(), "model.safetensors"),
    "vocab.json missing": (lambda m: (m / "vocab.json").unlink(), "vocab.json"),
    "merges.txt missing": (lambda m: (m / "merges.txt").unlink(), "merges.txt"),
    "entity vocab missing": (lambda m: (m / "entity_vocab.json").unlink(), "entity_vocab.json"),
    "entity vocab without [MASK]": (
        lambda m: (m / "entity_vocab.json").write_text('{"[PAD]": 0, "[UNK]": 1}'),
        "entity_vocab.json",
    ),
    "config.json missing": (lambda m: (m / "config.json").unlink(), "config.json"),
    "config.json hidden size": (
        lambda m: edit_json(m / "config.json", lambda c: c.update(hidden_size=64)),
        "config.json",
    ),
    "config.json label count": (
        lambda m: edit_json(m / "config.json", set_labels("NIL", "MISC", "PER", "ORG", "LOC", "X")),
        "config.json",
    ),
    "id2label gap": (
        lambda m: edit_json(
            m / "config.json", lambda c: c.update(id2label={"0": "NIL", "1": "PER", "3": "LOC"})
        ),
        "config.json",
    ),
    "label 0 not the no-entity class": (
        lambda m: edit_json(m / "config.json", set_labels("PER", "MISC", "NIL", "ORG", "LOC")),
        "config.json",
    ),
    "labels renamed in config.json": (
        lambda m: edit_json(m / "config.json", set_labels("NIL", "MISC", "PERSON", "ORG", "LOC")),
        "config.json",
    ),
    "tokenizer_config.json missing": (
        lambda m: (m / "tokenizer_config.json").unlink(),
        "tokenizer_config.json",
    ),
    "tokenizer_config.json edited": (
        lambda m: edit_json(
            m / "tokenizer_config.json", lambda c: c.update(add_prefix_space=False)
        ),
        "tokenizer_config.json",
    ),
    # Issue 17 item 4: weights that do not fit the config (transformers only logs these).
    "classifier removed from the weights": (
        lambda m: edit_weights(m, drop_keys("classifier.")),
        "model.safetensors",
    ),
    "num_hidden_layers lowered": (set_layers(1), "model.safetensors"),
    "num_hidden_layers raised": (set_layers(3), "model.safetensors"),
    "a layer's tensors removed": (
        lambda m: edit_weights(m, drop_keys("luke.encoder.layer.1.")),
        "model.safetensors",
    ),
    # Issue 17 item 5: empty BPE files.
    "merges.txt empty": (lambda m: (m / "merges.txt").write_text(""), "merges.txt"),
    "merges.txt header only": (
        lambda m: (m / "merges.txt").write_text("#version: 0.2\n"),
        "merges.txt",
    ),
    "vocab.json empty object": (lambda m: (m / "vocab.json").write_text("{}"), "vocab.json"),
}


@pytest.mark.parametrize("kind", sorted(DAMAGES))
def test_damaged_pipeline_names_the_file(pipeline_copy, kind):
    damage, file = DAMAGES[kind]
    model_dir = pipeline_copy / "luke_ner" / "model"
    damage(model_dir)
    with pytest.raises(CheckpointError) as info:
        spacy.load(pipeline_copy)
    message = str(info.value)
    assert file in message and str(model_dir) in message, message
    assert "hub" not in message, "a local folder's damage is not a download problem"


@pytest.mark.parametrize(
    "kind", ["weights truncated", "config.json label count", "label 0 not the no-entity class"]
)
def test_damaged_checkpoint_folder_fails_at_initialize_or_first_call(pipeline_copy, kind):
    damage, file = DAMAGES[kind]
    model_dir = pipeline_copy / "luke_ner" / "model"
    damage(model_dir)
    with pytest.raises(CheckpointError, match=file):
        make_nlp(model_dir).initialize()
    with pytest.raises(CheckpointError, match=file):
        make_nlp(model_dir)("Paris")


@pytest.mark.parametrize(
    "kind, prefix, what",
    [
        ("classifier removed from the weights", "classifier.", "missing"),
        ("num_hidden_layers lowered", "luke.encoder.layer.1.", "not used"),
        ("num_hidden_layers raised", "luke.encoder.layer.2.", "missing"),
        ("a layer's tensors removed", "luke.encoder.layer.1.", "missing"),
    ],
)
def test_weights_that_do_not_fit_the_config(pipeline_copy, kind, prefix, what):
    # A checkpoint folder as downloaded or written by random-model: loaded for annotation, it
    # names a few keys and counts them; loaded for training with the same labels (the head is
    # kept), too.
    from luke_spacy.checkpoint import safetensors_shapes
    from luke_spacy.model import load_checkpoint

    model_dir = pipeline_copy / "luke_ner" / "model"
    keys = sorted(safetensors_shapes(model_dir / "model.safetensors"))
    if prefix == "luke.encoder.layer.2.":  # a layer the weights never had: layer 1's keys
        keys = [key.replace("layer.1.", "layer.2.") for key in keys]
    keys = [key for key in keys if key.startswith(prefix)]
    more = f" and {len(keys) - 3} more" if len(keys) > 3 else ""
    listed = re.escape(f"{len(keys)} tensor(s) ({', '.join(keys[:3])}{more}) {what}")
    DAMAGES[kind][0](model_dir)
    with pytest.raises(CheckpointError, match=listed) as info:
        make_nlp(model_dir)("Paris")
    assert str(model_dir / "model.safetensors") in str(info.value)
    with pytest.raises(CheckpointError, match=listed):
        load_checkpoint(str(model_dir), labels=["LOC", "MISC", "ORG", "PER"])


def test_a_new_head_needs_no_classifier_in_the_weights(pipeline_copy):
    from luke_spacy.model import load_checkpoint

    model_dir = pipeline_copy / "luke_ner" / "model"
    DAMAGES["classifier removed from the weights"][0](model_dir)
    hf = load_checkpoint(str(model_dir), labels=["ANIMAL", "PLANT"]).transformer
    assert list(hf.config.id2label.values()) == ["NIL", "ANIMAL", "PLANT"]


def test_keys_that_change_no_logit_are_accepted(saved_pipeline, pipeline_copy):
    # What a checkpoint saved by older transformers may hold or lack (the real
    # luke-large-finetuned-conll-2003 was saved by 4.6, with a position_ids buffer): same
    # entities, no error.
    import torch

    def edit(tensors):
        tensors["luke.embeddings.position_ids"] = torch.arange(514).unsqueeze(0)
        drop_keys("luke.pooler.")(tensors)

    model_dir = pipeline_copy / "luke_ner" / "model"
    edit_weights(model_dir, edit)
    assert ents(make_nlp(model_dir)) == saved_pipeline[1]
    assert ents(spacy.load(pipeline_copy)) == saved_pipeline[1]


@pytest.mark.parametrize(
    "kind", ["merges.txt empty", "merges.txt header only", "vocab.json empty object"]
)
def test_empty_bpe_files_are_refused(pipeline_copy, kind):
    # As a downloaded checkpoint: no luke_spacy.json that would catch a changed vocabulary.
    damage, file = DAMAGES[kind]
    model_dir = pipeline_copy / "luke_ner" / "model"
    (model_dir / SETTINGS_NAME).unlink()
    damage(model_dir)
    with pytest.raises(CheckpointError, match="holds no (merges|tokens)") as info:
        make_nlp(model_dir)("Paris")
    assert str(model_dir / file) in str(info.value)


def test_label_count_against_the_weights(pipeline_copy):
    model_dir = pipeline_copy / "luke_ner" / "model"
    DAMAGES["config.json label count"][0](model_dir)
    with pytest.raises(CheckpointError, match=r"classifier\.weight.*\[6, 96\].*\[5, 96\]"):
        make_nlp(model_dir)("Paris")


def test_label_0_message_says_what_it_must_be(pipeline_copy):
    model_dir = pipeline_copy / "luke_ner" / "model"
    DAMAGES["label 0 not the no-entity class"][0](model_dir)
    with pytest.raises(CheckpointError, match="'PER'.*no-entity class.*'NIL'.*'O'"):
        spacy.load(pipeline_copy)


def test_renamed_labels_say_which_files_differ(pipeline_copy):
    DAMAGES["labels renamed in config.json"][0](pipeline_copy / "luke_ner" / "model")
    with pytest.raises(CheckpointError, match=r"PERSON.*differ.*luke_ner[/\\]cfg"):
        spacy.load(pipeline_copy)
    # the same when the cfg is the edited one
    cfg = pipeline_copy / "luke_ner" / "cfg"
    edit_json(cfg, lambda c: c.update(labels=["NIL", "MISC", "PERSON", "ORG", "LOC"]))
    edit_json(
        pipeline_copy / "luke_ner" / "model" / "config.json",
        set_labels("NIL", "MISC", "PER", "ORG", "LOC"),
    )
    with pytest.raises(CheckpointError, match="differ"):
        spacy.load(pipeline_copy)


def test_saved_pipeline_keeps_its_tokenizer_settings(saved_pipeline, pipeline_copy):
    model_dir = pipeline_copy / "luke_ner" / "model"
    settings = json.loads((model_dir / SETTINGS_NAME).read_text())["tokenizer"]
    assert settings["class"] == "LukeTokenizer" and settings["add_prefix_space"] is True
    assert ents(spacy.load(pipeline_copy)) == saved_pipeline[1]
    # a pipeline saved before luke_spacy.json existed still loads, with the same entities
    (model_dir / SETTINGS_NAME).unlink()
    assert ents(spacy.load(pipeline_copy)) == saved_pipeline[1]


@pytest.mark.parametrize(
    "kind",
    ["weights garbage", "vocab.json missing", "config.json hidden size", "id2label gap"],
)
def test_cli_reports_a_damaged_pipeline_in_one_line(pipeline_copy, capsys, kind):
    damage, file = DAMAGES[kind]
    damage(pipeline_copy / "luke_ner" / "model")
    code = cli.main(["annotate", "--pipeline", str(pipeline_copy), "--no-progress", "Paris"])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert file in err and str(pipeline_copy) in err


# Lists that record the files opened while they are in it (see `files_opened`).
_RECORDERS: List[List[str]] = []


def _record_opens(event: str, args: tuple) -> None:
    if event == "open":
        for opened in _RECORDERS:
            opened.append(str(args[0]))


@contextlib.contextmanager
def files_opened():
    """The files this process opens in the block: a Python audit hook sees every open, from
    Python, transformers or safetensors alike (installed once, as hooks cannot be removed)."""
    if not getattr(files_opened, "installed", False):
        sys.addaudithook(_record_opens)
        files_opened.installed = True
    opened: List[str] = []
    _RECORDERS.append(opened)
    try:
        yield opened
    finally:
        _RECORDERS.remove(opened)


def test_add_pipe_reads_nothing(tiny_luke, monkeypatch):
    """Constructing the component opens no file of the checkpoint and touches no network;
    the checkpoint is read by initialize, from_disk or the first Doc."""

    def refuse(*args, **kwargs):
        raise OSError("network access in a test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    make_nlp(tiny_luke)  # imports and spaCy's own set-up happen once, before
    with files_opened() as opened:
        nlp = make_nlp(tiny_luke)
        for name in ("someone/not-cached", tiny_luke / "no-such-folder"):
            assert make_nlp(name).get_pipe("luke_ner").labels == ()
    assert [f for f in opened if str(tiny_luke) in f or "huggingface" in f] == []
    assert nlp.get_pipe("luke_ner").labels == ()
    with files_opened() as opened:
        nlp.initialize()
    assert str(tiny_luke / "config.json") in opened  # the hook sees the reads
    assert nlp.get_pipe("luke_ner").labels == ("MISC", "PER", "ORG", "LOC")


def test_missing_local_folder_fails_at_initialize_or_first_call(tmp_path):
    for missing in (tmp_path / "no" / "such" / "folder", "./no-such-folder/x/y"):
        nlp = make_nlp(missing)
        with pytest.raises(CheckpointError, match=re.escape(f"'{missing}' does not exist")):
            nlp("text")
        with pytest.raises(CheckpointError, match="local folder .* does not exist"):
            nlp.initialize()
        with pytest.raises(CheckpointError, match="local folder .* does not exist"):
            list(nlp.pipe(["text", "more text"]))


def test_labels_are_known_once_the_checkpoint_is_loaded(tiny_luke, tiny_mluke, tmp_path):
    nlp = make_nlp(tiny_luke)
    assert nlp.get_pipe("luke_ner").labels == () and nlp.pipe_labels["luke_ner"] == []
    nlp("Paris")  # the first Doc loads the checkpoint
    assert nlp.get_pipe("luke_ner").labels == ("MISC", "PER", "ORG", "LOC")
    assert nlp.pipe_labels["luke_ner"] == ["MISC", "PER", "ORG", "LOC"]
    mluke = make_nlp(tiny_mluke)
    mluke.initialize()
    assert mluke.get_pipe("luke_ner").labels == ("LOC", "PER", "ORG", "MISC")
    # the saved labels, also when the weights are not read (exclude)
    nlp.to_disk(tmp_path / "pipeline")
    assert spacy.load(tmp_path / "pipeline").get_pipe("luke_ner").labels == nlp.get_pipe(
        "luke_ner"
    ).labels
    cfg_only = make_nlp(tiny_luke)
    cfg_only.get_pipe("luke_ner").from_disk(tmp_path / "pipeline" / "luke_ner", exclude=["model"])
    assert cfg_only.get_pipe("luke_ner").labels == ("MISC", "PER", "ORG", "LOC")
    assert not cfg_only.get_pipe("luke_ner").runtime.is_loaded


def test_spacy_load_does_not_read_the_named_checkpoint(tiny_luke, tmp_path):
    private = shutil.copytree(tiny_luke, tmp_path / "ckpt")
    nlp = make_nlp(private)
    nlp.initialize()
    nlp.to_disk(tmp_path / "pipeline")
    shutil.rmtree(private)
    loaded = spacy.load(tmp_path / "pipeline")
    assert loaded.get_pipe("luke_ner").labels == ("MISC", "PER", "ORG", "LOC")
    assert ents(loaded) == ents(nlp)


def test_device_without_cuda_says_what_is_missing(tiny_luke, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", None)
    with pytest.raises(ValueError, match="CPU build.*install a CUDA build of torch"):
        make_nlp(tiny_luke, device="cuda")
    monkeypatch.setattr(torch.version, "cuda", "12.4")
    with pytest.raises(ValueError, match="sees no GPU"):
        check_device("cuda:0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    check_device("cuda:0")
    with pytest.raises(ValueError, match="1 GPU"):
        check_device("cuda:1")
    check_device("cpu")
    check_device(None)
    with pytest.raises(ValueError, match="not a torch device"):
        check_device("gpu0")


def test_load_failure_leads_with_the_fix(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointError) as info:
        make_nlp("no-such-user/no-such-luke-checkpoint").initialize()
    message = str(info.value)
    assert message.index("--model /path/to/folder") < message.index("Cause:")
    assert message.index("luke-spacy random-model") < message.index("Cause:")
    assert "HF_HUB_OFFLINE" in message.split("Cause:")[1]


def test_random_mluke_without_sentencepiece(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "sentencepiece", None)  # import fails
    with pytest.raises(ImportError, match=r"luke-spacy\[mluke\]"):
        build_random_checkpoint(tmp_path / "m", kind="mluke")
    code = cli.main(["random-model", str(tmp_path / "m"), "--kind", "mluke"])
    out, err = capsys.readouterr()
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert "pip install 'luke-spacy[mluke]'" in err


def test_mluke_checkpoint_without_sentencepiece(tiny_mluke, monkeypatch):
    monkeypatch.setitem(sys.modules, "sentencepiece", None)
    with pytest.raises(CheckpointError, match=r"mLUKE.*luke-spacy\[mluke\]"):
        make_nlp(tiny_mluke)("Paris")


def test_training_heads_start_with_the_no_entity_class(tiny_mluke, pipeline_copy):
    from luke_spacy.model import load_checkpoint

    # mLUKE's no-entity class keeps its name in a new head
    hf = load_checkpoint(str(tiny_mluke), labels=["ANIMAL"]).transformer
    assert hf.config.id2label == {0: "O", 1: "ANIMAL"}
    # a checkpoint whose label 0 is an entity type: the new head's label 0 is NIL, not PER
    model_dir = pipeline_copy / "luke_ner" / "model"
    DAMAGES["label 0 not the no-entity class"][0](model_dir)
    hf = load_checkpoint(str(model_dir), labels=["LOC", "MISC", "ORG", "PER"]).transformer
    assert list(hf.config.id2label.values()) == ["NIL", "LOC", "MISC", "ORG", "PER"]
