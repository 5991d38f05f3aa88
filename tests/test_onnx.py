"""The ONNX export and the onnxruntime backend: exactness against torch, the backend setting
through config and spacy.load, saving without re-exporting, damaged or mismatched exports,
the missing extra, the command line."""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
from pathlib import Path

import numpy
import pytest
import spacy
import torch
from conftest import make_nlp
from spacy.tokens import Span
from spacy.training import Example

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from luke_spacy import onnx_backend, onnx_graph  # noqa: E402
from luke_spacy.attention import is_entity_aware_attention_fused  # noqa: E402
from luke_spacy.cli import main  # noqa: E402
from luke_spacy.errors import CheckpointError  # noqa: E402
from luke_spacy.model import LukeSpanScorer, load_checkpoint  # noqa: E402
from luke_spacy.onnx_export import export_onnx  # noqa: E402
from luke_spacy.onnx_files import (  # noqa: E402
    DATA_NAME,
    GRAPH_NAME,
    INPUT_NAMES,
    MANIFEST_NAME,
    file_digest,
    folder_fingerprint,
)
from luke_spacy.random_model import SAMPLE_TEXT, build_random_checkpoint  # noqa: E402

TEXTS = list(SAMPLE_TEXT)


@pytest.fixture(autouse=True)
def export_cache(tmp_path_factory, monkeypatch):
    """Every test gets the module's export cache, never the user's."""
    monkeypatch.setenv("LUKE_SPACY_CACHE", str(tmp_path_factory.getbasetemp() / "onnx-cache"))


