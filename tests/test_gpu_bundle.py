"""The GPU bundle (benchmarks/gpu): what it carries, the results summary, and the CPU
self-check that runs benchmarks/gpu/run.sh in a bare python3.12 venv."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from conftest import SHARED, shared_path

ROOT = Path(__file__).resolve().parents[1]
GPU = ROOT / "benchmarks" / "gpu"
BUDGETS = [1024, 16384]


def gpu_module(name: str):
    spec = importlib.util.spec_from_file_location(f"_gpu_{name}", GPU / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bundle_carries_what_the_image_lacks_or_has_in_another_version():
    bundle = gpu_module("bundle")
    joint = {
        "spacy": ("3.8.18", "https://index/spacy.whl"),
        "click": ("8.5.1", "https://index/click.whl"),
        "typer": ("0.15.0", "https://index/typer.whl"),  # older than the image's
        "numpy": ("2.5.5", "https://index/numpy.whl"),
        "torch": ("2.13.0+image", "file:///tmp/torch.whl"),
        "luke-spacy": ("0.1.0", (ROOT / "dist" / "luke_spacy.whl").as_uri()),
    }
    image = {
        "typer": ("0.29.2", "https://index/typer2.whl"),
        "numpy": ("2.5.5", "https://index/numpy.whl"),
        "torch": ("2.13.0+image", "file:///tmp/torch.whl"),
    }
    carry = bundle.to_carry(joint, image)
    assert list(carry) == ["click", "luke-spacy", "spacy", "typer"]
    lines = bundle.bundle_lines(carry, [str(ROOT / "dist" / "luke_spacy.whl")])
    assert lines == [
        "click==8.5.1",
        str(ROOT / "dist" / "luke_spacy.whl"),
        "spacy==3.8.18",
        "typer==0.15.0",
    ]


def test_image_pins_become_metadata_only_stand_ins(tmp_path):
    bundle = gpu_module("bundle")
    requirements = bundle.image_requirements(["torch==2.13.0", "numpy", "pyyaml"], tmp_path)
    assert requirements == ["torch==2.13.0+image", "numpy", "pyyaml"]
    (wheel,) = tmp_path.glob("*.whl")
    assert wheel.name == "torch-2.13.0+image-py3-none-any.whl"
    names = zipfile.ZipFile(wheel).namelist()
    assert all(name.startswith("torch-2.13.0+image.dist-info/") for name in names)
    metadata = zipfile.ZipFile(wheel).read("torch-2.13.0+image.dist-info/METADATA").decode()
    assert "Requires-Dist" not in metadata and "Version: 2.13.0+image" in metadata


def test_image_list_is_what_the_self_check_installs():
    bundle = gpu_module("bundle")
    image = bundle.read_requirements(GPU / "image.txt")
    assert image[0] == "torch==2.13.0"
    assert {"numpy", "safetensors", "tqdm", "typer", "rich", "requests", "regex"} <= set(image)
    # Assumed to be missing (the image list must not hide them from the bundle):
    assert not {"spacy", "click", "httpx", "transformers"} & set(image)


def write_run(out: Path, failed_step: str = "") -> None:
    """A run.sh output folder as a CPU run leaves it."""
    out.mkdir(parents=True, exist_ok=True)
    steps = ["preflight", "make-model", "speed", "spacy-train", "train-small", "train-small-mixed"]
    (out / "steps.txt").write_text(
        "".join(f"{s} rc={124 if s == failed_step else 0} 5s\n" for s in steps)
    )
    (out / "preflight.log").write_text("python 3.12.1 cuda False torch 2.13.0\n")
    memory = {"peak_memory_kind": "rss_peak", "peak_memory_mib": 900.0}
    results = {"B1": {"words_per_s": 10.0, "peak_memory_extra_mib": 5.0, **memory}}
    for name in ("B2", "ours:exact", "ours:exact+sdpa", "ours:bf16+sdpa"):
        results[name] = {
            "words_per_s": 20.0,
            "x_B1": 2.0,
            "peak_memory_extra_mib": 3.0,
            "agreement_with_B1": {"sentences_identical": 1.0, "sentences_differing": 0},
            **memory,
        }
    budgets = {
        str(b): {"mode": "exact+sdpa", "largest_batch_positions": b - 10, **memory} for b in BUDGETS
    }
    for row in budgets.values():
        row["peak_memory_extra_mib"] = 1.0
    speed = {"data": {"documents": 1}, "results": results, "budgets": budgets}
    (out / "speed.json").write_text(json.dumps(speed))
    log = [{"step": 0, "losses": {"luke_ner": 1.5}}, {"step": 5, "losses": {"luke_ner": 5.0}}]
    (out / "spacy-train.jsonl").write_text("".join(json.dumps(row) + "\n" for row in log))
    for name, mixed in (("train-small", False), ("train-small-mixed", True)):
        report = {"mixed_precision": mixed, "size": "small", "train_words_per_second": 40.0}
        (out / f"{name}.json").write_text(json.dumps(report))


def test_summary_passes_a_complete_cpu_run(tmp_path):
    summary = gpu_module("summary")
    write_run(tmp_path)
    result = summary.summarize(tmp_path, "cpu", BUDGETS)
    assert result["missing"] == [] and result["passed"]
    # spaCy logs the losses summed since the previous row: 1.5 for step 0, 5.0 over 5 updates.
    assert [row["loss_per_update"] for row in result["spacy_train"]["losses"]] == [1.5, 1.0]
    assert result["spacy_train"]["loss_falls"]
    assert summary.main([str(tmp_path), "--device", "cpu", "--budgets", "1024", "16384"]) == 0
    assert json.loads((tmp_path / "results.json").read_text())["passed"]


def test_summary_fails_on_a_failed_step_or_a_missing_figure(tmp_path):
    summary = gpu_module("summary")
    write_run(tmp_path / "a", failed_step="spacy-train")
    result = summary.summarize(tmp_path / "a", "cpu", BUDGETS)
    assert not result["passed"]
    assert result["missing"][0].startswith("step spacy-train did not pass")
    # On CUDA the share of the card's peak is a required figure, and the targets are judged.
    write_run(tmp_path / "b")
    result = summary.summarize(tmp_path / "b", "cuda", BUDGETS)
    assert "B1: share_of_peak" in result["missing"]
    assert result["targets"]["ours:exact+sdpa x_B1 >= 3.0"] is False
    assert summary.main([str(tmp_path / "b"), "--device", "cuda"]) == 1


@pytest.mark.slow
def test_selfcheck_runs_every_step_in_a_bare_python312_venv(tmp_path):
    """benchmarks/gpu/selfcheck.sh: a python3.12 venv with only the image's packages, the
    bundle from prepare.sh, and run.sh on the CPU with a tiny model; every step must pass and
    every figure of the GPU run must be in results.json."""
    find = subprocess.run(
        ["bash", str(GPU / "selfcheck.sh"), "--find-python"], capture_output=True, text=True
    )
    if find.returncode != 0:
        pytest.skip("no python3.12 here")
    for name in ("conll2003", "roberta-bpe", "luke-large-finetuned-conll-2003"):
        shared_path(name)
    env = dict(os.environ, WORK=str(tmp_path), SHARED=str(SHARED), HOST_PYTHON=sys.executable)
    env.pop("PYTHONPATH", None)
    try:
        proc = subprocess.run(
            ["bash", str(GPU / "selfcheck.sh")],
            env=env,
            capture_output=True,
            text=True,
            timeout=2700,
        )
    finally:
        shutil.rmtree(tmp_path / "venv", ignore_errors=True)  # several GB (torch's CUDA build)
    out = tmp_path / "out"
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert set(results["steps"]) == {
        "preflight", "make-model", "speed", "spacy-train", "train-small", "train-small-mixed",
    }  # fmt: skip
    assert all(step["rc"] == 0 for step in results["steps"].values()), results["steps"]
    assert results["missing"] == [] and results["passed"]
    assert "python 3.12" in results["environment"]
    assert set(results["methods"]) == {
        "B1", "B2", "ours:exact", "ours:exact+sdpa", "ours:bf16+sdpa",
    }  # fmt: skip
    assert all(row["words_per_s"] > 0 for row in results["methods"].values())
    assert results["methods"]["ours:exact"]["sentences_identical"] == 1.0
    assert set(results["budgets"]) == {str(b) for b in BUDGETS}
    for budget, row in results["budgets"].items():
        assert 0 < row["largest_batch_positions"] <= int(budget)
    assert results["spacy_train"]["loss_falls"]
    assert {"fp32", "mixed"} == set(results["training"])
    bundle = sum(f.stat().st_size for f in (tmp_path / "bundle").rglob("*") if f.is_file())
    assert bundle < 48 * 2**20
