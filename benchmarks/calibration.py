"""Expected calibration error of a pipeline's entity scores on a corpus it was not tuned on.

    python benchmarks/calibration.py PIPELINE test.spacy [PIPELINE ...] --out calibration.json

For each pipeline: its luke_ner component's decoding settings (threshold, temperature,
nil_veto) as saved, every candidate span scored once (gold words and sentences), the entities
of `doc.ents` scored against the gold, and the ECE of their scores (15 bins) with P/R/F1.
"""

from __future__ import annotations

import argparse
from typing import Optional, Sequence

from common import write_json

from luke_spacy.tuning import Decoding, Tuner, load_component, score_corpus


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("docbin")
    parser.add_argument("pipelines", nargs="+")
    parser.add_argument("--out", help="write the results here as JSON")
    args = parser.parse_args(argv)
    results = {}
    for path in args.pipelines:
        nlp, name = load_component(path, None, -1)
        settings = nlp.get_pipe(name).settings
        corpus = score_corpus(nlp, name, args.docbin, None)
        outcome = Tuner(corpus).outcome(Decoding.from_settings(settings, corpus.labels))
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
