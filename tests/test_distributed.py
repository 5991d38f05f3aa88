"""The Ray Data engine: the batch class on pyarrow tables, and whole jobs on a local cluster.

The cluster tests run one child process (this file as a script) under a hard timeout: it starts
a local Ray cluster with oversubscribed logical CPUs, runs `luke-spacy annotate --engine ray`
jobs in it, and the test checks what they wrote.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List

import pytest

pa = pytest.importorskip("pyarrow")
pytest.importorskip("ray")

from luke_spacy.cli import main  # noqa: E402
from luke_spacy.distributed import (  # noqa: E402
    CRASH_ENV,
    CRASH_MARKERS_ENV,
    ITEM_COLUMNS,
    METADATA_KEY,
    OUTPUT_SCHEMA,
    RECORD_SCHEMA,
    SOURCE_COLUMN,
    LukeAnnotator,
    jsonl_tables,
    parquet_tables,
    parse_records,
    read_output,
)
from luke_spacy.random_model import SAMPLE_TEXT  # noqa: E402

pytestmark = pytest.mark.ray

CLUSTER_TIMEOUT = 480  # seconds for the child process with all cluster jobs
FILES, PER_FILE = 3, 100


@pytest.fixture(scope="module")
def annotator(tiny_luke) -> LukeAnnotator:
    return LukeAnnotator(model=str(tiny_luke), threads=1, id_field="id")


def local_records(capsys, model: Path, inputs: List[Path]) -> List[Dict[str, Any]]:
    """The local engine's records for JSONL inputs, in input order."""
    argv = ["annotate", "--model", str(model), "--no-progress"]
    for path in inputs:
        argv += ["-i", str(path)]
    code = main(argv)
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return [json.loads(line) for line in captured.out.splitlines()]


def write_jsonl(path: Path, records: List[Any]) -> Path:
    path.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
    return path


def texts(n: int, offset: int = 0) -> List[str]:
    return [f"{SAMPLE_TEXT[i % len(SAMPLE_TEXT)]} ({i})" for i in range(offset, offset + n)]


def assert_same_entities(entities: List[Dict[str, Any]], expected: List[Dict[str, Any]]) -> None:
    """Same spans and labels; scores equal up to float32 rounding, which depends on what
    else shares the padded forward batch (run with the same batches, they are identical)."""

    def span(entity: Dict[str, Any]) -> tuple:
        return entity["text"], entity["label"], entity["start"], entity["end"]

    assert [span(entity) for entity in entities] == [span(entity) for entity in expected]
    for entity, other in zip(entities, expected):
        assert entity["score"] == pytest.approx(other["score"], abs=1e-5)


def test_annotator_matches_local_engine(annotator, tiny_luke, tmp_path, capsys):
    docs = texts(12)
    path = write_jsonl(tmp_path / "docs.jsonl", [{"text": t, "n": i} for i, t in enumerate(docs)])
    local = local_records(capsys, tiny_luke, [path])
    table = pa.table({"id": [f"d{i}" for i in range(12)], "text": docs, "n": list(range(12))})
    out = annotator(table)
    assert out.schema.equals(OUTPUT_SCHEMA)  # metadata aside
    rows = out.to_pylist()
    assert [row["id"] for row in rows] == [f"d{i}" for i in range(12)]
    assert [row["entities"] for row in rows] == [record["entities"] for record in local]
    assert any(row["entities"] for row in rows)
    assert [json.loads(row["meta"]) for row in rows] == [{"n": i} for i in range(12)]
    assert all(row["error"] is None for row in rows)
    metadata = json.loads(out.schema.metadata[METADATA_KEY])
    assert metadata["model"] == str(tiny_luke)
    assert metadata["components"]["luke_ner"]["context"] == "document"


