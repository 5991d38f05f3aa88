"""Expected calibration error of a pipeline's entity scores on a corpus it was not tuned on.

    python benchmarks/calibration.py PIPELINE test.spacy [PIPELINE ...] --out calibration.json

For each pipeline: its luke_ner component's decoding settings (threshold, temperature,
nil_veto) as saved, every candidate span scored once (gold words and sentences), the entities
of `doc.ents` scored against the gold, and the ECE of their scores (15 bins) with P/R/F1.
"""

from __future__ import annotations

import argparse
from typing import Optional, Sequence

import spacy
from common import write_json

from luke_spacy.tuning import Decoding, Tuner, score_corpus


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("docbin")
    parser.add_argument("pipelines", nargs="+")
    parser.add_argument("--out", help="write the results here as JSON")
    args = parser.parse_args(argv)
    results = {}
    for path in args.pipelines:
        nlp = spacy.load(path)
        name = next(n for n in nlp.pipe_names if nlp.get_pipe_meta(n).factory == "luke_ner")
        settings = nlp.get_pipe(name).settings
        corpus = score_corpus(nlp, name, args.docbin, None)
        table = settings.threshold
        if not isinstance(table, dict):
            table = dict.fromkeys(corpus.labels[1:], float(table))
        outcome = Tuner(corpus).outcome(Decoding(table, settings.temperature, settings.nil_veto))
        total = outcome.overall
        results[path] = {
            "threshold": settings.threshold,
            "temperature": settings.temperature,
            "nil_veto": settings.nil_veto,
            "ece": outcome.ece,
            "mean_score": sum(outcome.confidences) / max(1, len(outcome.confidences)),
            **total.to_dict(),
        }
        print(f"{path}: ECE {outcome.ece:.4f}, P {total.p:.4f} R {total.r:.4f} F {total.f:.4f}")
    write_json(args.out, {"docbin": args.docbin, "pipelines": results})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
