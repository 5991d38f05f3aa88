"""The Ray Data engine: the batch class on pyarrow tables, and whole jobs on a local cluster.

The cluster tests run one child process (this file as a script) under a hard timeout: it starts
a local Ray cluster with oversubscribed logical CPUs, runs `luke-spacy annotate --engine ray`
jobs in it, and the test checks what they wrote. Faults are injected from here: a subclass of
`LukeAnnotator` that exits its process or raises on a chosen id, and (benchmarks/distributed.py,
run by `test_node_loss`) a worker node of a three-node cluster killed while the job runs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List

import pytest

pa = pytest.importorskip("pyarrow")
pytest.importorskip("ray")

# The local engine's hostile JSONL lines (tests/test_cli.py), for the same checks here.
from test_cli import bad_inputs, jsonl_lines  # noqa: E402, F401

from luke_spacy import distributed  # noqa: E402
from luke_spacy.cli import main  # noqa: E402
from luke_spacy.distributed import (  # noqa: E402
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

ROOT = Path(__file__).resolve().parents[1]
CLUSTER_TIMEOUT = 480  # seconds for the child process with all cluster jobs
NODE_LOSS_TIMEOUT = 600  # seconds for the three-node cluster run
FILES, PER_FILE = 3, 100
# Lines that broke the Ray engine but not the local one (issue 17 items 3 and 10): lone
# surrogates in fields, keys and text (legal JSON escapes, not UTF-8), and numbers JSON has no
# words for.
HOSTILE_LINES = [
    '{"text": "ok", "meta": {"k": "\\udc80"}}',
    '{"text": "Peter \\ud800 lives in Paris .", "tag": "x\\udfff"}',
    '{"\\udc80": 1, "text": "EU rejects German call ."}',
    '{"text": "Paris .", "nan": NaN, "inf": -Infinity, "big": 1e400, "deep": [{"x": NaN}]}',
]
NON_FINITE_META = {"nan": None, "inf": None, "big": None, "deep": [{"x": None}]}
# Env of the cluster tests' faults: {"id": "exit" | "raise"}, and a folder for marker files.
FAULTS_ENV = "LUKE_SPACY_TEST_FAULTS"
MARKERS_ENV = "LUKE_SPACY_TEST_FAULT_MARKERS"


class FaultyAnnotator(LukeAnnotator):
    """A `LukeAnnotator` whose batch holding a chosen id exits its process (`os._exit`, as an
    actor killed by the OS) or raises, once per id: a marker file says it did. The faults come
    from FAULTS_ENV, which Ray's workers inherit from the process that started the cluster."""

    def __call__(self, batch: Any) -> Any:
        faults = json.loads(os.environ.get(FAULTS_ENV, "{}"))
        ids = parse_records(batch, text_field=self.text_field, id_field=self.id_field)["id"]
        for id_ in ids.to_pylist():
            marker = Path(os.environ[MARKERS_ENV]) / hashlib.sha1(id_.encode()).hexdigest()
            if id_ not in faults or marker.exists():
                continue
            marker.write_text(str(os.getpid()), encoding="utf-8")
            if faults[id_] == "exit":
                os._exit(1)
            raise RuntimeError(f"test fault on {id_}")
        return super().__call__(batch)


@pytest.fixture(scope="module")
def annotator(tiny_luke) -> LukeAnnotator:
    return LukeAnnotator(model=str(tiny_luke), threads=1, id_field="id")


def local_records(
    capsys, model: Path, inputs: List[Path], *more: str, code: int = 0
) -> List[Dict[str, Any]]:
    """The local engine's records for JSONL inputs, in input order."""
    argv = ["annotate", "--model", str(model), "--no-progress", *more]
    for path in inputs:
        argv += ["-i", str(path)]
    assert main(argv) == code
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def write_jsonl(path: Path, records: List[Any]) -> Path:
    path.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
    return path


