"""The spaCy project (project.yml, configs/, scripts/): a smoke run of the whole workflow."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import spacy
from conftest import load_script, shared_path
from spacy.training import Corpus

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts"


def project_config():
    from weasel.util import load_project_config

    # weasel validates the schema and fails on variables that are not defined
    return load_project_config(ROOT, interpolate=True)


def test_each_workflow_step_finds_its_inputs():
    """Run in order from a clean checkout plus the assets, every step's deps exist by then:
    files of the repository, assets, or outputs of an earlier step of the workflow."""
    config = project_config()
    commands = {cmd["name"]: cmd for cmd in config["commands"]}
    assets = {asset["dest"] for asset in config["assets"] if not asset.get("extra")}
    for workflow, steps in config["workflows"].items():
        made = set(assets)
        for step in steps:
            for dep in commands[step].get("deps", []):
                assert dep in made or (ROOT / dep).exists(), (workflow, step, dep)
            made.update(commands[step].get("outputs", []))


def test_commands_run_files_of_the_repository():
    for cmd in project_config()["commands"]:
        assert cmd.get("help"), cmd["name"]
        for line in cmd["script"]:
            for word in line.split():
                if word.startswith(("scripts/", "benchmarks/", "configs/")):
                    assert (ROOT / word).is_file(), (cmd["name"], word)


def test_assets_are_checked_after_download():
    for asset in project_config()["assets"]:
        if not asset.get("extra"):
            assert len(asset["checksum"]) == 32, asset["dest"]


def test_config_builds_luke_ner(tiny_luke):
    config = spacy.util.load_config(
        ROOT / "configs" / "luke_ner.cfg", overrides={"paths.model": str(tiny_luke)}
    )
    nlp = spacy.util.load_model_from_config(config, auto_fill=True)
    assert nlp.pipe_names == ["luke_ner"]
    assert nlp.get_pipe("luke_ner").model.attrs["name"] == str(tiny_luke)


def test_gold_sentences_keeps_gold_boundaries(tmp_path):
    from spacy.tokens import Doc, DocBin

    nlp = spacy.blank("en")
    doc = Doc(
        nlp.vocab,
        words="Peter Blackburn BRUSSELS 1996-08-22 The EU said so .".split(),
        sent_starts=[True, False, True, False, True, False, False, False, False],
    )
    DocBin(docs=[doc]).to_disk(tmp_path / "d.spacy")
    original = Corpus._make_example
    try:
        assert not next(iter(Corpus(tmp_path / "d.spacy")(nlp))).predicted.has_annotation(
            "SENT_START"
        )
        load_script("gold_sentences")
        eg = next(iter(Corpus(tmp_path / "d.spacy")(nlp)))
    finally:
        Corpus._make_example = original
    assert [s.text for s in eg.predicted.sents] == [s.text for s in doc.sents]


def test_notebook_decode():
    reference = load_script("reference")
    import numpy

    spans = [(0, 1), (0, 2), (1, 2), (2, 3)]
    logits = numpy.array(
        [[0, 3, 0], [0, 0, 5], [1, 0, 0], [0, 2, 2]],
        dtype="f",  # ties: first max (label 1)
    )
    ents = reference.notebook_decode(spans, logits, 3, {0: "NIL", 1: "PER", 2: "LOC"})
    assert ents == [(0, 2, "LOC"), (2, 3, "PER")]


def run_project(project: Path, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """`spacy project run ...` on a copy of the project in `project`."""
    project.mkdir(exist_ok=True)
    shutil.copy(ROOT / "project.yml", project)
    shutil.copytree(ROOT / "configs", project / "configs", dirs_exist_ok=True)
    for folder in (SCRIPTS, ROOT / "benchmarks"):
        shutil.copytree(
            folder,
            project / folder.name,
            ignore=shutil.ignore_patterns("__pycache__", "results", "gpu"),
            dirs_exist_ok=True,
        )
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    cmd = [sys.executable, "-m", "spacy", "project", "run", args[0], str(project), *args[1:]]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_make_model_writes_a_stand_in_with_the_cli(tmp_path):
    """make-model is `luke-spacy random-model`; blank variables give a tiny checkpoint."""
    proc = run_project(tmp_path / "project", "make-model", "--vars.stand_in_dir", "stand-in")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "luke_spacy.cli random-model" in proc.stdout
    config = json.loads((tmp_path / "project" / "stand-in" / "config.json").read_text())
    assert config["hidden_size"] == 32 and config["id2label"]["0"] == "NIL"


@pytest.mark.slow
def test_workflow_all_on_a_small_slice(tmp_path, tiny_luke):
    conll = shared_path("conll2003")
    project = tmp_path / "project"
    proc = run_project(
        project, "all",
        "--vars.conll_dir", str(conll),
        "--vars.model", str(tiny_luke),
        "--vars.max_docs", "2",
        "--vars.bench_batch_size", "1",
        "--vars.bench_batches", "30",
        "--vars.bench_warmup", "0",
        timeout=1500,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]

    counts = json.loads((project / "corpus" / "counts.json").read_text())
    assert counts["max_docs"] == 2
    assert {split: c["documents"] for split, c in counts["counts"].items()} == {
        "train": 2,
        "dev": 2,
        "test": 2,
    }
    # spacy assemble saved the weights inside the pipeline.
    assert (project / "training" / "luke_ner" / "luke_ner" / "model" / "model.safetensors").exists()

    metrics = json.loads((project / "metrics" / "test.json").read_text())
    assert {"ents_p", "ents_r", "ents_f", "ents_per_type"} <= set(metrics)
    assert 0.0 <= metrics["ents_f"] <= 1.0

    reference = json.loads((project / "metrics" / "reference.json").read_text())
    assert reference["sentences"] == counts["counts"]["test"]["sentences"] > 0
    assert reference["equal"] == reference["sentences"]
    assert reference["differing_ids"] == []
    # Fused attention (the default) equals transformers' eager attention up to fp32 rounding.
    assert reference["max_abs_logit_diff"] < 1e-4

    speed = json.loads((project / "metrics" / "speed.json").read_text())
    assert speed["docs"] == 2 and speed["words_per_second"] > 0 and speed["peak_rss_mb"] > 0

    package = project / "packages" / "en_luke_ner_conll03-0.1.0"
    assert list((package / "dist").glob("en_luke_ner_conll03-0.1.0.tar.gz"))
    # Installed as a user would: with its dependencies, in a fresh virtual environment.
    assert "with its dependencies in a fresh environment" in proc.stdout
    assert "installs and loads offline" in proc.stdout


def test_check_package_installs_outside_this_checkout(monkeypatch):
    """pip and the fresh environment never see this checkout, and torch stays this one's
    release (a CPU build stays a CPU build)."""
    import torch

    check = load_script("check_package")
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    assert "PYTHONPATH" not in check.outside_env()
    assert check.torch_requirement() == "torch==" + torch.__version__.split("+")[0]
    # luke-spacy's wheel is built from the source tree of the luke_spacy imported here.
    assert check.luke_spacy_source() == ROOT


@pytest.mark.slow
def test_workflow_genia_on_a_small_slice(tmp_path, tiny_luke):
    """Convert, train from the nested gold and evaluate on test: the nested group's scores
    (spans_genia_*) beside doc.ents', and inner-entity recall for both."""
    genia = shared_path("genia")
    project = tmp_path / "project"
    proc = run_project(
        project, "genia",
        "--vars.genia_dir", str(genia),
        "--vars.genia_model", str(tiny_luke),
        "--vars.max_docs", "3",
        "--vars.genia_holdout", "1",
        "--vars.max_steps", "4",
        "--vars.warmup_steps", "1",
        "--vars.eval_frequency", "2",
        "--vars.learn_rate", "0.001",
        timeout=1200,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    counts = json.loads((project / "corpus" / "genia" / "counts.json").read_text())
    assert counts["counts"]["dev-holdout"]["documents"] == 1
    assert counts["counts"]["test"]["documents"] == 3
    config = spacy.util.load_config(project / "training" / "genia" / "model-best" / "config.cfg")
    component = config["components"]["luke_ner"]
    assert component["gold_spans_key"] == component["nested_spans_key"] == "genia"
    metrics = json.loads((project / "metrics" / "genia_test.json").read_text())
    assert {"spans_genia_p", "spans_genia_r", "spans_genia_f", "ents_f"} <= set(metrics)
    for name in ("genia_test_nested.json", "genia_test_flat.json"):
        score = json.loads((project / "metrics" / name).read_text())
        assert score["gold"] == counts["counts"]["test"]["entities"]
        assert score["inner"]["gold"] == counts["counts"]["test"]["inner"] > 0