def test_bad_records_become_error_rows(annotator, tiny_luke, tmp_path, capsys):
    lines = [
        json.dumps({"id": "good", "text": SAMPLE_TEXT[0]}).encode(),
        b'{"id": "broken", "text": ',
        b"",  # blank lines are skipped, and still counted in FILE:LINE
        json.dumps(["not", "an", "object"]).encode(),
        json.dumps({"id": "no-text"}).encode(),
        json.dumps({"id": "number", "text": 7}).encode(),
        b"\xff\xfe{}",
        json.dumps({"text": "no id"}).encode(),
        json.dumps({"id": 5, "text": SAMPLE_TEXT[1], "extra": {"a": 1}}).encode(),
    ]
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    with open_stream(path) as f:
        (table,) = jsonl_tables(f, str(path), "text")
    rows = annotator(table).to_pylist()
    where = [f"{path}:{n}" for n in (2, 4, 7, 8)]
    assert [row["id"] for row in rows] == ["good", where[0], where[1], "no-text", "number"] + [
        where[2],
        where[3],
        "5",
    ]
    assert [row["error"] is None for row in rows] == [True] + [False] * 6 + [True]
    assert all(row["entities"] is None for row in rows[1:-1])
    assert rows[6]["error"] == "no 'id' field (the id)" and rows[6]["text"] == "no id"
    assert rows[-1]["text"] == SAMPLE_TEXT[1]
    assert json.loads(rows[-1]["meta"]) == {"extra": {"a": 1}}
    # The reader's errors are the local engine's, word for word.
    assert main(["annotate", "--model", str(tiny_luke), "-i", str(path), "--on-error", "record"])
    local = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    local_errors = {record["source"]: record["error"] for record in local if "error" in record}
    assert len(local_errors) == 5
    assert [row["error"] for row in rows[1:6]] == [
        local_errors[source] for source in sorted(local_errors, key=lambda s: int(s.split(":")[-1]))
    ]
    alone = annotator(pa.table({"id": ["x"], "text": [SAMPLE_TEXT[0]]})).to_pylist()[0]
    assert_same_entities(rows[0]["entities"], alone["entities"])


def test_empty_batches_keep_the_schema(annotator):
    for table in (
        RECORD_SCHEMA.empty_table(),
        pa.table({"id": pa.array([], pa.string()), "text": pa.array([], pa.string())}),
        pa.table({name: pa.array([], pa.string()) for name in (SOURCE_COLUMN, *ITEM_COLUMNS)}),
    ):
        out = annotator(table)
        assert out.num_rows == 0 and out.schema.equals(OUTPUT_SCHEMA)
    # Rows without entities keep the entity type too.
    out = annotator(pa.table({"id": ["e"], "text": [""]}))
    assert out.schema.equals(OUTPUT_SCHEMA) and out["entities"].to_pylist() == [[]]


def open_stream(path: Path) -> Any:
    """A file as Ray's readers open it: a stream that cannot seek."""
    from pyarrow.fs import LocalFileSystem

    return LocalFileSystem().open_input_stream(str(path))


def test_readers_give_stable_ids(tmp_path):
    import pyarrow.parquet as pq

    path = tmp_path / "docs.jsonl"
    path.write_bytes(b'{"text": "a"}\r\n\n  \n{"text": "b", "n": 1}\n\xff\xfe\n')
    with open_stream(path) as f:
        (table,) = jsonl_tables(f, str(path), "text")
    assert table[SOURCE_COLUMN].to_pylist() == [f"{path}:1", f"{path}:4", f"{path}:5"]
    assert table["_text"].to_pylist() == ["a", "b", None]
    assert table["_meta"].to_pylist() == [None, '{"n": 1}', None]
    assert "not UTF-8" in table["_error"][2].as_py()
    parquet = tmp_path / "docs.parquet"
    pq.write_table(pa.table({"text": ["x", "y"], "n": [1, 2]}), parquet)
    with open_stream(parquet) as f:
        (table,) = parquet_tables(f, str(parquet))
    assert table.column_names == ["text", "n", SOURCE_COLUMN]
    assert table[SOURCE_COLUMN].to_pylist() == [f"{parquet}:1", f"{parquet}:2"]
    rows = parse_records(table, id_field=None).to_pylist()
    assert rows[1] == {"id": f"{parquet}:2", "text": "y", "meta": '{"n": 2}', "error": None}


def test_skip_ids_and_id_column_checks():
    table = pa.table({"id": ["a", "b", "c"], "text": ["x", "y", "z"]})
    kept = parse_records(table, skip_ids=pa.array(["b"]))
    assert kept["id"].to_pylist() == ["a", "c"]
    with pytest.raises(ValueError, match="no id column 'doc_id'"):
        parse_records(table, id_field="doc_id")
    with pytest.raises(ValueError, match="no id"):
        parse_records(table, id_field=None)


