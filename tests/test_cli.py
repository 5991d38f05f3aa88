"""The `luke-spacy` command line, in-process and as the installed console script."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Sequence

import pytest

from luke_spacy.cli import main
from luke_spacy.random_model import LUKE_LABELS, SAMPLE_TEXT

TEXTS = list(SAMPLE_TEXT[:4])
OFFLINE_ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def console_script() -> List[str]:
    """The installed `luke-spacy` script (next to this interpreter, else on PATH)."""
    script = Path(sysconfig.get_path("scripts")) / "luke-spacy"
    if script.exists():
        return [str(script)]
    found = shutil.which("luke-spacy")
    if found is None:
        pytest.fail("the luke-spacy console script is not installed (pip install -e .)")
    return [found]


def parse(stdout: str) -> List[Dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines()]


def check_records(records: Sequence[Dict[str, Any]], texts: Sequence[str]) -> None:
    """One record per text, in order; offsets slice the text; scores are probabilities."""
    assert [record["text"] for record in records] == list(texts)
    for record in records:
        text = record["text"]
        previous_end = 0
        for ent in record["entities"]:
            assert set(ent) == {"text", "label", "start", "end", "score"}
            assert text[ent["start"] : ent["end"]] == ent["text"]
            assert previous_end <= ent["start"] < ent["end"]
            previous_end = ent["end"]
            assert ent["label"] in LUKE_LABELS[1:]
            assert 0.0 <= ent["score"] <= 1.0
    # classifier_std=1.0 makes the tiny model confident enough to find something.
    assert any(record["entities"] for record in records)


def run_cli(capsys, argv: List[str]):
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_annotate_arguments(tiny_luke, capsys):
    code, out, err = run_cli(capsys, ["annotate", "--model", str(tiny_luke), *TEXTS])
    assert code == 0, err
    check_records(parse(out), TEXTS)
    assert err == ""  # no progress bar for argument texts


def test_annotate_text_files_with_progress(tiny_luke, tmp_path, capsys):
    first = tmp_path / "first.txt"
    # Blank and whitespace-only lines are skipped; CRLF endings are removed; other
    # whitespace is kept so that offsets index the line as written.
    first.write_bytes(f"{TEXTS[0]}\r\n\n   \n  {TEXTS[1]}\n".encode())
    second = tmp_path / "second.txt"
    second.write_text(f"{TEXTS[2]}\n{TEXTS[3]}", encoding="utf-8")
    argv = ["annotate", "--model", str(tiny_luke), "-i", str(first), "--input", str(second)]
    code, out, err = run_cli(capsys, [*argv, "--batch-size", "3"])
    assert code == 0, err
    check_records(parse(out), [TEXTS[0], f"  {TEXTS[1]}", TEXTS[2], TEXTS[3]])
    assert "4/4" in err  # tqdm on stderr, total counted before processing

    code, out, err = run_cli(capsys, [*argv, "--no-progress"])
    assert code == 0 and err == ""


def test_annotate_output_file_and_settings(tiny_luke, tmp_path, capsys):
    path = tmp_path / "in.txt"
    path.write_text("\n".join(TEXTS) + "\n", encoding="utf-8")
    output = tmp_path / "out.jsonl"
    argv = ["annotate", "--model", str(tiny_luke), "--input", str(path), "--no-progress"]
    options = ["--context", "sentence", "--no-sentencizer", "--output", str(output)]
    code, out, err = run_cli(capsys, [*argv, *options])
    assert (code, out, err) == (0, "", "")
    check_records(parse(output.read_text(encoding="utf-8")), TEXTS)


def test_annotate_jsonl_carries_other_fields(tiny_luke, tmp_path, capsys):
    path = tmp_path / "docs.jsonl"
    rows = [
        {"id": 7, "body": TEXTS[0], "tags": ["a"]},
        {"body": TEXTS[1]},
        {"body": "", "id": 9},  # JSONL keeps every record, even an empty text
        {"id": 8, "body": TEXTS[2]},
    ]
    path.write_text("\n".join(json.dumps(row) for row in rows) + "\n\n", encoding="utf-8")
    argv = ["annotate", "--model", str(tiny_luke), "--input", str(path), "--text-field", "body"]
    code, out, err = run_cli(capsys, argv)
    assert code == 0, err
    records = parse(out)
    check_records(records, [row["body"] for row in rows])
    assert [record.get("meta") for record in records] == [
        {"id": 7, "tags": ["a"]},
        None,
        {"id": 9},
        {"id": 8},
    ]
    assert records[2]["entities"] == []


def test_annotate_stdin_jsonl_in_process(tiny_luke, capsys, monkeypatch):
    lines = "".join(json.dumps({"text": text, "n": i}) + "\n" for i, text in enumerate(TEXTS))
    monkeypatch.setattr(sys, "stdin", io.StringIO(lines))
    code, out, err = run_cli(capsys, ["annotate", "--model", str(tiny_luke), "--jsonl", "-"])
    assert code == 0, err
    records = parse(out)
    check_records(records, TEXTS)
    assert [record["meta"] for record in records] == [{"n": i} for i in range(len(TEXTS))]
    assert err == ""  # no progress bar for stdin


@pytest.mark.slow  # a subprocess that imports torch: ~10 s
def test_console_script_stdin(tiny_luke):
    result = subprocess.run(
        [*console_script(), "annotate", "--model", str(tiny_luke), "--batch-size", "2"],
        input="\n".join(TEXTS) + "\n",
        capture_output=True,
        text=True,
        env=OFFLINE_ENV,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    check_records(parse(result.stdout), TEXTS)


def check_one_message(err: str) -> None:
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("luke-spacy: error: ")
    assert "--model /path/to/folder" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("model", ["/nonexistent/luke-model", "nobody/no-such-luke"])
def test_unloadable_model_in_process(model, capsys):
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    code, out, err = run_cli(capsys, ["annotate", "--model", model, "Some text ."])
    assert code == 2 and out == ""
    check_one_message(err)
    assert model in err


@pytest.mark.slow  # a subprocess that imports torch: ~10 s
def test_unloadable_model_module_subprocess(tmp_path):
    path = tmp_path / "in.txt"
    path.write_text("Some text .\n", encoding="utf-8")
    result = subprocess.run(
        [sys.executable, "-m", "luke_spacy.cli", "annotate", "-m", "nobody/no-such-luke", "-i"]
        + [str(path)],
        capture_output=True,
        text=True,
        env=OFFLINE_ENV,
        timeout=120,
    )
    assert result.returncode == 2 and result.stdout == ""
    check_one_message(result.stderr)
    assert "HF_HUB_OFFLINE=1" in result.stderr


def test_pipeline_dir_matches_model(tiny_luke, tmp_path, capsys):
    import spacy

    nlp = spacy.blank("en")
    nlp.add_pipe("luke_ner", config={"model": {"name": str(tiny_luke)}})
    nlp.get_pipe("luke_ner").initialize(nlp=nlp)
    nlp.to_disk(tmp_path / "pipeline")
    options = ["--context", "sentence", *TEXTS]
    argv = ["annotate", "--pipeline", str(tmp_path / "pipeline"), *options]
    code, out, err = run_cli(capsys, argv)
    assert code == 0, err
    code, expected, err = run_cli(capsys, ["annotate", "--model", str(tiny_luke), *options])
    assert code == 0, err
    assert out == expected
    check_records(parse(out), TEXTS)

    code, out, err = run_cli(capsys, ["annotate", "--pipeline", str(tmp_path / "none"), "x"])
    assert code == 2 and out == "" and len(err.splitlines()) == 1


def test_input_errors(tiny_luke, tmp_path, capsys):
    model = ["annotate", "--model", str(tiny_luke)]
    code, out, err = run_cli(capsys, [*model, "--input", str(tmp_path / "missing.txt")])
    assert code == 2 and out == "" and "missing.txt" in err
    code, out, err = run_cli(capsys, [*model, "--input", str(tmp_path / "x.txt"), "a text"])
    assert code == 2 and "not both" in err

    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"text": TEXTS[0]}) + "\n{oops\n", encoding="utf-8")
    code, out, err = run_cli(capsys, [*model, "--input", str(bad), "--no-progress"])
    assert code == 1 and f"{bad}:2: invalid JSON" in err
    no_field = tmp_path / "no_field.jsonl"
    no_field.write_text(json.dumps({"body": TEXTS[0]}) + "\n", encoding="utf-8")
    code, out, err = run_cli(capsys, [*model, "--input", str(no_field), "--no-progress"])
    assert code == 1 and "no 'text' field" in err and out == ""


def test_random_model_is_loadable(tmp_path, capsys):
    out_dir = tmp_path / "random"
    code, out, err = run_cli(
        capsys, ["random-model", str(out_dir), "--seed", "3", "--classifier-std", "1.0"]
    )
    assert code == 0, err
    assert out.strip() == str(out_dir)
    assert (out_dir / "config.json").is_file() and (out_dir / "model.safetensors").is_file()
    code, out, err = run_cli(capsys, ["annotate", "--model", str(out_dir), *TEXTS])
    assert code == 0, err
    check_records(parse(out), TEXTS)


def test_random_model_full_size_from_config(tmp_path, capsys):
    # A "real" config.json: its sizes (kept small here) and its labels are used.
    config = {
        "hidden_size": 16,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "intermediate_size": 32,
        "entity_emb_size": 8,
        "id2label": {"0": "NIL", "1": "PER", "2": "LOC"},
        "model_type": "luke",
    }
    config_path = tmp_path / "config.json"
    config_path.write_text(json.dumps(config), encoding="utf-8")
    out_dir = tmp_path / "full"
    code, out, err = run_cli(capsys, ["random-model", str(out_dir), "--config", str(config_path)])
    assert code == 0, err
    written = json.loads((out_dir / "config.json").read_text(encoding="utf-8"))
    assert written["hidden_size"] == 16 and written["num_hidden_layers"] == 1
    assert written["id2label"] == config["id2label"]

    code, out, err = run_cli(capsys, ["random-model", str(tmp_path / "x"), "--size", "full"])
    assert code == 2 and "--config" in err
    code, out, err = run_cli(capsys, ["random-model", str(tmp_path / "x"), "--size", "wide"])
    assert code == 2 and "invalid choice" in err


def test_gpu_selection(tiny_luke, capsys, monkeypatch):
    import spacy
    import torch

    from luke_spacy.loading import load_pipeline

    def no_cupy(gpu_id: int) -> bool:
        raise ValueError("Cannot use GPU, CuPy is not installed")

    monkeypatch.setattr(spacy, "require_gpu", no_cupy)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code, out, err = run_cli(capsys, ["annotate", "--model", str(tiny_luke), "--gpu", "0", "x"])
    assert code == 2 and out == "" and len(err.splitlines()) == 1
    # what torch lacks (the component runs in torch), not what CuPy lacks
    assert "'cuda:0' cannot be used" in err and "CuPy" not in err

    # Without CuPy but with a torch GPU, luke_ner runs in torch on that device.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    nlp, spans_keys = load_pipeline(model=str(tiny_luke), gpu=1)
    assert nlp.config["components"]["luke_ner"]["device"] == "cuda:1"
    assert nlp.pipe_names == ["sentencizer", "luke_ner"] and spans_keys == ["luke_ner"]


# Bad records, exit codes and output failures (issue 9): every good record is written in order,
# each problem is one line on stderr, and nothing prints a traceback.


def jsonl_lines(path: Path, lines: Sequence[Any]) -> Path:
    """Write lines (str, bytes, or a dict as JSON) to a file, one per line."""
    encoded = []
    for line in lines:
        if isinstance(line, dict):
            line = json.dumps(line)
        encoded.append(line if isinstance(line, bytes) else line.encode("utf-8"))
    path.write_bytes(b"\n".join(encoded) + b"\n")
    return path


def good(n: int) -> Dict[str, Any]:
    return {"text": TEXTS[n % len(TEXTS)], "n": n}


def problems(err: str) -> List[str]:
    """The sources of the error lines on stderr."""
    assert "Traceback" not in err
    prefix = "luke-spacy: error: "
    return [line[len(prefix) :].split(": ")[0] for line in err.splitlines() if prefix in line]


@pytest.fixture()
def bad_inputs(tmp_path):
    """Two JSONL files with bad records at the start, middle and end of --batch-size 4
    batches; RETURNS (paths, the n of the good records, the sources of the bad ones)."""
    first = jsonl_lines(
        tmp_path / "a.jsonl",
        [
            "{not json",  # 1: start of the first batch
            good(2),
            good(3),
            good(4),
            good(5),
            "[1, 2]",  # 6: middle of the second batch
            good(7),
            {"text": None, "n": 8},  # 8: end of the second batch
            good(9),
            b'{"text": "caf\xe9 au lait"}',  # 10: not UTF-8, last line
        ],
    )
    second = jsonl_lines(tmp_path / "b.jsonl", [{"body": "x"}, good(12), '"a string"'])
    bad = [f"{first}:1", f"{first}:6", f"{first}:8", f"{first}:10", f"{second}:1", f"{second}:3"]
    return [str(first), str(second)], [2, 3, 4, 5, 7, 9, 12], bad


def test_bad_records_are_skipped_and_reported(tiny_luke, bad_inputs, capsys):
    paths, good_ns, bad = bad_inputs
    argv = ["annotate", "--model", str(tiny_luke), "--batch-size", "4", "--no-progress"]
    code, out, err = run_cli(capsys, [*argv, "-i", paths[0], "-i", paths[1]])
    assert code == 1
    records = parse(out)
    assert [record["meta"]["n"] for record in records] == good_ns
    check_records(records, [good(n)["text"] for n in good_ns])
    assert problems(err) == bad
    assert "invalid JSON" in err and "got an array" in err and "'text' is null" in err
    assert "not UTF-8" in err and "no 'text' field" in err and "got a string" in err
    assert err.splitlines()[-1] == "luke-spacy: 6 of 13 records failed (skipped)"
    assert len(err.splitlines()) == len(bad) + 1


def test_bad_records_as_error_records(tiny_luke, bad_inputs, capsys):
    paths, good_ns, bad = bad_inputs
    argv = ["annotate", "--model", str(tiny_luke), "--batch-size", "4", "--no-progress"]
    code, out, err = run_cli(
        capsys, [*argv, "--on-error", "record", "-i", paths[0], "-i", paths[1]]
    )
    assert code == 1 and problems(err) == bad
    records = parse(out)
    assert len(records) == 13
    errors = [record for record in records if "error" in record]
    assert [record["source"] for record in errors] == bad
    assert [record["meta"]["n"] for record in records if "error" not in record] == good_ns
    assert errors[2] == {
        "text": None,
        "error": "'text' is null, not a string",
        "source": bad[2],
        "meta": {"n": 8},
    }
    # Input order: the error records sit where their lines were.
    assert [i for i, record in enumerate(records) if "error" in record] == [0, 5, 7, 9, 10, 12]


def test_on_error_stop_writes_everything_before(tiny_luke, tmp_path, capsys):
    path = jsonl_lines(tmp_path / "c.jsonl", [good(0), good(1), good(2), "{oops", good(4)])
    argv = ["annotate", "--model", str(tiny_luke), "-i", str(path), "--no-progress"]
    code, out, err = run_cli(capsys, [*argv, "--on-error", "stop", "--batch-size", "2"])
    assert code == 1
    assert [record["meta"]["n"] for record in parse(out)] == [0, 1, 2]
    assert problems(err) == [f"{path}:4"] and len(err.splitlines()) == 2


def test_pipeline_error_fails_one_record(tiny_luke, capsys, monkeypatch):
    from luke_spacy.pipe import LukeEntityRecognizer

    predict = LukeEntityRecognizer.predict

    def fragile(self, docs):
        docs = list(docs)
        if any("BOOM" in doc.text for doc in docs):
            raise RuntimeError("cannot handle BOOM")
        return predict(self, docs)

    monkeypatch.setattr(LukeEntityRecognizer, "predict", fragile)
    texts = [TEXTS[0], TEXTS[1], "BOOM goes Paris .", TEXTS[2], TEXTS[3]]
    argv = ["annotate", "--model", str(tiny_luke), "--batch-size", "4", *texts]
    code, out, err = run_cli(capsys, argv)
    assert code == 1
    check_records(parse(out), [TEXTS[0], TEXTS[1], TEXTS[2], TEXTS[3]])
    assert problems(err) == ["argument 3"]
    assert "RuntimeError: cannot handle BOOM" in err


def test_lone_surrogates_are_replaced(tiny_luke, tmp_path, capsys):
    path = jsonl_lines(
        tmp_path / "s.jsonl", ['{"text": "Peter \\ud800 lives in Paris .", "tag": "x\\udfff"}']
    )
    model = ["annotate", "--model", str(tiny_luke), "--no-progress"]
    code, out, err = run_cli(capsys, [*model, "-i", str(path)])
    assert code == 0
    record = json.loads(out)
    assert record["text"] == "Peter \ufffd lives in Paris ."
    assert record["meta"] == {"tag": "x\udfff"}  # meta is written back as it came
    assert out.isascii()  # ... as a \\u escape, so the output stays UTF-8
    assert err == f"luke-spacy: warning: {path}:1: 1 lone surrogate(s) (not Unicode text) " + (
        "replaced with U+FFFD\n"
    )
    # Undecodable bytes in argv reach Python as lone surrogates (surrogateescape).
    code, out, err = run_cli(capsys, [*model, "Peter \udcff in Paris .", TEXTS[0]])
    assert code == 0
    check_records(parse(out), ["Peter \ufffd in Paris .", TEXTS[0]])
    assert err.startswith("luke-spacy: warning: argument 1: ") and len(err.splitlines()) == 1


def test_stdin_bytes_not_utf8(tiny_luke, capsys, monkeypatch):
    data = f"{TEXTS[0]}\n".encode() + b"caf\xe9 \xff\n" + f"{TEXTS[1]}\n".encode()
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data), encoding="utf-8"))
    code, out, err = run_cli(capsys, ["annotate", "--model", str(tiny_luke)])
    assert code == 1
    check_records(parse(out), TEXTS[:2])
    assert problems(err) == ["<stdin>:2"] and "not UTF-8 (byte 4: invalid" in err


def test_texts_longer_than_max_length(tiny_luke, capsys, small_max_length):
    code, out, err = run_cli(capsys, ["annotate", "--model", str(tiny_luke), *TEXTS])
    assert code == 0 and err == ""
    assert max(len(text) for text in TEXTS) > small_max_length
    check_records(parse(out), TEXTS)


def test_output_errors(tiny_luke, tmp_path, capsys):
    model = ["annotate", "--model", str(tiny_luke)]
    code, out, err = run_cli(capsys, [*model, "-o", "/dev/full", *TEXTS])
    assert code == 2
    assert err == "luke-spacy: error: cannot write /dev/full: No space left on device\n"
    code, out, err = run_cli(capsys, [*model, "-o", str(tmp_path / "no" / "x.jsonl"), "x"])
    assert code == 2 and err.startswith("luke-spacy: error: cannot write --output")


def test_start_up_errors(tiny_luke, tmp_path, capsys):
    model = ["annotate", "--model", str(tiny_luke)]
    code, out, err = run_cli(capsys, [*model, "-i", str(tmp_path)])
    assert (code, out) == (2, "")
    assert err == f"luke-spacy: error: cannot read --input {tmp_path}: is a folder\n"
    code, out, err = run_cli(capsys, [*model, "--lang", "zz", "x"])
    assert (code, out) == (2, "") and len(err.splitlines()) == 1 and "'zz'" in err
    code, out, err = run_cli(capsys, [*model, "--context", "paragraph", "x"])
    assert (code, out) == (2, "") and "context" in err and "'document', 'sentence'" in err
    assert len(err.splitlines()) == 1


@pytest.mark.slow  # a subprocess that loads the model: ~10 s
def test_closed_pipe_exits_quietly(tiny_luke, tmp_path):
    # Records large enough that the child blocks on a full pipe before it is closed.
    path = jsonl_lines(tmp_path / "big.jsonl", [{**good(i), "pad": "x" * 20000} for i in range(16)])
    process = subprocess.Popen(
        [*console_script(), "annotate", "--model", str(tiny_luke), "-i", str(path)]
        + ["--batch-size", "2", "--no-progress"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=OFFLINE_ENV,
    )
    watchdog = threading.Timer(120, process.kill)  # a hang fails instead of stalling
    watchdog.start()
    try:
        assert json.loads(process.stdout.readline())["meta"]["n"] == 0
        process.stdout.close()  # like `| head -1`
        err = process.stderr.read().decode()
        code = process.wait(timeout=10)
    finally:
        watchdog.cancel()
        process.kill()
    assert code == 141 and err == ""


def wait_until_mapped(process: subprocess.Popen, library: str, timeout: float = 60) -> None:
    """Return once the process has loaded a shared library (its /proc maps name it)."""
    maps = Path(f"/proc/{process.pid}/maps")
    deadline = time.monotonic() + timeout
    while process.poll() is None and time.monotonic() < deadline:
        if library in maps.read_text(errors="replace"):
            return
        time.sleep(0.005)  # poll interval
    pytest.fail(f"the process never loaded {library} (exit status {process.poll()})")


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs Linux /proc")
def test_ctrl_c_during_start_up(tiny_luke):
    # stdin stays open and empty, so a signal that comes after start-up (a fast machine)
    # finds the command waiting for input, which must end the same way.
    process = subprocess.Popen(
        [*console_script(), "annotate", "--model", str(tiny_luke)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=OFFLINE_ENV,
        # As from a terminal: a test run started in the background of a script (`&`) ignores
        # SIGINT, and an ignored signal stays ignored in its children.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        # The command imports torch only once its main() runs: the signal comes while
        # torch (and spaCy) are being imported, whatever the machine's speed.
        wait_until_mapped(process, "libtorch")
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert (process.returncode, out, err.decode()) == (130, b"", "luke-spacy: interrupted\n")