def texts(n: int, offset: int = 0) -> List[str]:
    return [f"{SAMPLE_TEXT[i % len(SAMPLE_TEXT)]} ({i})" for i in range(offset, offset + n)]


def strict_json(text: str) -> Any:
    """JSON as a strict parser reads it: UTF-8 text, no NaN or Infinity (a lone surrogate
    may come back as the \\u escape it came as, which JSON allows)."""

    def reject(constant: str) -> None:
        raise ValueError(f"not JSON: {constant}")

    return json.loads(text.encode("utf-8"), parse_constant=reject)


def assert_same_entities(entities: List[Dict[str, Any]], expected: List[Dict[str, Any]]) -> None:
    """Same spans and labels; scores equal up to float32 rounding, which depends on what
    else shares the padded forward batch (run with the same batches, they are identical)."""

    def span(entity: Dict[str, Any]) -> tuple:
        return entity["text"], entity["label"], entity["start"], entity["end"]

    assert [span(entity) for entity in entities] == [span(entity) for entity in expected]
    for entity, other in zip(entities, expected):
        assert entity["score"] == pytest.approx(other["score"], abs=1e-5)


def open_stream(path: Path) -> Any:
    """A file as Ray's readers open it: a stream that cannot seek."""
    from pyarrow.fs import LocalFileSystem

    return LocalFileSystem().open_input_stream(str(path))


def read_jsonl(path: Path, id_field: Any = None) -> pa.Table:
    with open_stream(path) as f:
        return pa.concat_tables(list(jsonl_tables(f, str(path), "text", id_field)))


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
        json.dumps({"text": "no id", "n": 1}).encode(),
        json.dumps({"id": 5, "text": SAMPLE_TEXT[1], "extra": {"a": 1}}).encode(),
        b'{"id": "\\udc80", "text": "a lone surrogate is no id"}',
    ]
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    rows = annotator(read_jsonl(path, "id")).to_pylist()
    where = [f"{path}:{n}" for n in (2, 4, 7, 8, 10)]
    ids = ["good", where[0], where[1], "no-text", "number", where[2], where[3], "5", where[4]]
    assert [row["id"] for row in rows] == ids
    assert [row["error"] is None for row in rows] == [True] + [False] * 6 + [True, False]
    assert all(row["entities"] is None for row in rows if row["error"])
    assert rows[6]["error"] == "no 'id' field (the id)" and rows[6]["text"] == "no id"
    assert json.loads(rows[6]["meta"]) == {"n": 1}
    assert rows[-1]["error"] == "the 'id' field holds a lone surrogate (not Unicode text)"
    assert rows[-2]["text"] == SAMPLE_TEXT[1]
    assert json.loads(rows[-2]["meta"]) == {"extra": {"a": 1}}
    # The reader's errors are the local engine's, word for word.
    argv = ["annotate", "--model", str(tiny_luke), "-i", str(path), "--on-error", "record"]
    assert main(argv) == 1
    local = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    local_errors = {record["source"]: record["error"] for record in local if "error" in record}
    assert len(local_errors) == 5
    assert [row["error"] for row in rows[1:6]] == [
        local_errors[source] for source in sorted(local_errors, key=lambda s: int(s.split(":")[-1]))
    ]
    alone = annotator(pa.table({"id": ["x"], "text": [SAMPLE_TEXT[0]]})).to_pylist()[0]
    assert_same_entities(rows[0]["entities"], alone["entities"])


