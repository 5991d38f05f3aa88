"""Gather benchmarks/gpu/run.sh's outputs into one results JSON and the table of issue #22.

    python benchmarks/gpu/summary.py OUT_DIR [--device cuda] [--budgets 1024 16384]

Reads OUT_DIR/steps.txt (each step's exit status and seconds), card.txt and preflight.log,
speed.json, spacy-train.jsonl and train-*.json; writes OUT_DIR/results.json and prints the
table as Markdown. The exit status is 0 only when every step passed and every figure is
there: words/s, x B1 and agreement with B1 of B1, B2 and each luke_ner mode, the share of the
card's peak (on CUDA), the peak memory of each mode and of each max_batch_items budget, the
spacy train losses (and that they fall), and the words/s of fp32 and mixed-precision training.
The GPU targets (exact fp32 identical to B1 and at least 3x B1; bf16 at least 20x B1 and 30% of
the peak) are reported as met or not; they do not change the exit status. Standard library
only, so that it runs where the bundle does not import.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

STEPS = ("preflight", "make-model", "speed", "spacy-train")
METHODS = ("B1", "B2", "ours:exact", "ours:exact+sdpa", "ours:bf16+sdpa")
# Issue #22's targets on the GPU: (method, figure, at least).
TARGETS = (
    ("ours:exact+sdpa", "sentences_identical", 1.0),
    ("ours:exact+sdpa", "x_B1", 3.0),
    ("ours:bf16+sdpa", "x_B1", 20.0),
    ("ours:bf16+sdpa", "share_of_peak", 0.30),
)


def read_steps(out: Path) -> Dict[str, Dict[str, int]]:
    """{step: {"rc": exit status, "seconds": wall seconds}} from steps.txt."""
    steps: Dict[str, Dict[str, int]] = {}
    path = out / "steps.txt"
    for line in path.read_text().splitlines() if path.is_file() else []:
        match = re.fullmatch(r"(\S+) rc=(\d+) (\d+)s", line.strip())
        if match:
            steps[match.group(1)] = {"rc": int(match.group(2)), "seconds": int(match.group(3))}
    return steps


def read_json(path: Path) -> Optional[Dict[str, Any]]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def loss_per_step(lines: Sequence[str]) -> List[Dict[str, float]]:
    """Mean loss per update between spaCy's log rows (each row sums the losses since the
    previous one; the first row is step 0, one update)."""
    rows, previous = [], -1
    for line in lines:
        if not line.strip():
            continue
        row = json.loads(line)
        step, loss = row["step"], sum(row["losses"].values())
        rows.append({"step": step, "loss_per_update": loss / max(step - previous, 1)})
        previous = step
    return rows


def spacy_train(out: Path) -> Dict[str, Any]:
    path = out / "spacy-train.jsonl"
    rows = loss_per_step(path.read_text().splitlines()) if path.is_file() else []
    result: Dict[str, Any] = {"losses": rows}
    if len(rows) >= 2:
        result["loss_first"] = rows[0]["loss_per_update"]
        result["loss_last"] = rows[-1]["loss_per_update"]
        result["loss_falls"] = result["loss_last"] < result["loss_first"]
    return result


def speed_rows(speed: Dict[str, Any]) -> Dict[str, Dict[str, Any]]:
    keys = (
        "seconds", "words_per_s", "x_B1", "x_B2", "share_of_peak", "tflops_per_s",
        "share_of_gemm", "peak_memory_kind", "peak_memory_mib", "peak_memory_extra_mib",
        "max_batch_items", "largest_batch_positions", "forward_batches", "passes",
    )  # fmt: skip
    rows = {}
    for name, row in speed.get("results", {}).items():
        rows[name] = {key: row[key] for key in keys if key in row}
        if "agreement_with_B1" in row:
            agree = row["agreement_with_B1"]
            rows[name]["sentences_identical"] = agree["sentences_identical"]
            rows[name]["sentences_differing"] = agree["sentences_differing"]
    return rows


def training(out: Path) -> Dict[str, Any]:
    result = {}
    for path in sorted(out.glob("train-*.json")):
        data = read_json(path) or {}
        kind = "mixed" if data.get("mixed_precision") else "fp32"
        result[kind] = {
            key: data.get(key)
            for key in (
                "size", "device", "card", "steps", "train_seconds", "train_words_per_second",
                "seconds_per_step", "loss_first_10_steps", "loss_last_10_steps", "dev_ents_f",
            )
        }  # fmt: skip
    return result


def summarize(out: Path, device: str, budgets: Sequence[int]) -> Dict[str, Any]:
    cuda = device.startswith("cuda")
    steps = read_steps(out)
    card = (out / "card.txt").read_text().strip() if (out / "card.txt").is_file() else None
    preflight = out / "preflight.log"
    speed = read_json(out / "speed.json") or {}
    result: Dict[str, Any] = {
        "card": card,
        "device": device,
        "environment": preflight.read_text().strip() if preflight.is_file() else None,
        "steps": steps,
        "data": speed.get("data"),
        "methods": speed_rows(speed),
        "budgets": speed.get("budgets", {}),
        "spacy_train": spacy_train(out),
        "training": training(out),
    }
    missing = []
    train_steps = [name for name in steps if name.startswith("train-")]
    for name in [*STEPS, *(train_steps or ["train-*"])]:
        if steps.get(name, {}).get("rc") != 0:
            missing.append(f"step {name} did not pass ({steps.get(name, 'not run')})")
    if steps.get("preflight", {}).get("rc") != 0:  # no step ran: the figures say nothing more
        return {**result, "missing": missing, "passed": False}
    for name in METHODS:
        row = result["methods"].get(name)
        needed = ["words_per_s", "peak_memory_extra_mib"]
        needed += [] if name == "B1" else ["x_B1", "sentences_identical"]
        needed += ["share_of_peak"] if cuda and name != "B2" else []
        for key in needed:
            if row is None or row.get(key) is None:
                missing.append(f"{name}: {key}")
    for budget in budgets:
        row = result["budgets"].get(str(budget))
        for key in ("peak_memory_extra_mib", "largest_batch_positions"):
            if row is None or row.get(key) is None:
                missing.append(f"budget {budget}: {key}")
        if row and row.get("largest_batch_positions", 0) > budget:
            missing.append(f"budget {budget}: a batch of {row['largest_batch_positions']}")
    if not result["spacy_train"].get("loss_falls"):
        missing.append("spacy train: losses that fall")
    for kind in ("fp32", "mixed"):
        if not (result["training"].get(kind) or {}).get("train_words_per_second"):
            missing.append(f"training {kind}: words/s")
    if cuda:
        result["targets"] = {
            f"{name} {key} >= {least}": (result["methods"].get(name) or {}).get(key, -1) >= least
            for name, key, least in TARGETS
        }
    result["missing"] = missing
    result["passed"] = not missing
    return result


def table(result: Dict[str, Any]) -> str:
    lines = [
        f"Card: {result['card'] or result['device']}; data: {result['data']}",
        "",
        "| method | words/s | x B1 | share of peak | agreement with B1 | peak memory (+MiB) |",
        "|---|---|---|---|---|---|",
    ]
    for name, row in result["methods"].items():
        share = row.get("share_of_peak")
        agree = row.get("sentences_identical")
        lines.append(
            f"| {name} | {row.get('words_per_s')} | {row.get('x_B1', '-')} | "
            f"{'-' if share is None else f'{100 * share:.1f}%'} | "
            f"{'-' if agree is None else f'{100 * agree:.1f}%'} | "
            f"{row.get('peak_memory_mib')} (+{row.get('peak_memory_extra_mib')}) |"
        )
    for budget, row in result["budgets"].items():
        lines.append(
            f"| {row.get('mode')}, max_batch_items {budget} | {row.get('words_per_s')} | - | - |"
            f" largest batch {row.get('largest_batch_positions')} positions | "
            f"{row.get('peak_memory_mib')} (+{row.get('peak_memory_extra_mib')}) |"
        )
    train = result["spacy_train"]
    lines += [
        "",
        f"spacy train, mixed precision: loss per update {train.get('loss_first')} -> "
        f"{train.get('loss_last')} (falls: {train.get('loss_falls')})",
    ]
    for kind, row in result["training"].items():
        lines.append(
            f"training.py {row.get('size')} {kind}: {row.get('train_words_per_second')} words/s"
        )
    for target, met in (result.get("targets") or {}).items():
        lines.append(f"target {target}: {'met' if met else 'MISSED'}")
    lines += [f"missing: {item}" for item in result["missing"]]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="run.sh's output folder")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--budgets", type=int, nargs="*", default=[])
    args = parser.parse_args(argv)
    result = summarize(args.out, args.device, args.budgets)
    (args.out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    print(table(result))
    print(f"{'PASSED' if result['passed'] else 'FAILED'}: {args.out / 'results.json'}")
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
