"""Every benchmark script, and scripts/throughput.py, runs end to end on a tiny model, so none
can break unseen when the component changes (slow: each is a fresh Python process); the
training recipes (benchmarks/*.sh) run as smoke runs, with the report scripts they call.

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


# ---------------------------------------------------------------------------------------------
# The training recipes (train_*.sh, tune_conll_small.sh) as smoke runs: a few steps of a model
# smaller than the recipes' own, on a few documents. Each recipe runs its report script (and
# tune_conll_small.sh runs calibration.py), so these also cover those scripts end to end.

# The recipes' model config (benchmarks/conll-small-config.json), narrower and with one layer.
TINY_SIZES = {
    "hidden_size": 32,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "entity_emb_size": 32,
}


def run_recipe(script: str, timeout: int = 300, **env: Any) -> str:
    """Run a benchmarks/ recipe with bash and its environment overrides; its output.

    The recipe's commands are killed with it on a timeout (its own process group)."""
    bindir = str(Path(sys.executable).parent)  # the recipes call `python` and `luke-spacy`
    full_env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    full_env.update({key: str(value) for key, value in env.items()})
    full_env["PATH"] = bindir + os.pathsep + full_env.get("PATH", "")
    proc = subprocess.Popen(
        ["bash", str(BENCHMARKS / script)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=full_env,
        cwd=ROOT,
        start_new_session=True,
    )
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        proc.communicate()
        raise
    assert proc.returncode == 0, output[-6000:]
    return output


def read_json(path: Path) -> Dict[str, Any]:
    return json.loads(path.read_text(encoding="utf8"))


def assert_fraction(*values: Any) -> None:
    for value in values:
        assert isinstance(value, float) and 0.0 <= value <= 1.0, value


@pytest.fixture(scope="module")
def tiny_model_config(tmp_path_factory) -> Path:
    config = read_json(BENCHMARKS / "conll-small-config.json")
    config.update(TINY_SIZES)
    path = tmp_path_factory.mktemp("model-config") / "config.json"
    path.write_text(json.dumps(config), encoding="utf8")
    return path


@pytest.fixture(scope="module")
def conll_small(tiny_model_config, tmp_path_factory) -> Dict[str, Path]:
    """One smoke run of train_conll_small.sh: 4 steps on 1 document per split."""
    shared_path("conll2003", "eng.train")
    shared_path("roberta-bpe")
    tmp = tmp_path_factory.mktemp("conll-small")
    run = {"out": tmp / "run", "results": tmp / "conll-small-train.json"}
    run_recipe(
        "train_conll_small.sh",
        OUT=run["out"],
        RESULTS=run["results"],
        MODEL_CONFIG=tiny_model_config,
        MAX_DOCS=1,
        STEPS=4,
        EVAL_FREQ=2,
        WARMUP=1,
        BATCH_WORDS=200,
    )
    return run


def test_train_conll_small_recipe(conll_small):
    out = conll_small["out"]
    for path in ("init/config.json", "model-best/config.cfg", "model-last/luke_ner/cfg"):
        assert (out / path).exists(), path
    report = read_json(conll_small["results"])
    assert report["model"] == TINY_SIZES
    training = report["training"]
    assert training["max_steps"] == 4 and training["eval_frequency"] == 2
    assert training["steps_done"] == 4
    assert [row["step"] for row in report["log"]] == [0, 2, 4]
    assert training["best_step"] in (0, 2, 4) and training["train_seconds"] >= 0
    assert report["component"]["context"] == "sentence"
    counts = report["corpus_counts"]
    assert set(counts) == {"train", "dev", "test"}
    assert all(split["documents"] == 1 for split in counts.values())
    for split in ("dev", "test"):
        assert_fraction(*(report[split][m] for m in "prf"))
    # evaluate_with.py: the same model-best with document context at inference
    other = report["test_document_context"]
    assert other["settings"] == {"context": "document"}
    assert_fraction(other["p"], other["r"], other["f"])


def test_tune_conll_small_recipe_and_calibration(conll_small, tmp_path):
    model = conll_small["out"] / "model-best"
    out, results = tmp_path / "thresholds", tmp_path / "conll-small-thresholds.json"
    run_recipe(
        "tune_conll_small.sh",
        MODEL=model,
        CORPUS=conll_small["out"] / "corpus",
        OUT=out,
        RESULTS=results,
    )
    calibration = read_json(out / "metrics" / "test-calibration.json")
    pipelines = calibration["pipelines"]
    assert list(pipelines) == [str(model), str(out / "tuned"), str(out / "tuned-no-nil-veto")]
    assert pipelines[str(model)]["nil_veto"] is True
    assert pipelines[str(out / "tuned-no-nil-veto")]["nil_veto"] is False
    for name in ("tuned", "tuned-no-nil-veto"):
        tuned = pipelines[str(out / name)]
        # the tuned pipeline's settings as saved: a threshold per label, a fitted temperature
        assert set(tuned["threshold"]) == {"PER", "ORG", "LOC", "MISC"}
        assert tuned["temperature"] > 0
    for row in pipelines.values():
        assert_fraction(row["ece"], row["p"], row["r"], row["f"])
        assert row["mean_score"] == 0.0 or 0.0 < row["mean_score"] <= 1.0
        assert row["predicted"] >= row["tp"] and row["gold"] > 0
    report = read_json(results)
    assert report["test_before"]["ece"] == pipelines[str(model)]["ece"]
    for name in ("tuned", "tuned-no-nil-veto"):
        run = report[name]
        assert run["settings"]["nil_veto"] is (name == "tuned")
        assert run["test_after"]["ece"] == pipelines[str(out / name)]["ece"]
        assert_fraction(run["test_after"]["f"], run["dev_after"]["(all)"]["f"])
        # the dev table after tuning is decoded with the thresholds the pipeline was saved with
        after = {k: row["threshold"] for k, row in run["dev_after"].items() if k != "(all)"}
        assert after == run["settings"]["threshold"]
        assert "temperature" in run["calibration"]


def test_train_genia_spancat_and_luke_recipes(tiny_model_config, tmp_path):
    if not Path("/usr/bin/time").exists():
        pytest.skip("the GENIA recipes time `spacy train` with GNU time (/usr/bin/time)")
    shared_path("genia", "dev.jsonlines")
    shared_path("roberta-bpe")
    spancat, spancat_results = tmp_path / "spancat", tmp_path / "genia-spancat.json"
    docs = {"MAX_DOCS": 3, "HOLDOUT": 1}
    run_recipe(
        "train_genia_spancat.sh",
        OUT=spancat,
        RESULTS=spancat_results,
        MAX_STEPS=4,
        EVAL_FREQ=2,
        **docs,
    )
    report = read_json(spancat_results)
    assert report["config"]["training"]["max_steps"] == 4
    assert report["training"]["steps_done"] == 4 and report["training"]["cpu_seconds"] > 0
    assert [row["step"] for row in report["log"]] == [0, 2, 4]
    counts = report["data"]["counts"]
    assert counts["dev-train"]["documents"] == 2 and counts["dev-holdout"]["documents"] == 1
    assert_fraction(*(report["test_spacy_evaluate"][m] for m in "prf"))
    score = report["test_genia_score"]
    assert score["gold"] == counts["test"]["entities"] > 0
    assert_fraction(score["p"], score["r"], score["f"], score["inner"]["recall"])

    # nested LUKE, with spancat's results of the run above beside it in its report
    luke, luke_results = tmp_path / "luke", tmp_path / "genia-luke.json"
    run_recipe(
        "train_genia_luke.sh",
        OUT=luke,
        RESULTS=luke_results,
        SPANCAT=spancat_results,
        MODEL_CONFIG=tiny_model_config,
        STEPS=4,
        EVAL_FREQ=2,
        **docs,
    )
    report = read_json(luke_results)
    assert report["model"] == {k: TINY_SIZES[k] for k in report["model"]}
    assert report["training"]["steps_done"] == 4 and report["training"]["max_steps"] == 4
    assert report["component"]["nested_spans_key"] == "genia"
    assert report["component"]["gold_spans_key"] == "genia"
    systems = [row["system"] for row in report["table"]]
    assert systems[2] == "spancat (benchmarks/train_genia_spancat.sh)"
    assert len(systems) == 5  # nested, ents, spancat, and the two tuned on dev-holdout
    for row in report["table"]:
        assert_fraction(row["p"], row["r"], row["f"], row["inner_recall"], row["outer_recall"])
    assert report["table"][2]["f"] == score["f"]
    gold = report["data"]["counts"]["test"]["entities"]
    for name in ("test_nested_group", "test_ents"):
        assert report[name]["gold"] == gold
    tuned = report["tuned_on_holdout"]
    assert tuned["settings"]["nil_veto"] is False
    assert tuned["test_nested"]["gold"] == tuned["test_flat"]["gold"] == gold
