"""Every benchmark script, and scripts/throughput.py, runs end to end on a tiny model, so none
can break unseen when the component changes (slow: each is a fresh Python process).

benchmarks/gpu/ needs a CUDA device and python3.12 (see benchmarks/README.md) and is not run.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict

import pytest
import spacy
from conftest import shared_path

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"

pytestmark = pytest.mark.slow


def run_script(script: Path, *args: str, out: Path, timeout: int = 600) -> Dict[str, Any]:
    """Run a script in a fresh offline Python process; its JSON report."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    proc = subprocess.run(
        [sys.executable, str(script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(out.read_text(encoding="utf8"))


@pytest.fixture(scope="module")
def conll_test() -> Path:
    return shared_path("conll2003", "eng.testb")


def test_speed(tiny_luke_real_bpe, conll_test, tmp_path):
    pytest.importorskip("onnxruntime")
    out = tmp_path / "speed.json"
    report = run_script(
        BENCHMARKS / "speed.py",
        *("--model", str(tiny_luke_real_bpe), "--conll", str(conll_test), "--max-docs", "1"),
        *("--modes", "exact", "exact+sdpa", "ort", "ort-int8", "--threads", "1"),
        *("--onnx-dir", str(tmp_path / "onnx"), "--rounds", "2", "--baseline-rounds", "1"),
        *("--out", str(out)),
        out=out,
    )
    results = report["results"]
    assert {"B1", "B2", "ours:exact", "ours:exact+sdpa", "ours:ort", "ours:ort-int8"} <= set(
        results
    )
    for mode in ("ours:exact", "ours:exact+sdpa", "ours:ort"):
        assert results[mode]["agreement_with_B1"]["sentences_identical"] == 1.0
        assert results[mode]["words_per_s"] > 0
    assert results["ours:ort"]["agreement_with_reference"]["sentences_identical"] == 1.0
    assert results["ours:ort"]["max_abs_logit_diff_vs_reference"] < 1e-4
    assert results["ours:ort-int8"]["x_reference_median"] > 0
    assert report["onnx_exports"]["int8"]["manifest"]["precision"] == "int8"
    assert len(report["environment"]["loadavg_rounds"]) == 2
    assert len(results["B1"]["seconds_all_rounds"]) == 1
    assert len(results["ours:ort"]["seconds_all_rounds"]) == 2
    assert report["logits_check"]["ours:ort"]["spans"] > 100


def test_onnx_accuracy(tiny_luke_real_bpe, conll_test, tmp_path):
    pytest.importorskip("onnxruntime")
    corpus = tmp_path / "corpus"
    subprocess.run(
        [sys.executable, "-m", "luke_spacy.conll", str(conll_test.parent), str(corpus)]
        + ["--max-docs", "2"],
        check=True,
        capture_output=True,
    )
    nlp = spacy.blank("en")
    nlp.add_pipe("luke_ner", config={"model": {"name": str(tiny_luke_real_bpe)}})
    nlp.initialize()
    nlp.to_disk(tmp_path / "pipeline")
    out = tmp_path / "accuracy.json"
    report = run_script(
        BENCHMARKS / "onnx_accuracy.py",
        *(str(tmp_path / "pipeline"), str(corpus / "test.spacy")),
        *("--onnx-dir", str(tmp_path / "onnx"), "--threads", "1", "--out", str(out)),
        out=out,
    )
    results = report["results"]
    assert results["onnxruntime float32"]["same_entities_as_torch"]["share"] == 1.0
    assert results["onnxruntime float32"]["f_minus_torch_points"] == 0.0
    assert results["onnxruntime int8"]["same_entities_as_onnxruntime_float32"]["sentences"] > 10


def test_paired(tiny_luke_real_bpe, conll_test, tmp_path):
    out = tmp_path / "paired.json"
    report = run_script(
        BENCHMARKS / "paired.py",
        *("--model", str(tiny_luke_real_bpe), "--conll", str(conll_test), "--max-docs", "1"),
        *("--threads", "1", "--out", str(out)),
        out=out,
    )
    assert report["batches"] >= 1 and report["passes"] >= report["batches"]
    assert set(report["seconds"]) == {"B1", "ours:eager", "ours:sdpa"}


def test_memory_long_docs_and_stream(tiny_luke_real_bpe, conll_test, tmp_path):
    out = tmp_path / "memory.json"
    report = run_script(
        BENCHMARKS / "memory.py",
        *("--model", str(tiny_luke_real_bpe), "--conll", str(conll_test)),
        *("--chars", "2000", "20000", "--threads", "1", "--out", str(out)),
        out=out,
    )
    assert [run["chars"] >= 2000 for run in report["runs"]] == [True, True]
    assert report["verdict"]["within_batch_budget"] is True
    out = tmp_path / "stream.json"
    report = run_script(
        BENCHMARKS / "memory.py",
        *("--model", str(tiny_luke_real_bpe), "--stream-docs", "20", "--cache-sizes", "100"),
        *("--threads", "1", "--out", str(out)),
        out=out,
    )
    assert report["verdict"]["100"]["cached_types_at_end"] <= 100
    if importlib.util.find_spec("onnxruntime") is None:
        return
    out = tmp_path / "backends.json"
    report = run_script(
        BENCHMARKS / "memory.py",
        *("--model", str(tiny_luke_real_bpe), "--conll", str(conll_test), "--chars", "2000"),
        *("--modes", "exact+sdpa", "ort", "--onnx-dir", str(tmp_path / "onnx")),
        *("--threads", "1", "--out", str(out)),
        out=out,
    )
    for mode in ("exact+sdpa", "ort"):
        row = report["modes"][mode]
        assert row["process_peak_rss_mib"] >= row["peak_rss_mib"] > 0


def test_tokenization(tiny_luke_real_bpe, tmp_path):
    out = tmp_path / "tokenization.json"
    report = run_script(
        BENCHMARKS / "tokenization.py",
        *("--model", str(tiny_luke_real_bpe), "--conll-dir", str(shared_path("conll2003"))),
        *("--rounds", "1", "--out", str(out)),
        out=out,
    )
    assert report["identical"] is True and report["words"] > 30_000


def test_training(tmp_path):
    out = tmp_path / "training.json"
    report = run_script(
        BENCHMARKS / "training.py",
        *("--conll", str(shared_path("conll2003")), "--bpe-dir", str(shared_path("roberta-bpe"))),
        *("--max-steps", "2", "--dev-docs", "1", "--batch-words", "100"),
        *("--context", "sentence", "--threads", "1", "--out", str(out)),
        out=out,
    )
    assert report["steps"] == 2 and 0.0 <= report["dev_ents_f"] <= 1.0


@pytest.mark.ray
def test_distributed(tiny_luke, conll_test, tmp_path):
    pytest.importorskip("ray")
    out = tmp_path / "distributed.json"
    report = run_script(
        BENCHMARKS / "distributed.py",
        *("--model", str(tiny_luke), "--conll", str(conll_test), "--docs", "2"),
        *("--batch-size", "2", "--skip-scheduling", "--out", str(out)),
        # The node-loss run is test_distributed.py::test_node_loss; small resumes here.
        *("--skip-node-loss", "--resume-sizes", "0,1000"),
        out=out,
    )
    assert report["local"]["docs_per_s"] > 0
    assert report["ray"]["actors_1"]["docs_per_s"] > 0


def test_throughput_script(tiny_luke, tmp_path):
    from spacy.tokens import Doc, DocBin

    nlp = spacy.blank("en")
    nlp.add_pipe("luke_ner", config={"model": {"name": str(tiny_luke)}})
    nlp.initialize()
    nlp.to_disk(tmp_path / "pipeline")
    words = "Peter Blackburn met Mary in Paris .".split()
    doc = Doc(nlp.vocab, words=words, sent_starts=[True] + [False] * (len(words) - 1))
    DocBin(docs=[doc, doc]).to_disk(tmp_path / "data.spacy")
    out = tmp_path / "speed.json"
    report = run_script(
        ROOT / "scripts" / "throughput.py",
        *(str(tmp_path / "pipeline"), str(tmp_path / "data.spacy")),
        *("--output", str(out), "--no-progress"),
        out=out,
    )
    assert report["docs"] == 2 and report["words_per_second"] > 0
    assert report["luke_ner"]["forward_passes"] == 2
