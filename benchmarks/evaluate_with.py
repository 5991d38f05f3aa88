"""`spacy evaluate` of a pipeline with some of luke_ner's settings changed, without saving a copy.

    python benchmarks/evaluate_with.py PIPELINE test.spacy --set context=document --out s.json

Each `--set KEY=VALUE` overrides one setting of the `luke_ner` component at load time (VALUE is
read as JSON when it parses, else as a string: `threshold=0.3`, `attention="eager"`). The
predicted Docs get the gold words and sentence boundaries, as with `spacy evaluate --code
scripts/gold_sentences.py`, so the scores equal `spacy evaluate`'s when nothing is set.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import spacy
from common import write_json
from spacy.scorer import Scorer
from spacy.tokens import Doc, DocBin
from spacy.training import Example

from luke_spacy.conll import unannotated


def parse_settings(pairs: Sequence[str]) -> Dict[str, Any]:
    """`KEY=VALUE` pairs as a dict, each VALUE JSON when it parses, else the string."""
    settings: Dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"expected KEY=VALUE, got {pair!r}")
        try:
            settings[key] = json.loads(value)
        except json.JSONDecodeError:
            settings[key] = value
    return settings


def evaluate(
    pipeline: str, docbin: Path, settings: Dict[str, Any], component: str = "luke_ner"
) -> Tuple[Dict[str, Any], List[Doc]]:
    """Scores (as `spacy evaluate` gives them) and the predicted Docs of a pipeline with some
    of its component's settings overridden at load time."""
    nlp = spacy.load(pipeline, config={"components": {component: settings}})
    refs = list(DocBin().from_disk(docbin).get_docs(nlp.vocab))
    start = time.perf_counter()
    predicted = list(nlp.pipe(unannotated(ref) for ref in refs))
    # What nlp.evaluate does after running the pipeline, keeping the Docs.
    scores = Scorer(nlp).score([Example(doc, ref) for doc, ref in zip(predicted, refs)])
    seconds = time.perf_counter() - start
    result = {
        "pipeline": pipeline,
        "docbin": str(docbin),
        "settings": settings,
        "p": scores["ents_p"],
        "r": scores["ents_r"],
        "f": scores["ents_f"],
        "per_type": scores["ents_per_type"],
        "seconds": seconds,
    }
    return result, predicted


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("pipeline")
    parser.add_argument("docbin", type=Path)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--component", default="luke_ner")
    parser.add_argument("--out", help="write the scores here as JSON")
    args = parser.parse_args(argv)
    settings = parse_settings(args.set)
    result, _ = evaluate(args.pipeline, args.docbin, settings, args.component)
    print(f"{settings}: P {result['p']:.4f}  R {result['r']:.4f}  F {result['f']:.4f}")
    write_json(args.out, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