def test_hostile_lines_give_the_local_engines_records(
    annotator, tiny_luke, tmp_path, capsys, request
):
    """Whatever a line holds, the Ray engine's row is the local engine's record (entities,
    or the same error), its meta strict JSON; never an exception that fails the batch."""
    paths = [Path(path) for path in request.getfixturevalue("bad_inputs")[0]]
    paths.append(jsonl_lines(tmp_path / "hostile.jsonl", HOSTILE_LINES))
    local = local_records(capsys, tiny_luke, paths, "--on-error", "record", code=1)
    rows = annotator(pa.concat_tables([read_jsonl(path) for path in paths])).to_pylist()
    # id_field None: the ids are FILE:LINE, the local engine's sources.
    sources = [f"{path}:{n}" for path in paths for n in range(1, 20)]
    assert [row["id"] for row in rows] == sorted(
        (row["id"] for row in rows), key=lambda id_: sources.index(id_)
    )
    assert len(rows) == len(local)
    for row, record in zip(rows, local):
        meta = strict_json(row["meta"]) if row["meta"] is not None else {}
        if row["id"].endswith("hostile.jsonl:4"):
            assert meta == NON_FINITE_META and row["error"] is None
        else:
            assert meta == record.get("meta", {})
        assert row["text"] == record["text"]
        if "error" in record:
            assert (row["id"], row["error"]) == (record["source"], record["error"])
        else:
            assert row["error"] is None
            assert_same_entities(row["entities"], record["entities"])


def test_parquet_strings_that_are_not_utf8_fail_only_their_row(annotator, tmp_path):
    import pyarrow.parquet as pq

    raw = pa.array([b"Peter lives in Paris .", b"caf\xe9", b"EU rejects German call ."])
    text = pa.Array.from_buffers(pa.string(), len(raw), raw.buffers())  # Parquet does not check
    path = tmp_path / "docs.parquet"
    pq.write_table(pa.table({"id": ["a", "b", "c"], "text": text, "n": [1, 2, 3]}), path)
    with open_stream(path) as f:
        (table,) = parquet_tables(f, str(path), "text", "id")
    rows = annotator(table).to_pylist()
    assert [row["id"] for row in rows] == ["a", "b", "c"]
    assert [row["error"] for row in rows] == [None, "the 'text' column is not UTF-8", None]
    assert [json.loads(row["meta"]) for row in rows] == [{"n": 1}, {"n": 2}, {"n": 3}]


def test_empty_batches_keep_the_schema(annotator):
    for table in (
        RECORD_SCHEMA.empty_table(),
        pa.table({"id": pa.array([], pa.string()), "text": pa.array([], pa.string())}),
    ):
        out = annotator(table)
        assert out.num_rows == 0 and out.schema.equals(OUTPUT_SCHEMA)
    # Rows without entities keep the entity type too.
    out = annotator(pa.table({"id": ["e"], "text": [""]}))
    assert out.schema.equals(OUTPUT_SCHEMA) and out["entities"].to_pylist() == [[]]


def test_readers_give_stable_ids(tmp_path):
    import pyarrow.parquet as pq

    path = tmp_path / "docs.jsonl"
    path.write_bytes(b'{"text": "a"}\r\n\n  \n{"text": "b", "n": 1}\n\xff\xfe\n')
    table = read_jsonl(path)
    assert table.schema.equals(RECORD_SCHEMA)
    assert table["id"].to_pylist() == [f"{path}:1", f"{path}:4", f"{path}:5"]
    assert table["text"].to_pylist() == ["a", "b", None]
    assert table["meta"].to_pylist() == [None, '{"n": 1}', None]
    assert "not UTF-8" in table["error"][2].as_py()
    parquet = tmp_path / "docs.parquet"
    pq.write_table(pa.table({"text": ["x", "y"], "n": [1, 2]}), parquet)
    with open_stream(parquet) as f:
        (table,) = parquet_tables(f, str(parquet))
    assert table.schema.equals(RECORD_SCHEMA)
    rows = table.to_pylist()
    assert rows[1] == {"id": f"{parquet}:2", "text": "y", "meta": '{"n": 2}', "error": None}
    assert parse_records(table) is table  # records pass through


