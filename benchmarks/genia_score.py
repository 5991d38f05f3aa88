"""Score a pipeline's spans against GENIA's nested gold: P/R/F1, per type, inner-entity recall.

    python benchmarks/genia_score.py PIPELINE corpus/test.spacy --pred-key genia --out s.json
    python benchmarks/genia_score.py PIPELINE corpus/test.spacy --pred-key ents   # doc.ents

The pipeline annotates the gold words with the gold sentence boundaries (as `spacy evaluate
--code scripts/gold_sentences.py` does), and its predictions are read from
`doc.spans[--pred-key]` or, with `--pred-key ents`, from `doc.ents`. Both are scored against the
nested gold in `doc.spans[--gold-key]` of the DocBin (luke_spacy.genia writes it), with overlap
allowed: a prediction is right when its start, end and label equal a gold entity's (the rule of
spaCy's span scorer). "Inner" entities are the gold entities that lie inside another gold
entity (luke_spacy.genia.inner_entities), which a flat `doc.ents` cannot hold beside their outer
entity; their recall is reported apart, with the recall of the other ("outer") gold entities.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Set, Tuple

import spacy
from common import write_json
from spacy.tokens import Doc, DocBin

from luke_spacy.conll import unannotated
from luke_spacy.genia import SPANS_KEY, inner_entities
from luke_spacy.tuning import Scores

Entity = Tuple[int, int, str]
ENTS = "ents"


def prf(tp: int, n_pred: int, n_gold: int) -> Dict[str, float]:
    """Precision, recall and F1 from counts (0.0 where undefined), with the counts: the
    tuner's own `Scores`."""
    return Scores(tp, n_pred, n_gold).to_dict()


def score_entities(
    gold: Sequence[Iterable[Entity]], predicted: Sequence[Iterable[Entity]]
) -> Dict[str, object]:
    """Exact-match scores of predicted against gold entities, document by document.

    gold (Sequence[Iterable[Entity]]): Each document's gold (start, end, label) entities;
        nested and same-span-other-label entities allowed.
    predicted (Sequence[Iterable[Entity]]): Each document's predicted entities.
    RETURNS (Dict[str, object]): p/r/f overall, `per_type`, and the recall of the gold entities
        inside another gold entity (`inner`) and of the others (`outer`).
    """
    tp: Counter = Counter()
    n_pred: Counter = Counter()
    n_gold: Counter = Counter()
    inner = {"tp": 0, "gold": 0}
    outer = {"tp": 0, "gold": 0}
    if len(gold) != len(predicted):
        raise ValueError(f"{len(gold)} gold documents but {len(predicted)} predicted")
    for gold_doc, pred_doc in zip(gold, predicted):
        gold_set: Set[Entity] = set(gold_doc)
        pred_set: Set[Entity] = set(pred_doc)
        n_gold.update(label for _, _, label in gold_set)
        n_pred.update(label for _, _, label in pred_set)
        tp.update(label for _, _, label in gold_set & pred_set)
        nested = set(inner_entities(sorted(gold_set)))
        for entity in gold_set:
            group = inner if entity in nested else outer
            group["gold"] += 1
            group["tp"] += entity in pred_set
    result: Dict[str, object] = prf(sum(tp.values()), sum(n_pred.values()), sum(n_gold.values()))
    result["per_type"] = {
        label: prf(tp[label], n_pred[label], n_gold[label]) for label in sorted(n_gold | n_pred)
    }
    for name, group in (("inner", inner), ("outer", outer)):
        result[name] = {
            "recall": group["tp"] / group["gold"] if group["gold"] else 0.0,
            "tp": group["tp"],
            "gold": group["gold"],
        }
    return result


def doc_entities(doc: Doc, key: str) -> List[Entity]:
    """The (start, end, label) spans of `doc.ents` (key "ents") or of `doc.spans[key]`."""
    spans = doc.ents if key == ENTS else doc.spans.get(key, [])
    return [(span.start, span.end, span.label_) for span in spans]


def score_pipeline(
    nlp, refs: Sequence[Doc], *, pred_key: str, gold_key: str = SPANS_KEY, batch_size: int = 32
) -> Dict[str, object]:
    """Annotate the gold words of `refs` (gold sentences kept) and score the predictions."""
    start = time.perf_counter()
    docs = list(nlp.pipe((unannotated(ref) for ref in refs), batch_size=batch_size))
    seconds = time.perf_counter() - start
    result = score_entities(
        [doc_entities(ref, gold_key) for ref in refs], [doc_entities(doc, pred_key) for doc in docs]
    )
    result["words_per_second"] = sum(len(doc) for doc in docs) / seconds
    return result


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("pipeline", help="a pipeline folder or package name")
    parser.add_argument("docbin", type=Path, help="test .spacy file (luke_spacy.genia)")
    parser.add_argument(
        "--pred-key", default=SPANS_KEY, help=f"doc.spans key of the predictions, or '{ENTS}'"
    )
    parser.add_argument("--gold-key", default=SPANS_KEY, help="doc.spans key of the gold")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--out", help="write the scores here as JSON")
    args = parser.parse_args(argv)
    nlp = spacy.load(args.pipeline)
    refs = list(DocBin().from_disk(args.docbin).get_docs(nlp.vocab))
    if not any(args.gold_key in ref.spans for ref in refs):
        print(f"error: no doc.spans[{args.gold_key!r}] gold in {args.docbin}", file=sys.stderr)
        return 1
    result = score_pipeline(
        nlp, refs, pred_key=args.pred_key, gold_key=args.gold_key, batch_size=args.batch_size
    )
    result = {
        "pipeline": str(args.pipeline),
        "docbin": str(args.docbin),
        "pred_key": args.pred_key,
        "gold_key": args.gold_key,
        **result,
    }
    print(f"P {result['p']:.4f}  R {result['r']:.4f}  F {result['f']:.4f}")
    for label, scores in result["per_type"].items():
        print(f"  {label:<10} P {scores['p']:.4f}  R {scores['r']:.4f}  F {scores['f']:.4f}")
    for name in ("inner", "outer"):
        group = result[name]
        print(f"{name} recall {group['recall']:.4f} ({group['tp']}/{group['gold']})")
    write_json(args.out, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