def test_a_text_that_raises_is_retried_alone(tiny_luke):
    from spacy.language import Language

    @Language.component("test_raise_on_boom")
    def raise_on_boom(doc):
        if "BOOM" in doc.text:
            raise ValueError("boom")
        return doc

    annotator = LukeAnnotator(model=str(tiny_luke), threads=1)
    annotator.nlp.add_pipe("test_raise_on_boom", first=True)
    docs = texts(5)
    docs[2] = "BOOM goes Paris ."
    rows = annotator(pa.table({"id": list("abcde"), "text": docs})).to_pylist()
    assert rows[2]["error"] == "the pipeline failed on this text: ValueError: boom"
    assert rows[2]["entities"] is None and rows[2]["text"] == docs[2]
    clean = LukeAnnotator(model=str(tiny_luke), threads=1)
    for i in (0, 1, 3, 4):  # run alone, as each was retried
        alone = clean(pa.table({"id": ["x"], "text": [docs[i]]}))["entities"].to_pylist()[0]
        assert rows[i]["entities"] == alone


def test_texts_longer_than_max_length_are_annotated_as_locally(tiny_luke, request):
    """Both engines load through `load_pipeline`, which lifts spaCy's `max_length` (luke_ner
    streams long Docs): a long text gets its entities, not an error row."""
    docs = texts(3)
    clean = LukeAnnotator(model=str(tiny_luke), threads=1)
    expected = clean(pa.table({"id": list("abc"), "text": docs})).to_pylist()
    assert min(len(text) for text in docs) > request.getfixturevalue("small_max_length")
    annotator = LukeAnnotator(model=str(tiny_luke), threads=1)
    rows = annotator(pa.table({"id": list("abc"), "text": docs})).to_pylist()
    assert [row["error"] for row in rows] == [None, None, None]
    assert rows == expected


def test_cuda_out_of_memory_halves_the_budget_then_gives_up(tiny_luke):
    import torch
    from spacy.language import Language

    annotator = LukeAnnotator(model=str(tiny_luke), threads=1)
    component = annotator.components[0]
    seen = []

    @Language.component("test_oom")
    def oom(doc):
        budget = component.settings.max_batch_items  # what the forward batching reads
        seen.append(budget)
        if budget > 1024 or "HUGE" in doc.text:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 1 GiB")
        return doc

    annotator.nlp.add_pipe("test_oom", first=True)
    docs = texts(3)
    rows = annotator(pa.table({"id": list("abc"), "text": docs})).to_pylist()
    assert all(row["error"] is None for row in rows)
    assert sorted(set(seen)) == [1024, 2048, 4096]
    assert component.settings.max_batch_items == 4096  # restored after the batch
    assert component.cfg["max_batch_items"] == 4096
    seen.clear()
    docs[1] = "HUGE text ."
    rows = annotator(pa.table({"id": list("abc"), "text": docs})).to_pylist()
    assert [row["error"] is None for row in rows] == [True, False, True]
    assert rows[1]["error"].startswith(
        "the pipeline failed on this text: OutOfMemoryError: CUDA out of memory"
    )
    assert min(seen) == 128  # halved down to MIN_BATCH_ITEMS before giving up on the text
    assert component.cfg["max_batch_items"] == 4096


