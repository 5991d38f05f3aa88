"""The `luke-spacy` command line, in-process and as the installed console script."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import sysconfig
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

    from luke_spacy.cli import build_parser, load_pipeline

    def no_cupy(gpu_id: int) -> bool:
        raise ValueError("Cannot use GPU, CuPy is not installed")

    monkeypatch.setattr(spacy, "require_gpu", no_cupy)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code, out, err = run_cli(capsys, ["annotate", "--model", str(tiny_luke), "--gpu", "0", "x"])
    assert code == 2 and out == ""
    assert (
        err.strip() == "luke-spacy: error: cannot use GPU 0: Cannot use GPU, CuPy is not installed"
    )

    # Without CuPy but with a torch GPU, luke_ner runs in torch on that device.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    args = build_parser().parse_args(["annotate", "--model", str(tiny_luke), "--gpu", "1"])
    nlp, spans_keys = load_pipeline(args)
    assert nlp.get_pipe("luke_ner").cfg["device"] == "cuda:1"
    assert nlp.pipe_names == ["sentencizer", "luke_ner"] and spans_keys == ["luke_ner"]
