"""Summary JSON of a `train_genia_spancat.sh` run: config, training time, test scores.

    python benchmarks/genia_spancat_report.py --out-dir /work/models/genia-spancat \
        --key genia --threads 1 --results benchmarks/results/genia-spancat.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import spacy
from common import write_json
from conll_small_report import timed_run

DEFAULT_SUGGESTER = {"@misc": "spacy.ngram_suggester.v1", "sizes": [1, 2, 3]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out-dir", type=Path, required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--results", type=Path, required=True)
    args = parser.parse_args(argv)

    out, key = args.out_dir, args.key
    log, training = timed_run(out, "spancat", f"spans_{key}", args.threads)
    config = spacy.util.load_config(out / "model-best" / "config.cfg")
    counts = json.loads((out / "corpus" / "counts.json").read_text())["counts"]
    metrics = json.loads((out / "metrics" / "test.json").read_text())
    ours = json.loads((out / "metrics" / "test-genia-score.json").read_text())
    suggester = config["components"]["spancat"]["suggester"]
    longest = max(suggester["sizes"]) if "sizes" in suggester else suggester["max_size"]
    test_lengths = counts["test"]["entity_lengths"]
    report = {
        "what": "spaCy spancat, default config (spacy init config --pipeline spancat --lang en), "
        "trained on GENIA dev, scored on GENIA test against the nested gold",
        "recipe": "benchmarks/train_genia_spancat.sh",
        "spans_key": key,
        "data": {
            "train": "dev-train.spacy (GENIA dev without its last documents)",
            "model_selection": "dev-holdout.spacy (the last GENIA dev documents)",
            "test": "test.spacy",
            "counts": counts,
        },
        "config": {
            "pipeline": config["nlp"]["pipeline"],
            "suggester": config["components"]["spancat"]["suggester"],
            "threshold": config["components"]["spancat"]["threshold"],
            "tok2vec": config["components"]["tok2vec"]["model"]["encode"],
            "embed_attrs": config["components"]["tok2vec"]["model"]["embed"]["attrs"],
            "training": {
                k: config["training"][k]
                for k in ("max_steps", "patience", "eval_frequency", "dropout")
            },
        },
        "test_gold_longer_than_suggester": sum(
            n for length, n in test_lengths.items() if int(length) > longest
        ),
        "training": training,
        "test_spacy_evaluate": {
            "p": metrics[f"spans_{key}_p"],
            "r": metrics[f"spans_{key}_r"],
            "f": metrics[f"spans_{key}_f"],
            "per_type": metrics[f"spans_{key}_per_type"],
        },
        "test_genia_score": {k: v for k, v in ours.items() if k not in ("pipeline", "docbin")},
        "log": log,
    }
    if suggester != DEFAULT_SUGGESTER:
        report["what"] += f", except the suggester: {suggester}"
    write_json(str(args.results), report)
    print(json.dumps({k: report[k] for k in ("training", "test_spacy_evaluate")}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