def test_engine_ray_argument_errors(capsys, tmp_path):
    assert main(["annotate", "--engine", "ray", "some text"]) == 2
    assert "not texts given as arguments" in capsys.readouterr().err
    missing = str(tmp_path / "nothing*.jsonl")
    assert main(["annotate", "--engine", "ray", "-i", missing, "-o", str(tmp_path)]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(["annotate", "--engine", "ray", "--actors", "3:1", "-i", "x"]) == 2


# Whole jobs on a local cluster


def run_jobs(jobs: List[Dict[str, Any]], markers: Path) -> None:
    """The child process: a local cluster, then each job's CLI arguments in turn."""
    import ray

    from luke_spacy.cli import main as cli_main

    os.environ[CRASH_MARKERS_ENV] = str(markers)
    # Workers inherit the environment of the cluster started here: the crash hooks.
    hooks = ",".join(f"{id_}={action}" for job in jobs for id_, action in job["crash"].items())
    os.environ[CRASH_ENV] = hooks
    # Oversubscribed logical CPUs: a pool that took every core would starve the read stage.
    ray.init(num_cpus=8, include_dashboard=False, log_to_driver=False)
    results = []
    try:
        for job in jobs:
            code = cli_main(job["argv"])
            out = Path(job["argv"][job["argv"].index("--output") + 1])
            results.append({"code": code, "files": sorted(str(p) for p in out.glob("*"))})
    finally:
        ray.shutdown()
    print(json.dumps(results))


def output_rows(folder: Path) -> List[Dict[str, Any]]:
    files = [str(path) for path in sorted(folder.glob("*"))]
    return read_output(files, ["id", "entities", "error"]).to_pylist()


@pytest.mark.slow
def test_jobs_on_a_local_cluster(tiny_luke, tmp_path, capsys):
    import pyarrow.parquet as pq

    inputs: Dict[str, List[Path]] = {}
    for job in ("plain", "crash", "abort"):
        folder = tmp_path / job
        folder.mkdir()
        inputs[job] = []
        for f in range(FILES):
            records = [{"text": t} for t in texts(PER_FILE, f * 100)]
            if job == "crash":  # Parquet in, JSON lines out
                inputs[job].append(folder / f"part{f}.parquet")
                pq.write_table(pa.Table.from_pylist(records), inputs[job][-1])
            else:
                inputs[job].append(write_jsonl(folder / f"part{f}.jsonl", records))
    local = local_records(capsys, tiny_luke, inputs["plain"])
    expected = {
        f"{path}:{line}": record["entities"]
        for i, path in enumerate(inputs["plain"])
        for line, record in enumerate(local[i * PER_FILE : (i + 1) * PER_FILE], 1)
    }
    common = ["--model", str(tiny_luke), "--batch-size", "16", "--cpus-per-actor", "1"]

    def argv(job: str, *more: str) -> List[str]:
        paths = [arg for path in inputs[job] for arg in ("-i", str(path))]
        out = str(tmp_path / f"{job}-out")
        return ["annotate", "--engine", "ray", *paths, "--output", out, *common, *more]

    crash_id = f"{inputs['crash'][1]}:50"
    abort_id = f"{inputs['abort'][2]}:90"
    jobs = [
        {"argv": argv("plain", "--actors", "1:2"), "crash": {}},
        {
            "argv": argv("crash", "--actors", "2:2", "--output-format", "jsonl"),
            "crash": {crash_id: "exit"},
        },
        {"argv": argv("abort", "--actors", "1:1"), "crash": {abort_id: "raise"}},
        {"argv": argv("abort", "--resume", str(tmp_path / "abort-out")), "crash": {}},
    ]
    markers = tmp_path / "markers"
    markers.mkdir()
    spec = tmp_path / "jobs.json"
    spec.write_text(json.dumps({"jobs": jobs, "markers": str(markers)}), encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    child = subprocess.run(
        [sys.executable, __file__, str(spec)],
        capture_output=True,
        text=True,
        timeout=CLUSTER_TIMEOUT,
        env=env,
    )
    assert child.returncode == 0, child.stderr[-4000:]
    results = json.loads(child.stdout.strip().splitlines()[-1])
    assert [result["code"] for result in results] == [0, 0, 1, 0], child.stderr[-4000:]

    # Every id exactly once, with the local engine's entities.
    rows = output_rows(tmp_path / "plain-out")
    assert sorted(row["id"] for row in rows) == sorted(expected)
    for row in rows:
        assert_same_entities(row["entities"], expected[row["id"]])
    assert "rows in 300, rows out 300, error rows 0" in child.stderr

    # The actor exited on one batch: Ray restarted it and retried the batch.
    assert len(list(markers.iterdir())) == 2  # the exit and the abort hooks fired
    assert all(name.endswith(".json") for name in results[1]["files"])
    rows = output_rows(tmp_path / "crash-out")
    ids = [row["id"] for row in rows]
    assert len(ids) == len(set(ids)) == FILES * PER_FILE and crash_id in ids
    assert all(row["error"] is None for row in rows)

    # The aborted job wrote some rows; the resumed one wrote exactly the others.
    first = read_output(results[2]["files"], ["id"])
    ids = [row["id"] for row in output_rows(tmp_path / "abort-out")]
    assert 0 < first.num_rows < FILES * PER_FILE
    assert len(ids) == len(set(ids)) == FILES * PER_FILE
    assert f"already done {first.num_rows}" in child.stderr


if __name__ == "__main__":
    spec = json.loads(Path(sys.argv[1]).read_text(encoding="utf-8"))
    run_jobs(spec["jobs"], Path(spec["markers"]))
