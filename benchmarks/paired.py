"""Forward-only timing of B1 against the component's batches, paired batch by batch.

    python benchmarks/paired.py --model DIR --conll FILE [--max-docs 1] [--threads 2] \
        [--attention eager sdpa] [--out FILE.json]

On a shared machine, whole-run timings of one method after another pick up whatever else
runs at the time. Here every forward batch of the component (its `plan`, `batch_by_budget`
and `collate`, exact fp32) is timed right next to B1 on the same passes (one eager forward
per pass), in alternating order, so both see the same load; the ratio is summed over the
batches. Only the forwards are timed: planning and decoding cost milliseconds at full size.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    component,
    load_hf,
    load_pipeline,
    model_inputs,
    read_conll,
    write_json,
)

from luke_spacy.conll import words_doc  # noqa: E402


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--conll", required=True)
    parser.add_argument("--max-docs", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--attention", nargs="*", default=["eager", "sdpa"])
    parser.add_argument("--max-batch-items", type=int, default=None)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from luke_spacy.attention import fuse_entity_aware_attention, unfuse_entity_aware_attention
    from luke_spacy.encoding import batch_by_budget

    documents = read_conll(args.conll, args.max_docs)
    nlp = load_pipeline(args.model, "exact", "cpu", args.max_batch_items)
    pipe = component(nlp)
    _, b1_model = load_hf(args.model, "cpu")
    _, ours_model = load_hf(args.model, "cpu")
    passes = pipe.runtime.plan([words_doc(nlp.vocab, d) for d in documents])

    def batch(passes):
        return model_inputs(nlp, passes, "cpu")

    def timed(model, inputs_list) -> float:
        start = time.perf_counter()
        with torch.inference_mode():
            for inputs in inputs_list:
                model(**inputs)
        return time.perf_counter() - start

    batches = batch_by_budget(passes, pipe.settings.max_batch_items)
    names = ["B1"] + [f"ours:{a}" for a in args.attention]
    totals = {name: 0.0 for name in names}
    rows = []
    with torch.inference_mode():  # warm-up
        b1_model(**batch(passes[:1]))
        for attention in args.attention:
            (fuse_entity_aware_attention if attention == "sdpa" else unfuse_entity_aware_attention)(
                ours_model
            )
            ours_model(**batch([passes[i] for i in batches[0]]))
    for k, indices in enumerate(batches):
        group = [passes[i] for i in indices]
        inputs = batch(group)
        singles = [batch([p]) for p in group]
        times: Dict[str, float] = {}
        order = names if k % 2 == 0 else names[::-1]
        for name in order:
            if name == "B1":
                times[name] = timed(b1_model, singles)
            else:
                attention = name.split(":")[1]
                fuse = fuse_entity_aware_attention if attention == "sdpa" else None
                (fuse or unfuse_entity_aware_attention)(ours_model)
                times[name] = timed(ours_model, [inputs])
        for name in names:
            totals[name] += times[name]
        rows.append({"passes": len(group), "shape": list(inputs["input_ids"].shape), **times})
        print(
            f"batch {k + 1}/{len(batches)} ({len(group)} passes) "
            + "  ".join(f"{n} {times[n]:.2f}s" for n in names),
            flush=True,
        )
    out = {
        "passes": len(passes),
        "batches": len(batches),
        "threads": args.threads,
        "seconds": {n: round(t, 2) for n, t in totals.items()},
        "x_B1": {n: round(totals["B1"] / t, 3) for n, t in totals.items()},
        "per_batch": rows,
    }
    print(out["seconds"], out["x_B1"])
    write_json(args.out, out)
    return out


if __name__ == "__main__":
    main()
