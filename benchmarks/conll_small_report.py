"""Summary JSON of a `train_conll_small.sh` run: settings, steps, time, dev and test scores.

    python benchmarks/conll_small_report.py --out-dir /work/models/conll-small \
        --results benchmarks/results/conll-small-train.json --train-seconds 7000 ...

Reads what the run left in --out-dir: spaCy's training log (train.jsonl: loss and dev scores
at each evaluation; train.log: the same table with wall-clock times), the `spacy evaluate`
outputs metrics/dev.json and metrics/test.json of model-best, the corpus counts and
model-best's config.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Dict, List, Tuple

import spacy
from common import environment, write_json


def training_log(path: Path, component: str, score_prefix: str) -> List[Dict[str, Any]]:
    """One row per evaluation of a `spacy train` jsonl log (`ConsoleLogger.v2 output_file`):
    step, epoch, the component's loss summed since the last evaluation, dev P/R/F1 of the
    scores named `{score_prefix}_p/_r/_f` (e.g. "ents", "spans_genia"; the log has them in
    percent, these rows as fractions)."""
    rows = []
    for line in path.read_text(encoding="utf8").splitlines():
        entry = json.loads(line)
        row = {
            "step": entry["step"],
            "epoch": entry["epoch"],
            "loss_since_last_eval": entry["losses"].get(component),
        }
        for metric in ("p", "r", "f"):
            score = entry["scores"].get(f"{score_prefix}_{metric}")
            row[f"dev_{metric}"] = None if score is None else score / 100
        rows.append(row)
    return rows


def timed_run(
    out: Path, component: str, score_prefix: str, threads: int
) -> Tuple[List[Dict[str, Any]], Dict[str, Any]]:
    """The log (`training_log`) of a `spacy train` run in `out` that a recipe timed with
    /usr/bin/time into time.txt, and its summary: wall and CPU seconds, steps and epochs done,
    the best evaluation, the environment."""
    log = training_log(out / "train.jsonl", component, score_prefix)
    best = max(log, key=lambda row: row["dev_f"] or 0.0)
    times = json.loads((out / "time.txt").read_text().strip().splitlines()[-1])
    return log, {
        "threads": threads,
        **times,
        "cpu_seconds": times["user_seconds"] + times["system_seconds"],
        "steps_done": log[-1]["step"],
        "epochs_done": log[-1]["epoch"],
        "best_step": best["step"],
        "best_holdout_f": best["dev_f"],
        "environment": run_environment(threads),
        "spacy": spacy.__version__,
    }


def run_environment(threads: int) -> Dict[str, Any]:
    """`common.environment` less the load average, which is the report's, not the run's."""
    env = environment("cpu", threads)
    env.pop("loadavg_start", None)
    return env


def add_training_arguments(parser: argparse.ArgumentParser) -> None:
    """The training settings a `train_*.sh` recipe passes on: --threads, --steps, ..."""
    parser.add_argument("--model-config", type=Path, required=True)
    for name in ("threads", "steps", "eval-frequency", "warmup-steps", "batch-words", "seed"):
        parser.add_argument(f"--{name}", type=int, required=True)
    for name in ("learn-rate", "dropout"):
        parser.add_argument(f"--{name}", type=float, required=True)


def training_settings(args: argparse.Namespace) -> Dict[str, Any]:
    """The settings of `add_training_arguments`, as the reports write them."""
    return {
        "threads": args.threads,
        "max_steps": args.steps,
        "eval_frequency": args.eval_frequency,
        "learn_rate": args.learn_rate,
        "schedule": "warmup_linear (linear warm-up, linear decay to 0 at max_steps)",
        "warmup_steps": args.warmup_steps,
        "dropout": args.dropout,
        "batch_words": args.batch_words,
        "seed": args.seed,
    }


def scores(path: Path) -> Dict[str, Any]:
    """P/R/F1 overall and per type from a `spacy evaluate --output` file."""
    metrics = json.loads(path.read_text(encoding="utf8"))
    return {
        "p": metrics["ents_p"],
        "r": metrics["ents_r"],
        "f": metrics["ents_f"],
        "per_type": metrics["ents_per_type"],
        "words_per_second": metrics.get("speed"),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out-dir", type=Path, required=True)
    parser.add_argument("--results", type=Path, required=True)
    parser.add_argument("--train-seconds", type=float, required=True)
    add_training_arguments(parser)
    parser.add_argument("--context", required=True)
    args = parser.parse_args(argv)

    out = args.out_dir
    log = training_log(out / "train.jsonl", "luke_ner", "ents")
    best = max(log, key=lambda row: row["dev_f"] or 0.0)
    config = spacy.util.load_config(out / "model-best" / "config.cfg")
    luke = config["components"]["luke_ner"]
    model_config = json.loads(args.model_config.read_text(encoding="utf8"))
    sizes = (
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "intermediate_size",
        "entity_emb_size",
    )
    report = {
        "what": "LUKE-shaped model trained from random init on CoNLL-2003 train with spacy train",
        "recipe": "benchmarks/train_conll_small.sh",
        "model": {key: model_config[key] for key in sizes},
        "vocabulary": "RoBERTa BPE (shared/data/roberta-bpe), random init",
        "component": {
            key: luke[key]
            for key in ("context", "max_mention_length", "max_entity_length", "max_length")
        },
        "training": {
            **training_settings(args),
            "optimizer": dict(config["training"]["optimizer"], learn_rate=None),
            "train_seconds": args.train_seconds,
            "seconds_per_step": args.train_seconds / max(1, log[-1]["step"]),
            "steps_done": log[-1]["step"],
            "epochs_done": log[-1]["epoch"],
            "best_step": best["step"],
            "environment": run_environment(args.threads),
            "spacy": spacy.__version__,
        },
        "corpus_counts": json.loads((out / "corpus" / "counts.json").read_text())["counts"],
        "evaluation": "spacy evaluate model-best --code scripts/gold_sentences.py "
        f"(gold sentence boundaries, {luke['context']} context)",
        "dev": scores(out / "metrics" / "dev.json"),
        "test": scores(out / "metrics" / "test.json"),
        "log": log,
    }
    other = out / "metrics" / "test-document-context.json"
    if other.exists():
        scores_other = json.loads(other.read_text(encoding="utf8"))
        report["test_document_context"] = {
            key: scores_other[key] for key in ("settings", "p", "r", "f", "per_type")
        }
    write_json(str(args.results), report)
    print(json.dumps({k: report[k] for k in ("dev", "test")}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
