"""Summary JSON of a `tune_conll_small.sh` run: per-label F1 on dev before and after tuning,
and on test (which the tuning never saw), for each tuned pipeline.

    python benchmarks/thresholds_report.py --out-dir /work/models/conll-small-thresholds \
        --model /work/models/conll-small/model-best \
        --baseline-test /work/models/conll-small/metrics/test.json \
        --results benchmarks/results/conll-small-thresholds.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Dict

from common import write_json
from conll_small_report import run_environment, scores

RUNS = {
    "tuned": "thresholds and a temperature (--temperature)",
    "tuned-no-nil-veto": "thresholds, a temperature and nil_veto = false (--no-nil-veto)",
}


def dev_table(table: Dict[str, Any]) -> Dict[str, Any]:
    return {
        label: {k: row[k] for k in ("threshold", "p", "r", "f") if k in row}
        for label, row in table["per_label"].items()
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out-dir", type=Path, required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--baseline-test", type=Path, required=True)
    parser.add_argument("--results", type=Path, required=True)
    args = parser.parse_args(argv)

    report: Dict[str, Any] = {
        "what": "luke-spacy tune-thresholds on CoNLL-2003 dev (doc.ents), the tuned pipelines "
        "scored on test with spacy evaluate (gold sentences)",
        "recipe": "benchmarks/tune_conll_small.sh",
        "model": args.model,
        "environment": run_environment(1),
        "test_before": scores(args.baseline_test),
    }
    calibration = json.loads((args.out_dir / "metrics" / "test-calibration.json").read_text())
    report["test_before"]["ece"] = calibration["pipelines"][args.model]["ece"]
    for name, what in RUNS.items():
        tune = json.loads((args.out_dir / "metrics" / f"tune-{name}.json").read_text())
        report[name] = {
            "what": what,
            "settings": tune["settings"],
            "calibration": tune.get("calibration"),
            "dev_before": dev_table(tune["before"]),
            "dev_after": dev_table(tune["after"]),
            "test_after": scores(args.out_dir / "metrics" / f"test-{name}.json"),
        }
        tuned = calibration["pipelines"][str(args.out_dir / name)]
        report[name]["test_after"]["ece"] = tuned["ece"]
    write_json(str(args.results), report)
    for name in RUNS:
        run = report[name]
        print(
            f"{name}: dev F {run['dev_before']['(all)']['f']:.4f} -> "
            f"{run['dev_after']['(all)']['f']:.4f}, test F {report['test_before']['f']:.4f} -> "
            f"{run['test_after']['f']:.4f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