def test_input_format_of_files_and_folders(tmp_path):
    from luke_spacy.distributed import input_format

    (tmp_path / "jsonl").mkdir()
    write_jsonl(tmp_path / "jsonl" / "a.jsonl", [{"text": "x"}])
    (tmp_path / "jsonl" / "notes.txt").write_text("not an input", encoding="utf-8")
    assert input_format([str(tmp_path / "jsonl")]) == "jsonl"
    assert input_format([str(tmp_path / "b.JSON"), str(tmp_path / "jsonl")]) == "jsonl"
    assert input_format([str(tmp_path / "c.parquet")]) == "parquet"
    for paths in ([tmp_path / "c.parquet", tmp_path / "jsonl"], [tmp_path / "empty"]):
        with pytest.raises(ValueError, match="all JSONL"):
            input_format([str(path) for path in paths])


def test_ids_are_compared_as_strings_and_id_column_checks():
    table = pa.table({"id": pa.array([1, 2]), "text": ["x", "y"]})
    assert parse_records(table)["id"].to_pylist() == ["1", "2"]
    path = "f.jsonl"
    rows = [{SOURCE_COLUMN: f"{path}:1", "id": 1.5, "text": "x"}]
    assert parse_records(pa.Table.from_pylist(rows))["id"].to_pylist() == ["1.5"]
    with pytest.raises(ValueError, match="no id column 'doc_id'"):
        parse_records(pa.table({"id": ["a"], "text": ["x"]}), id_field="doc_id")
    with pytest.raises(ValueError, match="no id"):
        parse_records(pa.table({"id": ["a"], "text": ["x"]}), id_field=None)


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


# The command line: checks that fail before any cluster starts (one line, exit 2)


def ray_argv(tiny_luke: Path, source: Path, output: Path, *more: str) -> List[str]:
    return [
        "annotate", "--engine", "ray", "--model", str(tiny_luke),
        "-i", str(source), "-o", str(output), *more,
    ]  # fmt: skip


def refused(capsys, argv: List[str]) -> str:
    """Run the command; it must exit 2 with one line on stderr and start no cluster."""
    import ray

    code = main(argv)
    err = capsys.readouterr().err
    assert (code, len(err.splitlines())) == (2, 1), err
    assert "Traceback" not in err and not ray.is_initialized()
    return err


@pytest.fixture()
def source(tmp_path) -> Path:
    return write_jsonl(tmp_path / "docs.jsonl", [{"text": t} for t in texts(3)])


