"""The command line and the user's files (issue 17): it never empties or overwrites a file it
should read, never hangs on a named pipe, and writes only strict JSON."""

from __future__ import annotations

import io
import json
import math
import os
import sys
import threading
from pathlib import Path
from typing import Any, Dict, List

import pytest

from luke_spacy.cli import main
from luke_spacy.random_model import SAMPLE_TEXT

TEXTS = list(SAMPLE_TEXT[:3])


def run_cli(capsys, argv: List[str]):
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_error(err: str) -> str:
    """The one line of a refusal, without its prefix."""
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    assert err.startswith("luke-spacy: error: "), err
    return err[len("luke-spacy: error: ") :].rstrip("\n")


def strict_json(line: str) -> Dict[str, Any]:
    """json.loads without Python's NaN/Infinity extension (RFC 8259)."""

    def refuse(constant: str) -> Any:
        raise ValueError(f"not JSON: {constant}")

    return json.loads(line, parse_constant=refuse)


@pytest.fixture()
def jsonl(tmp_path) -> Path:
    path = tmp_path / "a.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS), encoding="utf-8")
    return path


# Item 1: an output that is an input, or the other output, however spelled.


def same_file_spellings(path: Path) -> Dict[str, str]:
    """Other names of `path`: as given, relative with ./, a symbolic and a hard link."""
    symlink = path.with_name("link.jsonl")
    symlink.symlink_to(path)
    hardlink = path.with_name("hard.jsonl")
    os.link(path, hardlink)
    return {
        "same": str(path),
        "dot": f"./{path.name}",
        "symlink": str(symlink),
        "hardlink": str(hardlink),
    }


@pytest.mark.parametrize("spelling", ["same", "dot", "symlink", "hardlink"])
@pytest.mark.parametrize("option", ["-o", "--html"])
def test_writing_over_the_input_is_refused(tiny_luke, jsonl, capsys, monkeypatch, spelling, option):
    monkeypatch.chdir(jsonl.parent)
    content = jsonl.read_bytes()
    target = same_file_spellings(jsonl)[spelling]
    argv = ["annotate", "--model", str(tiny_luke), "-i", str(jsonl), "--no-progress"]
    code, out, err = run_cli(capsys, [*argv, option, target])
    assert (code, out) == (2, "")
    message = one_error(err)
    assert message.startswith(f"{'--output' if option == '-o' else '--html'} {target} is ")
    assert f"same file as --input {jsonl}" in message and "emptied" in message
    assert jsonl.read_bytes() == content


@pytest.mark.parametrize("exists", [False, True])
def test_html_over_the_output_is_refused(tiny_luke, jsonl, tmp_path, capsys, monkeypatch, exists):
    monkeypatch.chdir(tmp_path)
    if exists:
        (tmp_path / "out.jsonl").write_text("kept\n")
    argv = ["annotate", "--model", str(tiny_luke), "-i", str(jsonl), "--no-progress"]
    code, out, err = run_cli(capsys, [*argv, "-o", "out.jsonl", "--html", "./out.jsonl"])
    assert (code, out) == (2, "")
    assert one_error(err).startswith("--html ./out.jsonl is the same file as --output out.jsonl")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["a.jsonl"] + (["out.jsonl"] if exists else [])
    )
    if exists:
        assert (tmp_path / "out.jsonl").read_text() == "kept\n"


def test_distinct_files_and_devices_are_not_refused(tiny_luke, jsonl, tmp_path, capsys):
    # Devices may be read and written at once: only regular files lose their content.
    argv = ["annotate", "--model", str(tiny_luke), "--no-progress"]
    code, out, err = run_cli(capsys, [*argv, "-i", "/dev/null", "-o", "/dev/null"])
    assert (code, out, err) == (0, "", "")
    output = tmp_path / "b.jsonl"
    code, out, err = run_cli(capsys, [*argv, "-i", str(jsonl), "-o", str(output)])
    assert (code, err) == (0, "")
    assert [strict_json(line)["text"] for line in output.read_text().splitlines()] == TEXTS


# Item 2: random-model into a folder that holds files, or onto a file.


def test_random_model_refuses_a_folder_with_files(tmp_path, capsys):
    folder = tmp_path / "checkpoint"
    folder.mkdir()
    (folder / "config.json").write_text('{"mine": true}')
    (folder / "pytorch_model.bin").write_bytes(b"real weights")
    code, out, err = run_cli(capsys, ["random-model", str(folder)])
    assert (code, out) == (2, "")
    message = one_error(err)
    assert message.startswith(f"{folder} already holds files (config.json, pytorch_model.bin)")
    assert "--force" in message
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "pytorch_model.bin"]
    assert (folder / "config.json").read_text() == '{"mine": true}'

    code, out, err = run_cli(capsys, ["random-model", str(folder), "--force"])
    assert (code, out.strip(), err) == (0, str(folder), "")
    assert (folder / "model.safetensors").is_file()


def test_random_model_onto_a_file_is_one_line(tmp_path, capsys):
    file = tmp_path / "notes.txt"
    file.write_text("mine")
    for out_dir in (file, file / "sub"):
        code, out, err = run_cli(capsys, ["random-model", str(out_dir)])
        assert (code, out) == (2, "")
        assert str(file) in one_error(err)
    assert file.read_text() == "mine"


def test_random_model_into_an_empty_folder(tmp_path, capsys):
    folder = tmp_path / "empty"
    folder.mkdir()
    code, out, err = run_cli(capsys, ["random-model", str(folder)])
    assert (code, out.strip(), err) == (0, str(folder), "")


