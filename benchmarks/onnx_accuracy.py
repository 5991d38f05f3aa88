"""Accuracy of the onnxruntime backend against torch on a trained pipeline: float32 and int8
(per-channel and per-matrix weight scales), as `spacy evaluate` scores them.

    python benchmarks/onnx_accuracy.py /work/models/conll-small/model-best \
        /work/models/conll-small/corpus/test.spacy --onnx-dir /tmp/onnx --out RESULT.json

The pipeline is exported with `luke-spacy export-onnx` into `--onnx-dir` (float32, then int8
quantized from it); each variant is scored with the backend overridden at load time
(`evaluate_with.evaluate`: gold words and sentence boundaries, scores equal to `spacy
evaluate`'s). Reported per variant: P/R/F, the F1 difference to torch in points, and the
share of sentences whose entities are identical to torch's (and to ORT float32's).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import environment, write_json  # noqa: E402
from evaluate_with import evaluate  # noqa: E402

from luke_spacy.onnx_export import export_onnx  # noqa: E402

Entity = Tuple[int, int, str]


def sentence_entities(docs: Sequence[Any]) -> List[Set[Entity]]:
    """The entities of every sentence of the Docs, as (start, end, label) in the Doc."""
    out: List[Set[Entity]] = []
    for doc in docs:
        for sent in doc.sents:
            out.append(
                {(e.start, e.end, e.label_) for e in doc.ents if sent.start <= e.start < sent.end}
            )
    return out


def identical(a: List[Set[Entity]], b: List[Set[Entity]]) -> Dict[str, Any]:
    same = sum(x == y for x, y in zip(a, b))
    return {"sentences": len(a), "identical": same, "share": round(same / len(a), 5)}


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("pipeline")
    parser.add_argument("docbin", type=Path)
    parser.add_argument("--onnx-dir", required=True, help="exports are written here")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    import torch

    torch.set_num_threads(args.threads)
    onnx_dir = Path(args.onnx_dir)
    exports: Dict[str, Dict[str, Any]] = {}
    for name, source, options in (
        ("float32", args.pipeline, {}),
        ("int8", onnx_dir / "float32", {"quantize": "int8", "per_channel": True}),
        ("int8-per-matrix", onnx_dir / "float32", {"quantize": "int8", "per_channel": False}),
    ):
        folder = onnx_dir / name
        start = time.perf_counter()
        if not (folder / "onnx.json").is_file():
            export_onnx(source, folder, **options)
        exports[name] = {"folder": str(folder), "seconds": round(time.perf_counter() - start, 1)}
    variants: Dict[str, Dict[str, Any]] = {"torch": {}}
    for name in exports:
        path = str(onnx_dir / name)
        variants[f"onnxruntime {name}"] = {"backend": "onnxruntime", "onnx_path": path}
    results: Dict[str, Any] = {}
    entities: Dict[str, List[Set[Entity]]] = {}
    for name, settings in variants.items():
        result, docs = evaluate(args.pipeline, args.docbin, settings)
        entities[name] = sentence_entities(docs)
        results[name] = {k: result[k] for k in ("p", "r", "f", "seconds", "settings")}
        print(f"{name:<28} P {result['p']:.4f} R {result['r']:.4f} F {result['f']:.4f}", flush=True)
    for name, row in results.items():
        row["f_minus_torch_points"] = round(100 * (row["f"] - results["torch"]["f"]), 3)
        row["same_entities_as_torch"] = identical(entities["torch"], entities[name])
        row["same_entities_as_onnxruntime_float32"] = identical(
            entities["onnxruntime float32"], entities[name]
        )
    out = {
        "what": "onnxruntime backend (float32, int8) against torch on a trained pipeline",
        "pipeline": args.pipeline,
        "docbin": str(args.docbin),
        "environment": environment("cpu", args.threads),
        "exports": exports,
        "results": results,
    }
    write_json(args.out, out)
    for name, row in results.items():
        print(
            f"{name:<28} F {row['f']:.4f} ({row['f_minus_torch_points']:+.2f} points), "
            f"identical to torch in {row['same_entities_as_torch']['share']:.2%} of sentences",
            flush=True,
        )
    return out


if __name__ == "__main__":
    main()