@pytest.fixture(scope="module")
def tiny_export(tiny_luke, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("exports") / "tiny"
    export_onnx(tiny_luke, out)
    return out


@pytest.fixture(scope="module")
def other_luke(tmp_path_factory) -> Path:
    """Another checkpoint of the same shapes (other random weights)."""
    return build_random_checkpoint(
        tmp_path_factory.mktemp("other_luke"), seed=1, classifier_std=1.0
    )


@pytest.fixture()
def no_export(monkeypatch):
    """Exporting or loading torch weights fails the test from here on."""

    def refuse(*args, **kwargs):
        raise AssertionError("exported or loaded torch weights again")

    monkeypatch.setattr(onnx_graph, "write_export", refuse)
    monkeypatch.setattr("luke_spacy.model.load_checkpoint", refuse)


def entities(docs):
    return [[(e.start, e.end, e.label_) for e in doc.ents] for doc in docs]


def random_inputs(batch, words, spans, mention, seed):
    rng = numpy.random.default_rng(seed)
    ids = rng.integers(3, 500, (batch, words))
    mask = numpy.ones((batch, words), numpy.int64)
    mask[-1, words // 2 :] = 0
    entity_ids = numpy.full((batch, spans), 2)
    entity_mask = numpy.ones((batch, spans), numpy.int64)
    entity_mask[0, spans // 2 :] = 0
    starts = rng.integers(1, words // 2, (batch, spans))
    ends = starts + rng.integers(0, 3, (batch, spans))
    positions = starts[..., None] + numpy.arange(mention)
    positions = numpy.where(positions <= ends[..., None], positions, -1)
    arrays = (ids, mask, entity_ids, entity_mask, positions, starts, ends)
    return {name: a.astype(numpy.int64) for name, a in zip(INPUT_NAMES, arrays)}


# -- the export reproduces the torch forward -----------------------------------------------


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
def test_export_reproduces_torch_on_other_shapes(tiny_luke, tmp_path, attention):
    """Traced on one shape, the graph gives torch's logits and word states for others (batch,
    words, spans and mention width are dynamic), with either attention traced."""
    import onnxruntime

    objects = load_checkpoint(str(tiny_luke), local_files_only=True)
    scorer = LukeSpanScorer(objects.transformer)
    source = {"name": str(tiny_luke), "fingerprint": "test"}
    onnx_graph.write_export(scorer, objects.tokenizer, tmp_path, source=source, attention=attention)
    session = onnxruntime.InferenceSession(str(tmp_path / GRAPH_NAME))
    for shape in [(1, 9, 1, 16), (3, 41, 13, 16), (5, 60, 30, 8)]:
        inputs = random_inputs(*shape, seed=shape[1])
        with torch.inference_mode():
            expected, words = scorer(
                {k: torch.from_numpy(v) for k, v in inputs.items()}, return_words=True
            )
        logits, states = session.run(None, inputs)
        assert logits.shape == expected.shape
        numpy.testing.assert_allclose(logits, expected.numpy(), atol=1e-4)
        numpy.testing.assert_allclose(states, words.numpy(), atol=1e-4)
    # the model is given back as it was: transformers' attention, the whole entity table
    assert not is_entity_aware_attention_fused(objects.transformer)
    assert objects.transformer.luke.entity_embeddings.entity_embeddings.num_embeddings == 4


def test_large_graphs_keep_their_weights_in_external_data(tiny_luke, tmp_path):
    out = tmp_path / "external"
    objects = load_checkpoint(str(tiny_luke), local_files_only=True)
    manifest = onnx_graph.write_export(
        LukeSpanScorer(objects.transformer),
        objects.tokenizer,
        out,
        source={"name": "tiny", "fingerprint": folder_fingerprint(tiny_luke)},
        external_data_over=10_000,
    )
    assert set(manifest["files"]) == {GRAPH_NAME, DATA_NAME}
    assert (out / DATA_NAME).stat().st_size > (out / GRAPH_NAME).stat().st_size
    nlp = make_nlp(tiny_luke, backend="onnxruntime", onnx_path=str(out))
    assert entities(nlp.pipe(TEXTS)) == entities(make_nlp(tiny_luke).pipe(TEXTS))
    # a truncated data file is named
    with open(out / DATA_NAME, "r+b") as f:
        f.truncate(1000)
    with pytest.raises(CheckpointError, match=f"{DATA_NAME}.*truncated"):
        make_nlp(tiny_luke, backend="onnxruntime", onnx_path=str(out)).initialize()


# -- the backend setting -------------------------------------------------------------------


def test_backend_onnxruntime_gives_the_torch_entities_and_scores(tiny_luke):
    torch_nlp = make_nlp(tiny_luke, set_trf_data=True)
    ort_nlp = make_nlp(tiny_luke, backend="onnxruntime", set_trf_data=True)
    expected = list(torch_nlp.pipe(TEXTS))
    got = list(ort_nlp.pipe(TEXTS))
    assert entities(got) == entities(expected)
    assert sum(len(doc.ents) for doc in got) > 5
    for a, b in zip(got, expected):
        numpy.testing.assert_allclose(
            a.spans["luke_ner"].attrs["scores"], b.spans["luke_ner"].attrs["scores"], atol=1e-5
        )
        states_a = a._.trf_data.model_output.last_hidden_state
        states_b = b._.trf_data.model_output.last_hidden_state
        numpy.testing.assert_allclose(states_a, states_b, atol=1e-4)
    ort = ort_nlp.get_pipe("luke_ner")
    assert isinstance(ort.runtime.backend, onnx_backend.OrtBackend)
    assert ort.runtime.backend.precision == "float32"
    # every candidate span's logits, not only the decoded ones
    for a, b in zip(
        ort.span_scores(ort_nlp.make_doc(t) for t in TEXTS),
        torch_nlp.get_pipe("luke_ner").span_scores(torch_nlp.make_doc(t) for t in TEXTS),
    ):
        numpy.testing.assert_allclose(a.logits, b.logits, atol=1e-4)


def test_the_export_is_cached_and_its_folder_told(tiny_luke, caplog):
    first = make_nlp(tiny_luke, backend="onnxruntime")
    first("warm up")
    folder = first.get_pipe("luke_ner").runtime.backend.folder
    assert folder.parent == Path(os.environ["LUKE_SPACY_CACHE"]) / "onnx"
    # the torch weights loaded for the export are not kept next to ONNX Runtime's
    from luke_spacy.model import get_objects

    assert get_objects(first.get_pipe("luke_ner").model) is None
    before = file_digest(folder / GRAPH_NAME)
    second = make_nlp(tiny_luke, backend="onnxruntime")
    caplog.clear()
    with caplog.at_level("WARNING"):
        second("again")
    assert not any("exporting" in r.getMessage() for r in caplog.records)
    assert second.get_pipe("luke_ner").runtime.backend.folder == folder
    assert file_digest(folder / GRAPH_NAME) == before


def test_the_first_export_says_how_long_and_where(tiny_luke, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("LUKE_SPACY_CACHE", str(tmp_path / "cache"))
    with caplog.at_level("WARNING"):
        make_nlp(tiny_luke, backend="onnxruntime").initialize()
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "minutes for LUKE-large" in messages
    assert str(tmp_path / "cache" / "onnx") in messages
    assert "exported" in messages


def test_onnx_path_runs_a_given_export_without_torch_weights(tiny_luke, tiny_export, no_export):
    nlp = make_nlp(tiny_luke, backend="onnxruntime", onnx_path=str(tiny_export))
    got = entities(nlp.pipe(TEXTS))
    assert nlp.get_pipe("luke_ner").runtime.backend.folder == tiny_export
    assert got and any(got)


def test_backend_through_a_config_file(tiny_luke, tiny_export, tmp_path):
    cfg = tmp_path / "config.cfg"
    cfg.write_text(
        f"""
[nlp]
lang = "en"
pipeline = ["luke_ner"]

[components]

[components.luke_ner]
factory = "luke_ner"
backend = "onnxruntime"
onnx_path = "{tiny_export}"

[components.luke_ner.model]
@architectures = "luke_spacy.LukeSpanClassifier.v1"
name = "{tiny_luke}"
"""
    )
    nlp = spacy.util.load_model_from_config(spacy.util.load_config(cfg), auto_fill=True)
    nlp.initialize()
    assert nlp.get_pipe("luke_ner").settings.backend == "onnxruntime"
    assert entities(nlp.pipe(TEXTS)) == entities(make_nlp(tiny_luke).pipe(TEXTS))
    assert any("luke-spacy[onnx]" in req for req in nlp.meta["requirements"])


def test_the_default_stays_torch(tiny_luke):
    nlp = make_nlp(tiny_luke)
    ner = nlp.get_pipe("luke_ner")
    assert ner.settings.backend == "torch" and ner.cfg["onnx_path"] is None
    assert type(ner.runtime.backend).__name__ == "TorchBackend"


# -- saving and loading --------------------------------------------------------------------


def test_spacy_load_runs_the_saved_export_without_exporting(tiny_luke, tmp_path, monkeypatch):
    nlp = make_nlp(tiny_luke, backend="onnxruntime")
    expected = entities(nlp.pipe(TEXTS))
    nlp.to_disk(tmp_path / "pipeline")
    model_dir = tmp_path / "pipeline" / "luke_ner" / "model"
    assert (model_dir / GRAPH_NAME).is_file() and (model_dir / MANIFEST_NAME).is_file()
    assert not list(model_dir.glob("*.safetensors"))
    # the cache and the original checkpoint are gone: the pipeline is all there is
    monkeypatch.setenv("LUKE_SPACY_CACHE", str(tmp_path / "empty-cache"))
    shutil.copytree(tiny_luke, tmp_path / "moved")

    def refuse(*args, **kwargs):
        raise AssertionError("exported or loaded torch weights again")

    monkeypatch.setattr(onnx_graph, "write_export", refuse)
    monkeypatch.setattr("luke_spacy.model.load_checkpoint", refuse)
    loaded = spacy.load(tmp_path / "pipeline")
    assert loaded.get_pipe("luke_ner").settings.backend == "onnxruntime"
    assert entities(loaded.pipe(TEXTS)) == expected
    assert not (tmp_path / "empty-cache").exists()
    # to_bytes / from_bytes and pickling carry the export too
    clone = spacy.blank("en").from_config(loaded.config)
    clone.from_bytes(loaded.to_bytes())
    assert entities(clone.pipe(TEXTS)) == expected
    assert entities(pickle.loads(pickle.dumps(loaded)).pipe(TEXTS)) == expected


def test_a_changed_onnx_path_keeps_the_loaded_pipelines_checkpoint(tiny_luke, tmp_path):
    """After spacy.load of a trained torch pipeline on onnxruntime, unsetting or changing
    onnx_path exports or checks that pipeline's weights, never the untrained checkpoint."""
    trained = trained_nlp(tiny_luke)
    expected = entities(trained.pipe(TEXTS))
    trained.to_disk(tmp_path / "pipeline")
    export_onnx(tmp_path / "pipeline", tmp_path / "export")
    overrides = {"backend": "onnxruntime", "onnx_path": str(tmp_path / "export")}
    nlp = spacy.load(tmp_path / "pipeline", config={"components": {"luke_ner": overrides}})
    assert entities(nlp.pipe(TEXTS)) == expected
    ner = nlp.get_pipe("luke_ner")
    ner.cfg = {**ner.cfg, "onnx_path": None}
    assert entities(nlp.pipe(TEXTS)) == expected
    manifest = json.loads((ner.runtime.backend.folder / MANIFEST_NAME).read_text())
    assert manifest["source"]["name"] == str(tmp_path / "pipeline" / "luke_ner" / "model")
    ner.cfg = {**ner.cfg, "onnx_path": str(tmp_path / "export")}
    assert entities(nlp.pipe(TEXTS)) == expected
    assert ner.runtime.backend.folder == tmp_path / "export"


def test_a_pipeline_saved_with_onnxruntime_asks_for_the_extra(tiny_luke, tmp_path):
    """The README's recipe never calls initialize: `spacy.load(torch pipeline, backend =
    onnxruntime).to_disk(...)`; its meta (what `spacy package` installs) asks for
    luke-spacy[onnx], and so does one switched to onnxruntime through cfg."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        version("luke-spacy")
    except PackageNotFoundError:
        pytest.skip("luke-spacy is not installed: no requirement is recorded")

    def onnx_required(folder):
        meta = json.loads((folder / "meta.json").read_text())
        return any(re.match(r"luke-spacy\[.*onnx.*\]", r) for r in meta["requirements"])

    nlp = make_nlp(tiny_luke)
    nlp.initialize()
    nlp.to_disk(tmp_path / "torch")
    assert not onnx_required(tmp_path / "torch")
    spacy.load(tmp_path / "torch", config=as_backend("onnxruntime")).to_disk(tmp_path / "ort")
    assert onnx_required(tmp_path / "ort")
    spacy.load(tmp_path / "ort").to_disk(tmp_path / "again")
    assert onnx_required(tmp_path / "again")
    switched = spacy.load(tmp_path / "torch")
    ner = switched.get_pipe("luke_ner")
    ner.cfg = {**ner.cfg, "backend": "onnxruntime"}
    switched("A text exports it.")
    switched.to_disk(tmp_path / "switched")
    assert onnx_required(tmp_path / "switched")


def test_a_torch_pipeline_loads_on_onnxruntime(tiny_luke, other_luke, tmp_path):
    """A pipeline saved with torch, loaded with backend onnxruntime: exported from its own
    folder on first use, or with onnx_path an export checked to be of that checkpoint."""
    nlp = make_nlp(tiny_luke)
    expected = entities(nlp.pipe(TEXTS))
    nlp.to_disk(tmp_path / "pipeline")
    ort = spacy.load(
        tmp_path / "pipeline", config={"components": {"luke_ner": {"backend": "onnxruntime"}}}
    )
    assert entities(ort.pipe(TEXTS)) == expected
    # an export of this very folder is accepted by onnx_path...
    first = export_onnx(tmp_path / "pipeline", tmp_path / "export")
    model_dir = tmp_path / "pipeline" / "luke_ner" / "model"
    assert first["source"]["fingerprint"] == folder_fingerprint(model_dir)
    overrides = {"backend": "onnxruntime", "onnx_path": str(tmp_path / "export")}
    given = spacy.load(tmp_path / "pipeline", config={"components": {"luke_ner": overrides}})
    assert entities(given.pipe(TEXTS)) == expected
    # ...one of another checkpoint is not
    other = export_onnx(other_luke, tmp_path / "copy")
    assert other["source"]["fingerprint"] != first["source"]["fingerprint"]
    overrides["onnx_path"] = str(tmp_path / "copy")
    with pytest.raises(CheckpointError, match="exported from another checkpoint"):
        spacy.load(tmp_path / "pipeline", config={"components": {"luke_ner": overrides}})


def trained_nlp(checkpoint):
    """A torch pipeline whose weights are no longer the checkpoint's (as after training)."""
    from luke_spacy.model import get_scorer

    nlp = make_nlp(checkpoint)
    nlp.initialize()
    with torch.no_grad():
        get_scorer(nlp.get_pipe("luke_ner").model).hf.classifier.weight.mul_(-1.0)
    assert entities(nlp.pipe(TEXTS)) != entities(make_nlp(checkpoint).pipe(TEXTS))
    return nlp


def as_backend(backend):
    return {"components": {"luke_ner": {"backend": backend}}}


def test_a_save_removes_the_other_backends_files(tiny_luke, tmp_path):
    """Saved with onnxruntime, then with torch into the same folder (or the reverse): the
    first save's files are gone, so no backend runs them instead of the second save."""
    trained = trained_nlp(tiny_luke)
    expected = entities(trained.pipe(TEXTS))
    base = make_nlp(tiny_luke, backend="onnxruntime")
    base.initialize()
    model_dir = tmp_path / "pipeline" / "luke_ner" / "model"
    base.to_disk(tmp_path / "pipeline")
    trained.to_disk(tmp_path / "pipeline")
    assert not (model_dir / MANIFEST_NAME).exists() and not (model_dir / GRAPH_NAME).exists()
    loaded = spacy.load(tmp_path / "pipeline", config=as_backend("onnxruntime"))
    assert entities(loaded.pipe(TEXTS)) == expected
    # the reverse: the trained torch weights are not left next to the base export
    trained.to_disk(tmp_path / "pipeline")
    base.to_disk(tmp_path / "pipeline")
    assert (model_dir / MANIFEST_NAME).is_file() and not list(model_dir.glob("*.safetensors"))
    with pytest.raises(CheckpointError, match="no weights"):
        spacy.load(tmp_path / "pipeline", config=as_backend("torch"))


def test_switching_a_loaded_pipeline_to_torch_keeps_its_own_weights(tiny_luke, tmp_path):
    """A pipeline loaded with onnxruntime and switched to torch runs its saved weights, never
    the untrained checkpoint its attrs name; one saved without torch weights refuses."""
    trained = trained_nlp(tiny_luke)
    expected = entities(trained.pipe(TEXTS))
    trained.to_disk(tmp_path / "torch")
    nlp = spacy.load(tmp_path / "torch", config=as_backend("onnxruntime"))
    assert entities(nlp.pipe(TEXTS)) == expected
    ner = nlp.get_pipe("luke_ner")
    ner.cfg = {**ner.cfg, "backend": "torch"}
    assert type(ner.runtime.backend).__name__ == "TorchBackend"
    assert entities(nlp.pipe(TEXTS)) == expected
    # saved with onnxruntime: no torch weights to switch to
    spacy.load(tmp_path / "torch", config=as_backend("onnxruntime")).to_disk(tmp_path / "ort")
    nlp = spacy.load(tmp_path / "ort")
    assert entities(nlp.pipe(TEXTS)) == expected
    ner = nlp.get_pipe("luke_ner")
    ner.cfg = {**ner.cfg, "backend": "torch"}
    with pytest.raises(CheckpointError, match="holds an ONNX export only") as err:
        nlp("Peter lives in Paris .")
    assert "\n" not in str(err.value)


def test_from_bytes_refuses_odd_names_repairs_the_cache_and_cleans_up(
    tiny_luke, tmp_path, monkeypatch
):
    import srsly

    monkeypatch.setenv("LUKE_SPACY_CACHE", str(tmp_path / "cache"))
    nlp = make_nlp(tiny_luke, backend="onnxruntime")
    expected = entities(nlp.pipe(TEXTS))
    data = nlp.get_pipe("luke_ner").runtime.backend.to_bytes()
    files = srsly.msgpack_loads(data)["onnx_export"]

    def fresh_backend():
        return make_nlp(tiny_luke, backend="onnxruntime").get_pipe("luke_ner").runtime.backend

    # a name that leaves the folder is refused, and nothing is written outside it
    for name in ("../escaped.txt", "sub/x.txt", ".."):
        odd = srsly.msgpack_dumps({"onnx_export": {**files, name: b"x"}})
        with pytest.raises(CheckpointError, match="not plain names"):
            fresh_backend().from_bytes(odd)
    assert not list(tmp_path.rglob("escaped.txt")) and not list(tmp_path.rglob("x.txt"))
    # a damaged cache entry of these bytes is written again from them
    backend = fresh_backend()
    backend.from_bytes(data)
    folder = backend.folder
    with open(folder / GRAPH_NAME, "r+b") as f:
        f.truncate(100)
    clone = make_nlp(tiny_luke, backend="onnxruntime")
    clone.get_pipe("luke_ner").runtime.backend.from_bytes(data)
    assert clone.get_pipe("luke_ner").runtime.backend.folder == folder
    assert entities(clone.pipe(TEXTS)) == expected
    # the same graph with another tokenizer file gets its own folder
    other = {**files, "vocab.json": files["vocab.json"] + b" "}
    backend = fresh_backend()
    backend.from_bytes(srsly.msgpack_dumps({"onnx_export": other}))
    assert backend.folder != folder
    # a write that fails leaves no temporary folder behind
    shutil.rmtree(tmp_path / "cache")

    def disk_full(self, content):
        raise OSError("No space left on device")

    monkeypatch.setattr(Path, "write_bytes", disk_full)
    with pytest.raises(OSError, match="No space"):
        fresh_backend().from_bytes(data)
    assert [p for p in (tmp_path / "cache" / "onnx").iterdir() if p.is_dir()] == []


# -- damaged and mismatched exports ---------------------------------------------------------


@pytest.fixture()
def export_copy(tiny_export, tmp_path) -> Path:
    return Path(shutil.copytree(tiny_export, tmp_path / "export"))


def load_export(checkpoint, folder):
    nlp = make_nlp(checkpoint, backend="onnxruntime", onnx_path=str(folder))
    nlp.initialize()
    return nlp


def test_a_truncated_graph_is_refused_by_name(tiny_luke, export_copy):
    graph = export_copy / GRAPH_NAME
    with open(graph, "r+b") as f:
        f.truncate(graph.stat().st_size // 2)
    with pytest.raises(CheckpointError, match=f"'{graph}' is damaged \\(truncated"):
        load_export(tiny_luke, export_copy)


def test_a_graph_of_another_checkpoint_is_refused(tiny_luke, other_luke, export_copy, tmp_path):
    export_onnx(other_luke, tmp_path / "other")
    shutil.copyfile(tmp_path / "other" / GRAPH_NAME, export_copy / GRAPH_NAME)
    with pytest.raises(CheckpointError, match="is not the one exported with this folder"):
        load_export(tiny_luke, export_copy)


def test_an_export_of_another_checkpoint_is_refused_for_a_local_checkpoint(
    tiny_luke, other_luke, tmp_path
):
    export_onnx(other_luke, tmp_path / "other")
    with pytest.raises(CheckpointError, match="exported from another checkpoint"):
        load_export(tiny_luke, tmp_path / "other")
    # with a hub id beside it (not on this machine), the export's own files are the model
    nlp = make_nlp(
        "studio-ousia/not-here", backend="onnxruntime", onnx_path=str(tmp_path / "other")
    )
    assert entities(nlp.pipe(TEXTS)) == entities(make_nlp(other_luke).pipe(TEXTS))


def test_an_export_of_another_checkpoint_is_refused_for_a_cached_hub_id(
    tiny_luke, other_luke, tmp_path, monkeypatch
):
    """A hub id in the Hugging Face cache is checked as a local folder is."""
    real = onnx_backend.local_checkpoint
    monkeypatch.setattr(
        onnx_backend,
        "local_checkpoint",
        lambda name, revision="main": tiny_luke if name == "owner/cached" else real(name, revision),
    )
    export_onnx(other_luke, tmp_path / "other")
    with pytest.raises(CheckpointError, match="exported from another checkpoint"):
        load_export("owner/cached", tmp_path / "other")
    export_onnx(tiny_luke, tmp_path / "own")
    assert entities(load_export("owner/cached", tmp_path / "own").pipe(TEXTS))


def test_wrong_labels_are_refused(tiny_luke, export_copy):
    config_file = export_copy / "config.json"
    config = json.loads(config_file.read_text())
    config["id2label"] = {"0": "NIL", "1": "PER", "2": "MISC", "3": "ORG", "4": "LOC"}
    config_file.write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="labels of .*config.json.*differ"):
        load_export(tiny_luke, export_copy)


def test_a_graph_with_another_label_count_is_refused(tiny_luke, export_copy):
    """Even with a manifest made to match it (sizes, hashes, labels)."""
    for name in (MANIFEST_NAME, "config.json"):
        data = json.loads((export_copy / name).read_text())
        if name == MANIFEST_NAME:
            data["labels"] = ["NIL", "A", "B", "C"]
        else:
            data["id2label"] = {str(i): label for i, label in enumerate(["NIL", "A", "B", "C"])}
            data["label2id"] = {v: int(k) for k, v in data["id2label"].items()}
        (export_copy / name).write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match="scores 5 labels.*wrong labels"):
        load_export(tiny_luke, export_copy)


def test_a_graph_that_is_no_onnx_is_refused_by_name(tiny_luke, export_copy):
    graph = export_copy / GRAPH_NAME
    graph.write_bytes(b"not a graph at all")
    manifest = json.loads((export_copy / MANIFEST_NAME).read_text())
    manifest["files"][GRAPH_NAME] = {"bytes": graph.stat().st_size, "sha256": file_digest(graph)}
    (export_copy / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match=f"ONNX Runtime cannot load '{graph}'"):
        load_export(tiny_luke, export_copy)


def test_a_folder_without_manifest_is_refused(tiny_luke, tmp_path):
    with pytest.raises(CheckpointError, match="is not an ONNX export of luke-spacy"):
        load_export(tiny_luke, tiny_luke)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_export(tiny_luke, tmp_path / "missing")


def test_a_damaged_cache_entry_is_exported_again(tiny_luke, tmp_path, monkeypatch):
    monkeypatch.setenv("LUKE_SPACY_CACHE", str(tmp_path / "cache"))
    first = make_nlp(tiny_luke, backend="onnxruntime")
    expected = entities(first.pipe(TEXTS))
    folder = first.get_pipe("luke_ner").runtime.backend.folder
    with open(folder / GRAPH_NAME, "r+b") as f:
        f.truncate(100)
    assert entities(make_nlp(tiny_luke, backend="onnxruntime").pipe(TEXTS)) == expected


def test_weights_loaded_to_export_a_checkpoint_not_on_this_machine_are_dropped(
    tiny_luke, tmp_path, monkeypatch
):
    """A hub id not in the Hugging Face cache yet is downloaded (loaded) to fingerprint it:
    its torch weights are dropped after the export, and after a cache hit too."""
    from luke_spacy.model import get_objects

    monkeypatch.setenv("LUKE_SPACY_CACHE", str(tmp_path / "cache"))
    real = onnx_backend.local_checkpoint
    for _ in range(2):  # an export, then a cache hit
        calls = []

        def not_cached_yet(name, revision="main", calls=calls):
            calls.append(name)
            return None if len(calls) == 1 else real(name, revision)

        monkeypatch.setattr(onnx_backend, "local_checkpoint", not_cached_yet)
        nlp = make_nlp(tiny_luke, backend="onnxruntime")
        nlp("warm up")
        assert len(calls) == 2  # the checkpoint was loaded, then found
        assert get_objects(nlp.get_pipe("luke_ner").model) is None


def test_a_cache_entry_is_written_under_its_lock(tiny_luke, tmp_path, monkeypatch):
    """Exports of one checkpoint by several processes (n_process workers) wait for each
    other: the entry's lock is held while it is written, and released afterwards."""
    from filelock import FileLock, Timeout

    monkeypatch.setenv("LUKE_SPACY_CACHE", str(tmp_path / "cache"))
    real = onnx_graph.write_export
    held = []

    def write_export(*args, **kwargs):
        (lock_file,) = (tmp_path / "cache" / "onnx").glob(".*.lock")
        with pytest.raises(Timeout):
            FileLock(str(lock_file)).acquire(timeout=0)
        held.append(lock_file)
        return real(*args, **kwargs)

    monkeypatch.setattr(onnx_graph, "write_export", write_export)
    make_nlp(tiny_luke, backend="onnxruntime")("warm up")
    assert len(held) == 1
    with FileLock(str(held[0])).acquire(timeout=0):
        pass


def test_a_session_or_tokenizer_error_keeps_the_cache_entry(tiny_luke, tmp_path, monkeypatch):
    """Only the export's own check repairs the cache: ONNX Runtime failing to start a session
    (a GPU, memory) or a tokenizer that cannot be read leaves a sound export where it is."""
    import onnxruntime

    monkeypatch.setenv("LUKE_SPACY_CACHE", str(tmp_path / "cache"))
    first = make_nlp(tiny_luke, backend="onnxruntime")
    first("warm up")
    folder = first.get_pipe("luke_ner").runtime.backend.folder
    before = file_digest(folder / GRAPH_NAME)

    def refuse(*args, **kwargs):
        raise AssertionError("exported again")

    monkeypatch.setattr(onnx_graph, "write_export", refuse)

    def no_session(*args, **kwargs):
        raise RuntimeError("CUDA failure: out of memory")

    with monkeypatch.context() as patch:
        patch.setattr(onnxruntime, "InferenceSession", no_session)
        with pytest.raises(RuntimeError, match="out of memory"):
            make_nlp(tiny_luke, backend="onnxruntime").initialize()

    def no_tokenizer(folder):
        raise CheckpointError("this tokenizer needs sentencepiece")

    with monkeypatch.context() as patch:
        patch.setattr("luke_spacy.model.load_files", no_tokenizer)
        with pytest.raises(CheckpointError, match="sentencepiece"):
            make_nlp(tiny_luke, backend="onnxruntime").initialize()
    assert file_digest(folder / GRAPH_NAME) == before
    again = make_nlp(tiny_luke, backend="onnxruntime")
    assert entities(again.pipe(TEXTS)) == entities(first.pipe(TEXTS))


# -- what the backend refuses --------------------------------------------------------------


def test_without_the_extra_one_line_names_the_pip_command(tiny_luke, monkeypatch, capsys):
    real = onnx_backend.find_spec
    monkeypatch.setattr(
        onnx_backend, "find_spec", lambda name: None if name == "onnxruntime" else real(name)
    )
    with pytest.raises(ImportError) as err:
        make_nlp(tiny_luke, backend="onnxruntime")
    assert "pip install 'luke-spacy[onnx]'" in str(err.value)
    assert "\n" not in str(err.value)
    # the torch backend needs nothing more
    assert make_nlp(tiny_luke)("Peter lives in Paris .")
    # the command line says it in one line too
    assert main(["export-onnx", str(tiny_luke), str(tiny_luke.parent / "x")]) == 2
    assert capsys.readouterr().err.strip().endswith("pip install 'luke-spacy[onnx]'")


def test_training_is_refused_with_the_way_to_train(tiny_luke):
    nlp = make_nlp(tiny_luke, backend="onnxruntime")
    doc = nlp.make_doc("Peter lives in Paris .")
    ref = nlp.make_doc("Peter lives in Paris .")
    ref.ents = [Span(ref, 0, 1, label="PER")]
    example = Example(doc, ref)
    with pytest.raises(ValueError, match="inference only.*backend = 'torch'"):
        nlp.initialize(lambda: [example])
    nlp.initialize()
    with pytest.raises(ValueError, match="inference only.*backend = 'torch'"):
        nlp.update([example])
    # a listening component's gradient cannot flow back into the export either
    runtime = nlp.get_pipe("luke_ner").runtime
    states = runtime.word_states([doc])  # inference gives listeners the word states
    assert states[0] is not None and states[0].shape[-1] == runtime.hidden_size
    with pytest.raises(ValueError, match="inference only.*backend = 'torch'"):
        runtime.backprop_word_states([doc], [numpy.ones_like(states[0])])


def test_devices(monkeypatch, tiny_luke):
    import onnxruntime

    assert onnx_backend.providers(None) == ["CPUExecutionProvider"]
    assert onnx_backend.providers("cpu") == ["CPUExecutionProvider"]
    from confection import ConfigValidationError

    from luke_spacy.settings import SettingsError

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        # a formatted config error naming the setting, as the torch backend's
        with pytest.raises(ConfigValidationError, match="pip install onnxruntime-gpu") as err:
            make_nlp(tiny_luke, backend="onnxruntime", device="cuda:0")
        assert [e["loc"] for e in err.value.errors] == [["luke_ner", "device"]]
    with pytest.raises(SettingsError, match="'mps' cannot be used with backend = 'onnxruntime'"):
        onnx_backend.providers("mps")
    with pytest.raises(ConfigValidationError, match="cannot be used with backend") as err:
        make_nlp(tiny_luke, backend="onnxruntime", device="mps")
    assert [e["loc"] for e in err.value.errors] == [["luke_ner", "device"]]
    monkeypatch.setattr(
        onnxruntime,
        "get_available_providers",
        lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"],
    )
    assert onnx_backend.providers("cuda:1") == [
        ("CUDAExecutionProvider", {"device_id": 1}),
        "CPUExecutionProvider",
    ]


# -- the command line ----------------------------------------------------------------------


def test_cli_exports_int8_and_refuses_to_overwrite(tiny_luke, tmp_path, capsys):
    out = tmp_path / "int8"
    assert main(["export-onnx", str(tiny_luke), str(out), "--quantize", "int8"]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    assert manifest["precision"] == "int8" and manifest["quantization"]["per_channel"] is True
    nlp = make_nlp(tiny_luke, backend="onnxruntime", onnx_path=str(out))
    assert nlp.get_pipe("luke_ner").runtime.backend.precision == "int8"
    # int8 logits of every candidate span are torch's within 3% of the largest logit (about
    # 1.3% on this model), and the best label agrees for 95% of the spans (98% here)
    torch_nlp = make_nlp(tiny_luke)
    agree = []
    for a, b in zip(
        torch_nlp.get_pipe("luke_ner").span_scores(torch_nlp.make_doc(t) for t in TEXTS),
        nlp.get_pipe("luke_ner").span_scores(nlp.make_doc(t) for t in TEXTS),
    ):
        assert numpy.abs(b.logits - a.logits).max() <= 0.03 * numpy.abs(a.logits).max()
        agree.extend(a.logits.argmax(-1) == b.logits.argmax(-1))
    assert len(agree) > 100 and numpy.mean(agree) >= 0.95
    before = file_digest(out / GRAPH_NAME)
    # an existing folder with files: refused unless --force, and nothing is written
    assert main(["export-onnx", str(tiny_luke), str(out)]) == 2
    assert "already holds files" in capsys.readouterr().err
    assert file_digest(out / GRAPH_NAME) == before
    # the source itself: refused even with --force
    assert main(["export-onnx", str(tiny_luke), str(tiny_luke), "--force"]) == 2
    assert "is the folder exported from" in capsys.readouterr().err
    # a file: refused
    (tmp_path / "file").write_text("mine")
    assert main(["export-onnx", str(tiny_luke), str(tmp_path / "file")]) == 2
    assert (tmp_path / "file").read_text() == "mine"
    # --force writes the float32 export over the int8 one
    assert main(["export-onnx", str(tiny_luke), str(out), "--force"]) == 0
    assert json.loads((out / MANIFEST_NAME).read_text())["precision"] == "float32"


def test_a_float32_export_of_an_int8_pipeline_is_refused(tiny_luke, tmp_path, capsys):
    """A pipeline saved with an int8 export holds no torch weights: float32 (no --quantize)
    is refused in one line instead of copying int8; --quantize int8 copies it."""
    assert main(["export-onnx", str(tiny_luke), str(tmp_path / "int8"), "--quantize", "int8"]) == 0
    nlp = make_nlp(tiny_luke, backend="onnxruntime", onnx_path=str(tmp_path / "int8"))
    nlp.initialize()
    nlp.to_disk(tmp_path / "pipeline")
    capsys.readouterr()
    assert main(["export-onnx", str(tmp_path / "pipeline"), str(tmp_path / "fp32")]) == 2
    err = capsys.readouterr().err.strip()
    assert "float32 export needs the torch weights" in err and "\n" not in err
    assert not (tmp_path / "fp32").exists()
    copied = tmp_path / "copy"
    assert main(["export-onnx", str(tmp_path / "pipeline"), str(copied), "--quantize", "int8"]) == 0
    assert json.loads((copied / MANIFEST_NAME).read_text())["precision"] == "int8"


def test_cli_exports_a_saved_pipeline(tiny_luke, tmp_path, capsys):
    nlp = make_nlp(tiny_luke)
    nlp.add_pipe("luke_ner", name="second", config={"model": {"name": str(tiny_luke)}})
    nlp.initialize()
    nlp.to_disk(tmp_path / "pipeline")
    assert main(["export-onnx", str(tmp_path / "pipeline"), str(tmp_path / "a")]) == 2
    assert "name one with --component" in capsys.readouterr().err
    assert (
        main(
            [
                "export-onnx",
                str(tmp_path / "pipeline"),
                str(tmp_path / "a"),
                "--component",
                "second",
            ]
        )
        == 0
    )
    manifest = json.loads((tmp_path / "a" / MANIFEST_NAME).read_text())
    assert manifest["source"]["name"] == str(tmp_path / "pipeline" / "second" / "model")


# -- every CoNLL-2003 test sentence (slow) --------------------------------------------------


@pytest.mark.slow
def test_onnxruntime_equals_torch_on_every_conll_test_sentence(tiny_luke_real_bpe):
    """Float32 ONNX Runtime against the torch backend (the default: fp32, fused attention)
    on all 3,453 CoNLL-2003 test sentences, with the file's sentence boundaries: identical
    entities in every sentence, every candidate span's logits within 1e-4."""
    from conftest import shared_path

    from luke_spacy.conll import read_conll, words_doc

    documents = [
        [s.words for s in doc.sentences]
        for doc in read_conll(shared_path("conll2003", "eng.testb"))
    ]
    assert sum(len(d) for d in documents) == 3453
    torch_nlp = make_nlp(tiny_luke_real_bpe)
    ort_nlp = make_nlp(tiny_luke_real_bpe, backend="onnxruntime")
    expected = list(torch_nlp.pipe(words_doc(torch_nlp.vocab, d) for d in documents))
    got = list(ort_nlp.pipe(words_doc(ort_nlp.vocab, d) for d in documents))
    differing = [
        (i, sent.start)
        for i, (a, b) in enumerate(zip(expected, got))
        for sent in a.sents
        if [(e.start, e.end, e.label_) for e in a.ents if sent.start <= e.start < sent.end]
        != [(e.start, e.end, e.label_) for e in b.ents if sent.start <= e.start < sent.end]
    ]
    assert sum(len(doc.ents) for doc in expected) > 1000, "the test should bite"
    assert not differing, f"{len(differing)} of 3453 sentences differ, e.g. {differing[:3]}"
    first = [words_doc(torch_nlp.vocab, d) for d in documents[:20]]
    for a, b in zip(
        torch_nlp.get_pipe("luke_ner").span_scores(first),
        ort_nlp.get_pipe("luke_ner").span_scores(first),
    ):
        numpy.testing.assert_allclose(b.logits, a.logits, atol=1e-4)