# Item 6: a named pipe as --input.


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes")
def test_named_pipe_input_is_read_once(tiny_luke, tmp_path, capsys):
    fifo = tmp_path / "texts.fifo"
    os.mkfifo(fifo)
    data = "".join(f"{text}\n" for text in TEXTS).encode()
    hung = threading.Event()

    def writer() -> None:
        try:
            with open(fifo, "wb") as pipe:  # waits for a reader
                pipe.write(data)
        except BrokenPipeError:  # the reader closed its end at once
            pass

    def unblock() -> None:
        # The hard timeout: a reader still waiting for a writer gets one with nothing to say,
        # so the command ends (with no records) instead of hanging the test run.
        hung.set()
        while True:
            try:
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
                return
            except OSError:  # no reader (yet)
                if done.wait(0.1):
                    return

    done = threading.Event()
    threading.Thread(target=writer, daemon=True).start()
    watchdog = threading.Timer(60, unblock)
    watchdog.start()
    try:
        argv = ["annotate", "--model", str(tiny_luke), "-i", str(fifo), "--no-progress"]
        code, out, err = run_cli(capsys, argv)
    finally:
        done.set()
        watchdog.cancel()
    assert not hung.is_set(), "the command waited for a second writer"
    assert (code, err) == (0, "")
    assert [strict_json(line)["text"] for line in out.splitlines()] == TEXTS


# Item 10: numbers that JSON cannot hold.


def test_non_finite_meta_is_written_as_null(tiny_luke, tmp_path, capsys):
    path = tmp_path / "nan.jsonl"
    lines = [
        '{"text": "Peter lives in Paris .", "a": NaN, "b": Infinity, "c": -Infinity, "d": 1e400,'
        ' "e": [1.5, NaN], "f": {"g": -1e999, "h": "NaN"}}',
        '{"text": 3, "a": NaN}',
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    argv = ["annotate", "--model", str(tiny_luke), "-i", str(path), "--no-progress"]
    code, out, err = run_cli(capsys, [*argv, "--on-error", "record"])
    assert code == 1
    records = [strict_json(line) for line in out.splitlines()]
    assert records[0]["meta"] == {
        "a": None,
        "b": None,
        "c": None,
        "d": None,
        "e": [1.5, None],
        "f": {"g": None, "h": "NaN"},
    }
    assert records[1]["meta"] == {"a": None} and "error" in records[1]
    assert all(math.isfinite(e["score"]) for e in records[0]["entities"])


# Smaller: a non-number --batch-size, and files that are not UTF-8 by their byte order mark.


@pytest.mark.parametrize("value", ["abc", "0", "-3", "2.5"])
def test_batch_size_says_what_is_expected(value, capsys):
    code, out, err = run_cli(capsys, ["annotate", "--batch-size", value, "x"])
    assert (code, out) == (2, "")
    assert f"argument --batch-size: expected a positive integer, got '{value}'" in err
    assert "_positive_int" not in err


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-be", "utf-32"])
def test_utf16_input_is_refused_in_one_line(tiny_luke, tmp_path, capsys, encoding):
    path = tmp_path / "wide.jsonl"
    bom = {"utf-16": b"\xff\xfe", "utf-16-be": b"\xfe\xff", "utf-32": b"\xff\xfe\x00\x00"}
    text = "".join(json.dumps({"text": t}) + "\n" for t in TEXTS)
    # Python's "utf-16"/"utf-32" write their BOM; "utf-16-be" does not.
    data = text.encode(encoding)
    path.write_bytes(data if data.startswith(bom[encoding]) else bom[encoding] + data)
    name = encoding.upper()[:6]
    code, out, err = run_cli(capsys, ["annotate", "--model", str(tiny_luke), "-i", str(path)])
    assert (code, out) == (2, "")
    assert one_error(err) == (
        f"cannot read --input {path}: the file is {name} (byte order mark), convert to UTF-8 "
        f"(iconv -f {name} -t UTF-8)"
    )


def test_utf16_stdin_is_one_error_and_no_junk(tiny_luke, capsys, monkeypatch):
    data = "".join(f"{t}\n" for t in TEXTS).encode("utf-16")
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data), encoding="utf-8"))
    code, out, err = run_cli(capsys, ["annotate", "--model", str(tiny_luke)])
    assert (code, out) == (1, "")
    assert err.splitlines() == [
        "luke-spacy: error: <stdin>:1: the file is UTF-16 (byte order mark), convert to UTF-8 "
        "(iconv -f UTF-16 -t UTF-8)",
        "luke-spacy: 1 of 1 records failed (skipped)",
    ]


def test_one_check_of_a_new_output_folder(tmp_path):
    """random-model, tune-thresholds and export-onnx share `check_new_folder`."""
    from luke_spacy.errors import CLIError
    from luke_spacy.outputs import check_new_folder, same_file

    source, out = tmp_path / "source", tmp_path / "out"
    source.mkdir()
    check_new_folder(out, False, written="it", sources=[("the source", source)])  # new: fine
    with pytest.raises(ValueError, match="is the source"):
        spelled = tmp_path / "." / "source"
        check_new_folder(
            spelled, True, written="it", sources=[("the source", source)], error=ValueError
        )
    (source / "file").write_text("mine")
    with pytest.raises(CLIError, match=r"already holds files \(file\).*--force to write it over"):
        check_new_folder(source, False, written="it")
    check_new_folder(source, True, written="it")
    with pytest.raises(CLIError, match="is a file, not a folder"):
        check_new_folder(source / "file", True, written="it")
    assert same_file(source / "file", tmp_path / "source" / "." / "file")
    assert not same_file(Path("/dev/null"), Path("/dev/null"))  # read and written at once
