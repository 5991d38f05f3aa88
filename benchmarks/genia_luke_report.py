"""Summary JSON of a `train_genia_luke.sh` run, with spancat's figures beside it.

    python benchmarks/genia_luke_report.py --out-dir /work/models/genia-luke --key genia \
        --threads 1 --results benchmarks/results/genia-luke.json \
        --spancat benchmarks/results/genia-spancat.json --steps 400 ...

Reads what the run left in --out-dir: spaCy's training log (train.jsonl), time.txt (wall and
CPU seconds of `spacy train`), `spacy evaluate --spans-key` of model-best on test
(metrics/test.json), genia_score.py of the nested group (metrics/test-nested.json) and of
doc.ents (metrics/test-flat.json), both against the nested gold, the corpus counts and
model-best's config; and, when the recipe's TUNE step ran, the thresholds tuned on
dev-holdout (metrics/tune.json) with the tuned pipeline's test scores. The `table` compares,
on GENIA test against the nested gold: the nested group, doc.ents of the same model (and of
the tuned pipeline), and spancat (its results JSON).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Dict

import spacy
from common import write_json
from conll_small_report import add_training_arguments, timed_run, training_settings

SIZES = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")


def row(system: str, score: Dict[str, Any], training: Dict[str, Any]) -> Dict[str, Any]:
    """One line of the comparison: P/R/F1 and inner/outer recall against the nested gold,
    and the training time."""
    return {
        "system": system,
        "p": score["p"],
        "r": score["r"],
        "f": score["f"],
        "inner_recall": score["inner"]["recall"],
        "outer_recall": score["outer"]["recall"],
        "train_wall_seconds": training.get("wall_seconds"),
        "train_cpu_seconds": training.get("cpu_seconds"),
    }


def _read(path: Path) -> Dict[str, Any]:
    """A genia_score.py output, less the corpus path."""
    return {k: v for k, v in json.loads(path.read_text()).items() if k != "docbin"}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out-dir", type=Path, required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--results", type=Path, required=True)
    parser.add_argument("--spancat", type=Path, required=True)
    add_training_arguments(parser)
    args = parser.parse_args(argv)

    out, key = args.out_dir, args.key
    log, run = timed_run(out, "luke_ner", f"spans_{key}", args.threads)
    config = spacy.util.load_config(out / "model-best" / "config.cfg")
    luke = config["components"]["luke_ner"]
    model_config = json.loads(args.model_config.read_text(encoding="utf8"))
    metrics = json.loads((out / "metrics" / "test.json").read_text())
    nested, flat = (
        _read(out / "metrics" / name) for name in ("test-nested.json", "test-flat.json")
    )
    training = {**training_settings(args), **run}
    spancat = json.loads(args.spancat.read_text(encoding="utf8"))
    report = {
        "what": "LUKE-shaped model trained from random init on GENIA dev from nested gold "
        "(gold_spans_key) with spacy train; scored on GENIA test against the nested gold: the "
        "nested group (nested_spans_key) and doc.ents of the same model, spancat beside",
        "recipe": "benchmarks/train_genia_luke.sh",
        "model": {k: model_config[k] for k in SIZES},
        "vocabulary": "RoBERTa BPE (shared/data/roberta-bpe), random init",
        "component": {
            k: luke[k]
            for k in (
                "context",
                "max_mention_length",
                "max_entity_length",
                "nested_spans_key",
                "gold_spans_key",
                "threshold",
            )
        },
        "data": {
            "train": "dev-train.spacy (GENIA dev without its last documents)",
            "model_selection": f"dev-holdout.spacy, by spans_{key}_f (the nested group)",
            "test": "test.spacy",
            "counts": json.loads((out / "corpus" / "counts.json").read_text())["counts"],
        },
        "coverage": json.loads((out / "model-best" / "luke_ner" / "cfg").read_text()).get(
            "coverage"
        ),
        "training": training,
        "table": [
            row("luke_ner nested group", nested, training),
            row("luke_ner doc.ents", flat, training),
            row(f"spancat ({spancat['recipe']})", spancat["test_genia_score"], spancat["training"]),
        ],
        "test_spacy_evaluate": {
            name: {m: metrics.get(f"{prefix}_{m}") for m in ("p", "r", "f", "per_type")}
            for name, prefix in (("nested_group", f"spans_{key}"), ("ents_vs_flat_gold", "ents"))
        },
        "test_nested_group": nested,
        "test_ents": flat,
        "log": log,
    }
    tuned = out / "metrics" / "tune.json"
    if tuned.exists():  # the recipe's TUNE step: thresholds tuned on dev-holdout
        tune = json.loads(tuned.read_text())
        report["tuned_on_holdout"] = {
            "settings": tune["settings"],
            "calibration": tune.get("calibration"),
            "holdout_before": tune["before"]["per_label"],
            "holdout_after": tune["after"]["per_label"],
        }
        for name, system in (("nested", "nested group"), ("flat", "doc.ents")):
            score = _read(out / "metrics" / f"test-{name}-tuned.json")
            report["tuned_on_holdout"][f"test_{name}"] = score
            report["table"].append(row(f"luke_ner {system}, tuned on dev-holdout", score, training))
    write_json(str(args.results), report)
    print(json.dumps({k: report[k] for k in ("table",)}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
