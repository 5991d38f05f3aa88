"""Packaged pipelines: the meta of the project's `package` step, and what it requires."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import spacy
from conftest import load_script, make_nlp

from luke_spacy.packaging import checkpoint_meta, luke_spacy_requirement, record_requirements

ROOT = Path(__file__).resolve().parents[1]
HUB_ID = "studio-ousia/luke-large-finetuned-conll-2003"


def package_step(project: Path, pipeline: Path, install_check: bool = False) -> Path:
    """Run the project's `package` commands (project.yml) on `pipeline` in a copy of the
    project; without `install_check`, leave out check_package.py and the sdist. RETURNS the
    package folder."""
    from weasel.util import load_project_config

    config = load_project_config(ROOT, interpolate=True)
    (command,) = [cmd for cmd in config["commands"] if cmd["name"] == "package"]
    shutil.copytree(ROOT / "scripts", project / "scripts", ignore=shutil.ignore_patterns("__*"))
    shutil.copytree(pipeline, project / "training" / "luke_ner")
    (project / "packages").mkdir()
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    for line in command["script"]:
        argv = shlex.split(line)
        if not install_check and "scripts/check_package.py" in argv:
            continue
        if not install_check and argv[1:3] == ["-m", "spacy"]:
            argv += ["--build", "none"]
        argv[0] = sys.executable if argv[0] == "python" else argv[0]
        proc = subprocess.run(
            argv, cwd=project, env=env, capture_output=True, text=True, timeout=1500
        )
        assert proc.returncode == 0, f"{line}\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}"
    vars_ = config["vars"]
    return project / "packages" / f"en_{vars_['name']}-{vars_['version']}"


@pytest.fixture(scope="module")
def mluke_pipeline(tiny_mluke, tmp_path_factory) -> Path:
    nlp = make_nlp(tiny_mluke)
    nlp.initialize()
    path = tmp_path_factory.mktemp("mluke_pipeline") / "pipeline"
    nlp.to_disk(path)
    return path


def test_luke_spacy_requirement_asks_for_the_extras_a_tokenizer_needs():
    assert luke_spacy_requirement(["MLukeTokenizer"], "0.1.0") == "luke-spacy[mluke]>=0.1.0,<0.2.0"
    assert luke_spacy_requirement(["LukeTokenizer"], "0.3.2") == "luke-spacy>=0.3.2,<0.4.0"
    both = luke_spacy_requirement(["LukeTokenizer", "MLukeTokenizer"], "0.1.0")
    assert both == "luke-spacy[mluke]>=0.1.0,<0.2.0"


def test_record_requirements_replaces_luke_spacy_and_keeps_the_rest():
    meta = {"requirements": ["spacy-transformers>=1.4.0,<1.5.0", "luke_spacy>=0.1.0,<0.2.0"]}
    record_requirements(meta, ["MLukeTokenizer"])
    assert meta["requirements"][0] == "spacy-transformers>=1.4.0,<1.5.0"
    assert len(meta["requirements"]) == 2
    assert meta["requirements"][1].startswith("luke-spacy[mluke]>=")
    # A second luke_ner component with a LUKE checkpoint keeps the first one's extra.
    record_requirements(meta, ["LukeTokenizer"])
    assert meta["requirements"][1].startswith("luke-spacy[mluke]>=")


def test_checkpoint_meta_of_a_hub_checkpoint():
    meta = checkpoint_meta([HUB_ID], ["LukeTokenizer"])
    assert HUB_ID in meta["description"] and HUB_ID in meta["license"]
    assert meta["url"] == f"https://huggingface.co/{HUB_ID}"
    assert meta["author"].startswith("studio-ousia")
    assert meta["sources"] == [
        {
            "name": HUB_ID,
            "url": f"https://huggingface.co/{HUB_ID}",
            "license": "see the checkpoint's model card",
            "author": "studio-ousia",
        }
    ]
    assert [req.split(">=")[0] for req in meta["requirements"]] == ["luke-spacy"]


@pytest.mark.slow
def test_package_step_of_an_mluke_pipeline_requires_the_extra(mluke_pipeline, tiny_mluke, tmp_path):
    """The project's package step: the meta of the package written by `spacy package`."""
    package = package_step(tmp_path / "project", mluke_pipeline)
    meta = json.loads((package / "meta.json").read_text())
    luke = [req for req in meta["requirements"] if req.startswith(("luke-spacy", "luke_spacy"))]
    assert len(luke) == 1 and luke[0].startswith("luke-spacy[mluke]>="), meta["requirements"]
    assert str(tiny_mluke) in meta["description"]
    assert meta["license"] == f"the license of the checkpoint {tiny_mluke}"
    assert meta["sources"][0]["name"] == str(tiny_mluke)
    assert load_script("check_package").meta_problems(meta) == []


def test_check_package_refuses_an_empty_meta():
    check = load_script("check_package")
    problems = check.meta_problems({"description": "", "license": "", "requirements": []})
    assert problems == ["an empty description", "an empty license", "no requirement on luke-spacy"]


def test_package_meta_keeps_the_pipelines_requirements(tiny_luke, tmp_path):
    nlp = make_nlp(tiny_luke)
    nlp.initialize()
    nlp.meta["requirements"] = ["sentence-splitter>=1.4"]
    nlp.to_disk(tmp_path / "pipeline")
    script = load_script("package_meta")
    assert script.main([str(tmp_path / "pipeline"), str(tmp_path / "meta.json")]) == 0
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert meta["requirements"][0] == "sentence-splitter>=1.4"
    assert meta["requirements"][1].startswith("luke-spacy>=")
    assert spacy.util.split_requirement(meta["requirements"][1])[0] == "luke-spacy"


def test_initialize_records_the_requirement_that_spacy_package_uses(tiny_mluke, tmp_path):
    """`spacy package` without a meta of ours: the pipeline's own meta asks for the extra."""
    from spacy.cli.package import get_meta

    nlp = make_nlp(tiny_mluke)
    nlp.initialize()
    nlp.to_disk(tmp_path / "pipeline")
    requirements = get_meta(tmp_path / "pipeline", {})["requirements"]
    assert any(req.startswith("luke-spacy[mluke]>=") for req in requirements), requirements


@pytest.mark.slow
def test_packaged_mluke_pipeline_installs_and_loads(mluke_pipeline, tmp_path):
    """The whole package step with its install check: pip installs the package in a fresh
    environment with luke-spacy[mluke], so the mLUKE tokenizer's sentencepiece comes along."""
    package = package_step(tmp_path / "project", mluke_pipeline, install_check=True)
    assert list((package / "dist").glob("*.tar.gz"))
