"""Time a pipeline on a .spacy corpus: words/s, docs/s and peak memory, as JSON.

The Docs keep the corpus' tokens and sentence boundaries (LUKE's recipe runs per sentence), so
the figures are those of the CoNLL-2003 evaluation (`spacy benchmark speed` re-tokenizes the
text and loses the gold sentences). Before timing, the first `--warmup` sentences are processed
as Docs of their own (checkpoint loading, allocator and kernel warm-up), which stays cheap for
the full-size model on a CPU.

Usage: python scripts/throughput.py PIPELINE DATA --output metrics/speed.json [--gpu-id 0]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
from pathlib import Path


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB (ru_maxrss: KiB on Linux)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("pipeline", help="pipeline folder or package name")
    parser.add_argument("data", type=Path, help=".spacy DocBin")
    parser.add_argument("--output", type=Path, required=True, help="JSON report")
    parser.add_argument("--gpu-id", type=int, default=-1, help="GPU id, -1 for CPU")
    parser.add_argument("--batch-size", type=int, default=None, help="nlp.pipe batch size")
    parser.add_argument("--warmup", type=int, default=1, help="sentences run before timing")
    parser.add_argument("--max-docs", type=int, default=0, help="first N Docs (0 = all)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    args = parser.parse_args(argv)

    import spacy
    import torch
    from spacy.tokens import DocBin
    from tqdm import tqdm

    from luke_spacy.conll import unannotated

    if args.gpu_id >= 0:
        spacy.require_gpu(args.gpu_id)
    rss_start = peak_rss_mb()
    t0 = time.perf_counter()
    nlp = spacy.load(args.pipeline)
    load_seconds = time.perf_counter() - t0
    gold = list(DocBin().from_disk(args.data).get_docs(nlp.vocab))
    if args.max_docs:
        gold = gold[: args.max_docs]
    if not gold:
        print(f"error: {args.data} holds no Docs", file=sys.stderr)
        return 1

    batch_size = args.batch_size or nlp.batch_size
    warmup = [sent.as_doc() for doc in gold for sent in doc.sents][: args.warmup]
    t0 = time.perf_counter()
    for _ in nlp.pipe(map(unannotated, warmup), batch_size=batch_size):
        pass
    warmup_seconds = time.perf_counter() - t0
    rss_loaded = peak_rss_mb()
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()

    docs = [unannotated(doc) for doc in gold]
    n_words = sum(len(doc) for doc in docs)
    n_sentences = sum(1 for doc in docs for _ in doc.sents)
    t0 = time.perf_counter()
    n_ents = 0
    with tqdm(total=n_words, unit="word", file=sys.stderr, disable=args.no_progress) as bar:
        for doc in nlp.pipe(docs, batch_size=batch_size):
            n_ents += len(doc.ents)
            bar.update(len(doc))
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0

    settings = {}
    if "luke_ner" in nlp.pipe_names:
        pipe = nlp.get_pipe("luke_ner")
        settings = {k: v for k, v in pipe.cfg.items() if k not in ("labels", "coverage")}
        passes = pipe.runtime.plan([unannotated(doc) for doc in gold])
        settings["forward_passes"] = len(passes)
        settings["candidate_spans"] = sum(len(p.spans) for p in passes)
    report = {
        "pipeline": args.pipeline,
        "data": str(args.data),
        "docs": len(docs),
        "sentences": n_sentences,
        "words": n_words,
        "entities": n_ents,
        "seconds": round(seconds, 3),
        "words_per_second": round(n_words / seconds, 2),
        "docs_per_second": round(len(docs) / seconds, 4),
        "sentences_per_second": round(n_sentences / seconds, 3),
        "load_seconds": round(load_seconds, 3),
        "warmup_sentences": len(warmup),
        "warmup_seconds": round(warmup_seconds, 3),
        "batch_size": batch_size,
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "peak_rss_mb_after_load_and_warmup": round(rss_loaded, 1),
        "rss_mb_at_start": round(rss_start, 1),
        "gpu_id": args.gpu_id,
        "gpu": torch.cuda.get_device_name(args.gpu_id) if args.gpu_id >= 0 else None,
        "gpu_peak_memory_mb": (
            round(torch.cuda.max_memory_allocated() / 2**20, 1) if args.gpu_id >= 0 else None
        ),
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "spacy": spacy.__version__,
        "luke_ner": settings,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n", encoding="utf8")
    speed = f"{report['words_per_second']:.1f} words/s, {report['docs_per_second']:.3f} docs/s"
    print(f"{len(docs)} docs, {n_words} words in {seconds:.2f}s: {speed}; report: {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
