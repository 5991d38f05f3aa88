"""Pickling and `nlp.pipe(n_process=2)` under fork and spawn: finishes, and matches one process.

Each multiprocessing run happens in a child Python under a hard timeout, so a hang fails the
test instead of stalling the suite.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import spacy

TEXTS = [
    "Peter lives in Paris .",
    "John met Mary in Berlin .",
    "EU rejects German call to boycott British lamb .",
    "Barack Obama visited Tokyo .",
]

SCRIPT = """
import json, multiprocessing, sys
import spacy, torch

if __name__ == "__main__":
    model, method, threads, backend = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    multiprocessing.set_start_method(method, force=True)
    torch.set_num_threads(threads)
    nlp = spacy.blank("en")
    nlp.add_pipe("luke_ner", config={"model": {"name": model}, "backend": backend})
    if sys.argv[5:] != ["cold"]:
        nlp("Peter lives in Paris .")  # the parent has run torch before the workers start
    texts = json.loads(sys.stdin.read())
    docs = nlp.pipe(texts, n_process=2, batch_size=2)
    print(json.dumps([[(e.start, e.end, e.label_) for e in doc.ents] for doc in docs]))
"""


def entities(docs):
    return [[[e.start, e.end, e.label_] for e in doc.ents] for doc in docs]


def make_nlp(path):
    nlp = spacy.blank("en")
    nlp.add_pipe("luke_ner", config={"model": {"name": str(path)}})
    return nlp


def test_pickled_pipeline_predicts_identically(tiny_luke):
    nlp = make_nlp(tiny_luke)
    expected = entities(nlp.pipe(TEXTS))
    clone = pickle.loads(pickle.dumps(nlp))
    assert entities(clone.pipe(TEXTS)) == expected
    # the default fused attention survives the round trip
    from luke_spacy.attention import is_entity_aware_attention_fused
    from luke_spacy.model import get_objects

    model = clone.get_pipe("luke_ner").model
    assert is_entity_aware_attention_fused(get_objects(model).transformer)


def run_n_process_2(checkpoint, tmp_path, *args):
    """Run SCRIPT with these arguments in a child Python under a hard timeout; return the
    finished process and the entities it printed."""
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    env["LUKE_SPACY_CACHE"] = str(tmp_path / "cache")
    env.pop("OMP_NUM_THREADS", None)
    try:
        proc = subprocess.run(
            [sys.executable, str(script), str(checkpoint), *args],
            input=json.dumps(TEXTS),
            capture_output=True,
            text=True,
            timeout=240,
            env=env,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"nlp.pipe(n_process=2) with {args} did not finish within 240 s")
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc, json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_n_process_2_after_a_parent_call(tiny_luke, tmp_path, method, backend):
    """Two torch threads in the parent, one call there, then two workers: under fork the
    workers used to hang in libgomp, under spawn they died unpickling the pipeline. ONNX
    Runtime's session does not survive a fork either, nor pickle."""
    if backend == "onnxruntime":
        pytest.importorskip("onnxruntime")
    _, got = run_n_process_2(tiny_luke, tmp_path, method, "2", backend)
    assert got == entities(make_nlp(tiny_luke).pipe(TEXTS))


@pytest.mark.slow
def test_n_process_2_on_onnxruntime_exports_once_without_a_parent_call(tiny_luke, tmp_path):
    """Workers forked before the parent exported: one exports the checkpoint, the other
    waits for it (the cache entry's lock) and loads that export."""
    pytest.importorskip("onnxruntime")
    proc, got = run_n_process_2(tiny_luke, tmp_path, "fork", "1", "onnxruntime", "cold")
    assert got == entities(make_nlp(tiny_luke).pipe(TEXTS))
    assert proc.stderr.count("luke_ner: exporting '") == 1, proc.stderr[-2000:]
    assert len([p for p in (tmp_path / "cache" / "onnx").iterdir() if p.is_dir()]) == 1


def test_a_pickled_pipeline_keeps_its_threads(tiny_luke):
    """Only a fork needs one thread: a pipeline unpickled in a fresh process (spawn, or loaded
    from a pickle later) does not count as forked from the process that pickled it."""
    nlp = make_nlp(tiny_luke)
    nlp(TEXTS[0])
    clone = pickle.loads(pickle.dumps(nlp))
    assert clone.get_pipe("luke_ner").runtime.backend._pid is None