def test_engine_ray_argument_errors(capsys, tmp_path):
    assert main(["annotate", "--engine", "ray", "some text"]) == 2
    assert "not texts given as arguments" in capsys.readouterr().err
    missing = str(tmp_path / "nothing*.jsonl")
    assert main(["annotate", "--engine", "ray", "-i", missing, "-o", str(tmp_path)]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(["annotate", "--engine", "ray", "--actors", "3:1", "-i", "x"]) == 2


def test_ray_refuses_html(tiny_luke, source, tmp_path, capsys):
    """The Ray engine writes no page: `--html` is refused, not silently ignored."""
    page = tmp_path / "view.html"
    err = refused(capsys, ray_argv(tiny_luke, source, tmp_path / "out", "--html", str(page)))
    assert "--html is for the local engine" in err
    assert not page.exists() and not (tmp_path / "out").exists()


@pytest.mark.parametrize("on_error", ["skip", "stop"])
def test_ray_refuses_an_on_error_it_would_not_honour(tiny_luke, source, tmp_path, capsys, on_error):
    """The Ray engine writes every bad record as an error row: asking it to skip them, or to
    stop at the first one, is refused rather than ignored."""
    err = refused(capsys, ray_argv(tiny_luke, source, tmp_path / "out", "--on-error", on_error))
    assert f"--on-error {on_error} is for the local engine" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("damage", ["missing folder", "no weights"])
def test_ray_refuses_a_model_it_cannot_load_before_any_cluster(
    tiny_luke, source, tmp_path, capsys, damage
):
    """A missing or damaged local --model fails as it does locally (exit 2, one line naming
    the folder), not inside the actors with advice to resume."""
    model = tmp_path / "model"
    if damage == "no weights":
        shutil.copytree(tiny_luke, model)
        (model / "model.safetensors").unlink()
    err = refused(capsys, ray_argv(model, source, tmp_path / "out"))
    assert str(model) in err and "--resume" not in err
    assert not (tmp_path / "out").exists()


def test_the_summary_warns_of_repeated_ids_and_keeps_the_checkpoint_of_a_short_output(
    tmp_path, capsys
):
    """`report` without a cluster: repeated ids named, a short output keeps the checkpoint
    (exit 1, with the way to finish), a full one removes it (exit 0, or 1 with error rows)."""
    from luke_spacy.cli_ray import report
    from luke_spacy.distributed import OutputSummary

    checkpoint = tmp_path / "out.checkpoint"
    checkpoint.mkdir()
    repeated = OutputSummary(rows=4, repeated_ids=2, examples=["1", "a"])
    assert report("out", str(checkpoint), 5, 4, repeated, resume=False) == 1
    err = capsys.readouterr().err
    assert "2 ids are on more than one row of out (e.g. '1', 'a')" in err
    assert "5 rows in but 4 rows out: rerun with --resume" in err and checkpoint.is_dir()
    assert report("out", str(checkpoint), 4, 1, OutputSummary(rows=4), resume=True) == 0
    assert "rows in 4, rows out 4 (3 already done), error rows 0" in capsys.readouterr().err
    assert not checkpoint.exists()
    assert report("out", str(checkpoint), 2, 2, OutputSummary(rows=2, error_rows=1), False) == 1


def test_ray_output_that_is_a_file_or_unwritable(tiny_luke, source, tmp_path, capsys, monkeypatch):
    output = tmp_path / "out.parquet"
    output.write_text("a user's file", encoding="utf-8")
    err = refused(capsys, ray_argv(tiny_luke, source, output))
    assert err.endswith(f"--output {output} is a file: the Ray engine writes a folder of files\n")
    assert output.read_text(encoding="utf-8") == "a user's file"
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    if os.geteuid() == 0:  # root writes anywhere: make the probe meet what a user would
        import tempfile

        def denied(*args: Any, **kwargs: Any) -> Any:
            raise PermissionError(13, "Permission denied")

        monkeypatch.setattr(tempfile, "mkstemp", denied)
    err = refused(capsys, ray_argv(tiny_luke, source, locked / "out"))
    assert err.startswith(f"luke-spacy: error: cannot write --output {locked / 'out'}: ")
    assert "Permission denied" in err and "--resume" not in err


def test_ray_output_and_resume_checks(tiny_luke, source, tmp_path, capsys):
    """A fresh job needs an empty output and no earlier checkpoint; --resume needs the
    checkpoint of the job it finishes (a missing one is said, not taken as "0 done")."""
    output = tmp_path / "out"
    checkpoint = tmp_path / "out.checkpoint"
    err = refused(capsys, ray_argv(tiny_luke, source, output, "--resume"))
    assert f"nothing to resume: no checkpoint {checkpoint} (and no output folder)" in err
    output.mkdir()
    (output / "part-0.parquet").write_bytes(b"rows of an earlier job")
    err = refused(capsys, ray_argv(tiny_luke, source, output, "--resume", str(output)))
    assert "nothing to resume" in err and "its job finished" in err
    err = refused(capsys, ray_argv(tiny_luke, source, output))
    assert f"--output {output} already holds 1 files" in err and "add --resume" in err
    err = refused(capsys, ray_argv(tiny_luke, source, output, "--resume", str(tmp_path)))
    assert "a job is resumed into its own --output" in err
    checkpoint.mkdir()
    (checkpoint / "ids.parquet").write_bytes(b"ids of an earlier job")
    other = tmp_path / "other"
    err = refused(capsys, ray_argv(tiny_luke, source, other, "--checkpoint", str(checkpoint)))
    assert f"{checkpoint} holds the checkpoint of an earlier job" in err
    err = refused(capsys, ray_argv(tiny_luke, source, other, "--checkpoint", str(other / "c")))
    assert "is inside --output" in err


# Whole jobs on a local cluster


def run_jobs(jobs: List[Dict[str, Any]], markers: Path) -> None:
    """The child process: a local cluster, then each job's CLI arguments in turn, with
    `FaultyAnnotator` as the actors' class."""
    import ray

    from luke_spacy.cli import main as cli_main

    os.environ[MARKERS_ENV] = str(markers)
    # Workers inherit the environment of the cluster started here: the faults.
    os.environ[FAULTS_ENV] = json.dumps({k: v for job in jobs for k, v in job["faults"].items()})
    distributed.LukeAnnotator = FaultyAnnotator  # what `annotate` puts on the actor pool
    # Oversubscribed logical CPUs: a pool that took every core would starve the read stage.
    ray.init(num_cpus=8, include_dashboard=False, log_to_driver=False)
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # what the jobs say is what counts
    results = []
    try:
        for job in jobs:
            argv = job["argv"]
            out = Path(argv[argv.index("--output") + 1])
            uncommitted = uncommit_a_write(out) if job.get("uncommit") else None
            print(f"job: {' '.join(argv)}", file=sys.stderr, flush=True)
            code = cli_main(argv)
            files = sorted(str(p) for p in out.glob("*"))
            results.append(
                {
                    "code": code,
                    "files": files,
                    "rows": read_output(files, ["id"]).num_rows,
                    "checkpoint": Path(f"{out}.checkpoint").exists(),
                    "uncommitted": uncommitted,
                }
            )
    finally:
        ray.shutdown()
    print(json.dumps(results))


def uncommit_a_write(output: Path) -> Dict[str, Any]:
    """Turn one committed write of a stopped job back into a pending one, as when the job
    is killed between writing a data file and committing its checkpoint (Ray's two-phase
    commit): its checkpoint file renamed to *.pending.parquet. RETURNS its name and rows."""
    checkpoint = Path(f"{output}.checkpoint")
    committed = sorted(p for p in checkpoint.glob("*.parquet") if ".pending" not in p.name)
    stem = committed[0].name[: -len(".parquet")]
    committed[0].rename(checkpoint / f"{stem}.pending.parquet")
    files = [str(p) for p in output.glob(f"{stem}*")]
    return {"stem": stem, "files": len(files), "rows": read_output(files, ["id"]).num_rows}


def run_child(cmd: List[str], timeout: float) -> subprocess.CompletedProcess:
    """Run a child in its own session under a hard timeout; then kill its process group, so
    that no Ray process it started outlives it (a timeout fails the test)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}
    child = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        start_new_session=True,
    )  # fmt: skip
    try:
        stdout, stderr = child.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)
        stdout, stderr = child.communicate()
        pytest.fail(f"timed out after {timeout} s: {stderr[-3000:]}")
    finally:
        try:
            os.killpg(child.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return subprocess.CompletedProcess(cmd, child.returncode, stdout, stderr)


def output_rows(folder: Path) -> List[Dict[str, Any]]:
    files = [str(path) for path in sorted(folder.glob("*"))]
    return read_output(files, ["id", "text", "entities", "meta", "error"]).to_pylist()


def job_stderr(stderr: str, n: int) -> str:
    """What the n-th job printed (the child prints "job: ..." before each)."""
    return stderr.split("job: ")[n + 1]


@pytest.mark.slow
def test_jobs_on_a_local_cluster(tiny_luke, tmp_path, capsys, request):
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
    # An error row that the first abort job writes: the resumed job must not write it again.
    lines = inputs["abort"][0].read_text(encoding="utf-8").splitlines()
    inputs["abort"][0].write_text("{broken\n" + "\n".join(lines[1:]) + "\n", encoding="utf-8")
    local = local_records(capsys, tiny_luke, inputs["plain"])
    expected = {
        f"{path}:{line}": record["entities"]
        for i, path in enumerate(inputs["plain"])
        for line, record in enumerate(local[i * PER_FILE : (i + 1) * PER_FILE], 1)
    }
    hostile = [Path(path) for path in request.getfixturevalue("bad_inputs")[0]]
    hostile.append(jsonl_lines(tmp_path / "hostile.jsonl", HOSTILE_LINES))
    hostile_local = local_records(capsys, tiny_luke, hostile, "--on-error", "record", code=1)
    ids = write_jsonl(
        tmp_path / "ids.jsonl",
        [{"id": id_, "text": t} for id_, t in zip([1, "1", "a", "a", "b"], texts(5))],
    )
    common = ["--model", str(tiny_luke), "--batch-size", "16", "--cpus-per-actor", "1"]

    def argv(name: str, paths: List[Path], *more: str) -> List[str]:
        sources = [arg for path in paths for arg in ("-i", str(path))]
        out = str(tmp_path / f"{name}-out")
        return ["annotate", "--engine", "ray", *sources, "--output", out, *common, *more]

    crash_id = f"{inputs['crash'][1]}:50"
    abort_id = f"{inputs['abort'][2]}:90"
    jobs = [
        {"argv": argv("plain", inputs["plain"], "--actors", "1:2"), "faults": {}},
        {
            "argv": argv("crash", inputs["crash"], "--actors", "2:2", "--output-format", "jsonl"),
            "faults": {crash_id: "exit"},
        },
        {"argv": argv("abort", inputs["abort"], "--actors", "1:1"), "faults": {abort_id: "raise"}},
        {"argv": argv("abort", inputs["abort"], "--resume"), "faults": {}, "uncommit": True},
        {"argv": argv("hostile", hostile, "--output-format", "jsonl"), "faults": {}},
        {"argv": argv("ids", [ids], "--id-field", "id"), "faults": {}},
    ]
    markers = tmp_path / "markers"
    markers.mkdir()
    spec = tmp_path / "jobs.json"
    spec.write_text(json.dumps({"jobs": jobs, "markers": str(markers)}), encoding="utf-8")
    child = run_child([sys.executable, __file__, str(spec)], CLUSTER_TIMEOUT)
    said = "\n".join(
        line for line in child.stderr.splitlines() if line.startswith(("job: ", "luke-spacy: "))
    )
    assert child.returncode == 0, said + child.stderr[-4000:]
    results = json.loads(child.stdout.strip().splitlines()[-1])
    # Exit 1: the abort; the resumed abort job and the hostile one hold error rows.
    assert [result["code"] for result in results] == [0, 0, 1, 1, 1, 0], said
    # A finished job removes its checkpoint; a failed one keeps it for --resume.
    assert [result["checkpoint"] for result in results] == [False, False, True] + [False] * 3

    # Every id exactly once, with the local engine's entities.
    rows = output_rows(tmp_path / "plain-out")
    assert sorted(row["id"] for row in rows) == sorted(expected)
    for row in rows:
        assert_same_entities(row["entities"], expected[row["id"]])
    assert "rows in 300, rows out 300, error rows 0\n" in job_stderr(child.stderr, 0)

    # The actor exited on one batch: Ray restarted it and retried the batch.
    assert len(list(markers.iterdir())) == 2  # the exit and the abort faults fired
    assert all(name.endswith(".json") for name in results[1]["files"])
    rows = output_rows(tmp_path / "crash-out")
    ids_out = [row["id"] for row in rows]
    assert len(ids_out) == len(set(ids_out)) == FILES * PER_FILE and crash_id in ids_out
    assert all(row["error"] is None for row in rows)

    # The aborted job wrote some rows; one of its writes is made uncommitted, as a kill
    # between data file and commit leaves it. The resumed job deletes that file, writes its
    # rows and the others again, and the output holds every id once, the error row of the
    # broken line included.
    first = results[2]["rows"]
    assert "rerun with --resume" in job_stderr(child.stderr, 2)
    uncommitted = results[3]["uncommitted"]
    assert uncommitted["files"] == 1 and uncommitted["rows"] > 0
    assert not [name for name in results[3]["files"] if uncommitted["stem"] in name]
    ids_out = [row["id"] for row in output_rows(tmp_path / "abort-out")]
    assert 0 < first < FILES * PER_FILE
    assert len(ids_out) == len(set(ids_out)) == FILES * PER_FILE
    done = first - uncommitted["rows"]
    assert f"({done} already done), error rows 1\n" in job_stderr(child.stderr, 3)

    # Hostile lines: the local engine's records, one row each; every line strict JSON.
    lines = [
        line
        for path in sorted((tmp_path / "hostile-out").glob("*.json"))
        for line in path.read_text(encoding="utf-8").splitlines()
    ]
    written = {row["id"]: row for row in map(strict_json, lines)}
    assert len(written) == len(lines) == len(hostile_local)
    for record in hostile_local:
        source = record.get("source") or next(
            id_ for id_, row in written.items() if row["text"] == record["text"]
        )
        row = written[source]
        assert (row["text"], row["error"]) == (record["text"], record.get("error"))
        if row["meta"] is not None:
            strict_json(row["meta"])
    assert "rows in 17, rows out 17, error rows 6\n" in job_stderr(child.stderr, 4)

    # Ids are compared as strings: 1 and "1" are one id, as "a" and "a"; the user is told.
    out = job_stderr(child.stderr, 5)
    assert "rows in 5, rows out 5, error rows 0\n" in out
    assert "warning: 2 ids are on more than one row" in out and "e.g. '1', 'a'" in out


@pytest.mark.slow
def test_node_loss(tiny_luke, tmp_path, capsys):
    """benchmarks/distributed.py's node-loss run (a head and two worker nodes, one killed
    while the job runs, with an actor on it): the job finishes as Ray retries, or --resume
    finishes it; every id once, with the local engine's entities."""
    out = tmp_path / "result.json"
    work = tmp_path / "work"
    cmd = [
        sys.executable, str(ROOT / "benchmarks" / "distributed.py"), "--model", str(tiny_luke),
        "--skip-cpu", "--skip-scheduling", "--resume-sizes", "", "--node-loss-docs", "150",
        "--work", str(work), "--out", str(out),
    ]  # fmt: skip
    child = run_child(cmd, NODE_LOSS_TIMEOUT)
    assert child.returncode == 0, child.stderr[-4000:]
    result = json.loads(out.read_text(encoding="utf-8"))["node_loss"]
    assert result["kill"]["actors_killed"] >= 1, result  # killed while the job ran
    assert result["clean"] == {**result["clean"], "code": 0, "rows_out": 150, "repeated_ids": 0}
    assert result["lost"]["repeated_ids"] == 0, result
    final = result.get("resume", result["lost"])
    assert (final["code"], final["rows_out"], final["repeated_ids"]) == (0, 150, 0), result
    inputs = sorted((work / "node-loss").glob("part*.jsonl"))
    local = local_records(capsys, tiny_luke, inputs)
    expected = {
        f"{path}:{line}": record["entities"]
        for i, path in enumerate(inputs)
        for line, record in enumerate(local[i * 50 : (i + 1) * 50], 1)
    }
    rows = output_rows(work / "node-loss" / "lost")
    assert sorted(row["id"] for row in rows) == sorted(expected)
    for row in rows:
        assert_same_entities(row["entities"], expected[row["id"]])


if __name__ == "__main__":
    spec = json.loads(Path(sys.argv[1]).read_text(encoding="utf-8"))
    run_jobs(spec["jobs"], Path(spec["markers"]))
