"""Peak memory of `nlp.pipe` on a 1,000,000-character Doc against a 100,000-character Doc,
and memory over a stream of Docs with fresh vocabulary.

    python benchmarks/memory.py --model DIR --conll FILE --out FILE.json \
        [--chars 100000 1000000] [--sentences file|none] [--mode exact+sdpa] [--device cpu]
    python benchmarks/memory.py --model DIR --stream-docs 5000 --out FILE.json \
        [--words-per-doc 20] [--cache-sizes 50000 1000000000]
    python benchmarks/memory.py --model DIR --conll FILE --chars 20000 --out FILE.json \
        --modes exact+sdpa ort ort-int8 --onnx-dir DIR

Each Doc size is measured in a fresh process: the pipeline is loaded and warmed up, the Doc
is built (from the CoNLL words repeated, with the file's sentence boundaries or none, in
which case the component splits sentences itself), then the kernel's peak-RSS counter is
reset (`/proc/self/clear_refs`) and `nlp.pipe([doc])` runs. Reported per size:

* rss_before / peak_rss: resident memory before the pipe and its peak during it;
* pipe_peak_extra: peak_rss - rss_before, what processing the Doc cost on top;
* doc_bytes: the Doc's own data (`len(doc.to_bytes())`, entities included afterwards);
* largest_batch_positions against max_batch_items (the configured forward budget);
* with `--tracemalloc`, the peak of Python-heap allocations (numpy included, torch not);
* on GPU, torch.cuda.max_memory_allocated during the pipe;
* rss_after_trim: RSS after the pipe once glibc has handed freed heap memory back
  (`malloc_trim(0)`); the gap to rss_after is memory the allocator kept, not memory in use.

The verdict compares the growth of pipe_peak_extra between the two sizes with the growth of
what the pipe writes to the Doc (its entities): scoring must not hold anything that grows
with the Doc.

With `--modes`, each mode (torch, or the onnxruntime backend on the float32 or int8 export
in `--onnx-dir`) runs in a fresh process on one Doc of the first `--chars` size, and the peak
RSS is reported both over the process's life (loading included: `process_peak_rss_mib`) and
during the pipe (`peak_rss_mib`), with the RSS once loaded.

With `--stream-docs N`, each word cache size of `--cache-sizes` gets a fresh process that
streams N Docs of `--words-per-doc` new random words each (every word a type not seen before,
the worst case for the word cache) through `nlp.pipe`, and reports the RSS (after
`malloc_trim`) and the number of cached word types every N/10 Docs. The verdict compares the
RSS growth over the second half of the stream: with a bounded cache it must stay flat once
the cache is full.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    MODE_SETTINGS,
    component,
    load_pipeline,
    read_conll,
    reset_peak_rss,
    rss_kib,
    write_json,
)

from luke_spacy.conll import words_doc  # noqa: E402


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="checkpoint folder")
    parser.add_argument("--conll", help="CoNLL-2003 file whose words are used (Doc sizes)")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    parser.add_argument("--chars", type=int, nargs="*", default=[100_000, 1_000_000])
    parser.add_argument("--sentences", choices=["file", "none"], default="file")
    parser.add_argument(
        "--mode",
        choices=sorted(MODE_SETTINGS),
        default="exact+sdpa",
        help="component mode (exact+sdpa by default: the same memory plan, faster on CPU)",
    )
    parser.add_argument(
        "--modes",
        nargs="*",
        default=None,
        choices=sorted(MODE_SETTINGS),
        help="compare these modes (e.g. exact+sdpa ort ort-int8) on the first --chars size, "
        "one fresh process each: peak RSS with loading, and of the pipe",
    )
    parser.add_argument("--onnx-dir", default=None, help="ONNX exports (modes ort, ort-int8)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-batch-items", type=int, default=None)
    parser.add_argument("--tracemalloc", action="store_true", help="also trace Python heap")
    parser.add_argument(
        "--stream-docs", type=int, default=0, help="measure a stream of N fresh-vocabulary Docs"
    )
    parser.add_argument("--words-per-doc", type=int, default=20)
    parser.add_argument(
        "--cache-sizes",
        type=int,
        nargs="*",
        default=[50_000, 10**9],
        help="word cache sizes to compare (10**9: in effect unbounded, as before the bound)",
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not args.stream_docs and not args.conll:
        parser.error("--conll is required unless --stream-docs is given")
    return args


def malloc_trim() -> Optional[int]:
    """Return freed heap memory to the OS (glibc); the resulting RSS in KiB, or None."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        return None
    return rss_kib()


def build_doc(vocab, documents, n_chars: int, sentence_boundaries: bool):
    """A Doc of at least n_chars characters from the CoNLL sentences, repeated as needed."""
    sentences: List[List[str]] = []
    size = 0
    while size < n_chars:
        for document in documents:
            for sentence in document:
                sentences.append(sentence)
                size += sum(len(word) + 1 for word in sentence)
                if size >= n_chars:
                    break
            if size >= n_chars:
                break
    return words_doc(vocab, sentences, sentence_boundaries=sentence_boundaries)


def child(args: argparse.Namespace) -> Dict[str, Any]:
    import torch

    torch.set_num_threads(args.threads)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # the onnxruntime backend's threads
    n_chars = args.chars[0]
    documents = read_conll(args.conll)
    nlp = load_pipeline(args.model, args.mode, args.device, args.max_batch_items, args.onnx_dir)
    pipe = component(nlp)
    list(nlp.pipe([build_doc(nlp.vocab, documents[:1], 2000, True)]))
    # Loading and the first Doc, before the kernel's peak is reset for the pipe.
    load_peak, rss_loaded = rss_kib("VmHWM"), rss_kib()
    doc = build_doc(nlp.vocab, documents, n_chars, args.sentences == "file")
    doc_bytes_before = len(doc.to_bytes())

    # Passes and spans are counted as they are run: planning the Doc beforehand would
    # leave freed heap behind that the pipe could reuse unseen by the peak RSS.
    batches: List[int] = []
    counts = {"passes": 0, "spans": 0}

    def count(batch_passes):
        width = max(p.length for p in batch_passes) + max(len(p.spans) for p in batch_passes)
        batches.append(len(batch_passes) * width)
        counts["passes"] += len(batch_passes)
        counts["spans"] += sum(len(p.spans) for p in batch_passes)

    pipe.runtime.on_batch = count
    cuda = args.device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        cuda_before = torch.cuda.memory_allocated()
    if args.tracemalloc:
        import tracemalloc

        tracemalloc.start()
    rss_before = rss_kib()
    reset_ok = reset_peak_rss()
    start = time.perf_counter()
    out = list(nlp.pipe([doc]))
    seconds = time.perf_counter() - start
    peak = rss_kib("VmHWM")
    rss_after = rss_kib()
    trimmed = malloc_trim()
    result: Dict[str, Any] = {
        "chars": len(doc.text),
        "words": len(doc),
        "sentences": len(pipe.runtime.sentences(doc)),
        "sentence_boundaries": args.sentences,
        "passes": counts["passes"],
        "candidate_spans": counts["spans"],
        "seconds": round(seconds, 2),
        "load_peak_rss_mib": round(load_peak / 1024, 1),
        "rss_loaded_mib": round(rss_loaded / 1024, 1),
        "process_peak_rss_mib": round(max(load_peak, peak) / 1024, 1),
        "rss_before_mib": round(rss_before / 1024, 1),
        "peak_rss_mib": round(peak / 1024, 1),
        "pipe_peak_extra_mib": round((peak - rss_before) / 1024, 1),
        "rss_after_mib": round(rss_after / 1024, 1),
        # Freed heap memory that glibc kept: what malloc_trim(0) hands back after the pipe.
        "rss_after_trim_mib": round(trimmed / 1024, 1) if trimmed is not None else None,
        "peak_reset": reset_ok,
        "doc_bytes_mib": round(doc_bytes_before / 2**20, 2),
        "doc_bytes_after_mib": round(len(out[0].to_bytes()) / 2**20, 2),
        "entities": len(out[0].ents),
        "forward_batches": len(batches),
        "largest_batch_positions": max(batches, default=0),
        "max_batch_items": pipe.cfg["max_batch_items"],
        "mode": args.mode,
    }
    if args.tracemalloc:
        import tracemalloc

        _, traced_peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        result["python_heap_peak_mib"] = round(traced_peak / 2**20, 1)
    if cuda:
        torch.cuda.synchronize()
        result["cuda_max_allocated_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        result["cuda_extra_mib"] = round(
            (torch.cuda.max_memory_allocated() - cuda_before) / 2**20, 1
        )
    pipe.runtime.on_batch = None
    return result


def fresh_words(rng: Any, n: int) -> List[str]:
    """n random words (4-10 letters, some capitalized), practically never seen before."""
    letters = "abcdefghijklmnopqrstuvwxyz"
    words = []
    for _ in range(n):
        word = "".join(rng.choice(letters) for _ in range(rng.randint(4, 10)))
        words.append(word.capitalize() if rng.random() < 0.3 else word)
    return words


def stream_child(args: argparse.Namespace) -> Dict[str, Any]:
    """RSS over a stream of Docs whose words are all new, with one word cache size."""
    import random

    import torch
    from spacy.tokens import Doc
    from spacy.vocab import Vocab

    torch.set_num_threads(args.threads)
    nlp = load_pipeline(args.model, args.mode, args.device, args.max_batch_items)
    pipe = component(nlp)
    rng = random.Random(0)

    def docs(n: int):
        for _ in range(n):
            words = fresh_words(rng, args.words_per_doc) + ["."]
            # A Vocab per Doc: the pipeline's StringStore would keep every new word too.
            yield Doc(Vocab(), words=words)

    list(nlp.pipe(docs(20)))
    words = pipe.runtime.word_tokenizer
    words.cache_size = args.cache_sizes[0]
    every = max(1, args.stream_docs // 10)
    words._cache.clear()
    points = [{"docs": 0, "rss_mib": round(malloc_trim_rss() / 1024, 1), "cached_types": 0}]
    start = time.perf_counter()
    for i, _ in enumerate(nlp.pipe(docs(args.stream_docs), batch_size=64), 1):
        if i % every == 0:
            points.append(
                {
                    "docs": i,
                    "rss_mib": round(malloc_trim_rss() / 1024, 1),
                    "cached_types": len(words._cache),
                    "cache_mib": round(cache_bytes(words._cache) / 2**20, 1),
                }
            )
    half = points[len(points) // 2]
    return {
        "cache_size": args.cache_sizes[0],
        "docs": args.stream_docs,
        "new_word_types": args.stream_docs * args.words_per_doc,
        "seconds": round(time.perf_counter() - start, 1),
        "points": points,
        "rss_growth_second_half_mib": round(points[-1]["rss_mib"] - half["rss_mib"], 1),
        "rss_growth_total_mib": round(points[-1]["rss_mib"] - points[0]["rss_mib"], 1),
        "peak_rss_mib": round(rss_kib("VmHWM") / 1024, 1),
    }


def cache_bytes(cache: Dict[str, Any]) -> int:
    """Bytes of a word cache: the mapping, its keys and its id tuples (ints are shared)."""
    return sys.getsizeof(cache) + sum(sys.getsizeof(k) + sys.getsizeof(v) for k, v in cache.items())


def malloc_trim_rss() -> int:
    """RSS in KiB after handing freed heap memory back (what is really held)."""
    trimmed = malloc_trim()
    return trimmed if trimmed is not None else rss_kib()


def run_child(argv: List[str]) -> Dict[str, Any]:
    """Run this script with --child and the given arguments; its RESULT line."""
    proc = subprocess.run(
        [sys.executable, __file__, "--child", *argv],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"child {argv} failed ({proc.returncode})")
    return json.loads(lines[-1][len("RESULT ") :])


def stream(args: argparse.Namespace) -> Dict[str, Any]:
    """One fresh process per cache size; the RSS growth of each over the stream."""
    runs = []
    for size in args.cache_sizes:
        argv = ["--model", args.model, "--stream-docs", str(args.stream_docs)]
        argv += ["--words-per-doc", str(args.words_per_doc), "--cache-sizes", str(size)]
        argv += ["--mode", args.mode, "--device", args.device, "--threads", str(args.threads)]
        run = run_child(argv)
        runs.append(run)
        print(json.dumps(run), flush=True)
    verdict = {
        str(run["cache_size"]): {
            "rss_growth_second_half_mib": run["rss_growth_second_half_mib"],
            "cached_types_at_end": run["points"][-1]["cached_types"],
            "cache_mib_at_end": run["points"][-1]["cache_mib"],
        }
        for run in runs
    }
    print(json.dumps(verdict), flush=True)
    return {"settings": vars(args), "stream_runs": runs, "verdict": verdict}


def compare_modes(args: argparse.Namespace) -> Dict[str, Any]:
    """One fresh process per mode on one Doc of the first --chars size: peak RSS with the
    pipeline's loading (the process's whole life) and during the pipe, per mode."""
    runs: Dict[str, Any] = {}
    for mode in args.modes:
        argv = ["--model", args.model, "--conll", args.conll, "--chars", str(args.chars[0])]
        argv += ["--sentences", args.sentences, "--mode", mode, "--device", args.device]
        argv += ["--threads", str(args.threads)]
        if args.onnx_dir is not None:
            argv += ["--onnx-dir", args.onnx_dir]
        if args.max_batch_items is not None:
            argv += ["--max-batch-items", str(args.max_batch_items)]
        runs[mode] = run_child(argv)
        print(mode, json.dumps(runs[mode]), flush=True)
    keys = ("process_peak_rss_mib", "load_peak_rss_mib", "rss_loaded_mib", "peak_rss_mib")
    table = {
        mode: {key: run[key] for key in (*keys, "seconds", "entities")}
        for mode, run in runs.items()
    }
    for mode, row in table.items():
        print(f"{mode:<12} " + " ".join(f"{key} {row[key]}" for key in keys), flush=True)
    return {"settings": vars(args), "modes": table, "runs": runs}


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    args = parse_args(argv)
    if args.child:
        result = stream_child(args) if args.stream_docs else child(args)
        print("RESULT " + json.dumps(result), flush=True)
        return {}
    if args.stream_docs:
        out = stream(args)
        write_json(args.out, out)
        return out
    if args.modes:
        out = compare_modes(args)
        write_json(args.out, out)
        return out
    runs: List[Dict[str, Any]] = []
    for n_chars in args.chars:
        argv = [
            "--model",
            args.model,
            "--conll",
            args.conll,
            "--chars",
            str(n_chars),
            "--sentences",
            args.sentences,
            "--mode",
            args.mode,
            "--device",
            args.device,
            "--threads",
            str(args.threads),
        ]
        if args.max_batch_items is not None:
            argv += ["--max-batch-items", str(args.max_batch_items)]
        if args.onnx_dir is not None:
            argv += ["--onnx-dir", args.onnx_dir]
        if args.tracemalloc:
            argv.append("--tracemalloc")
        run = run_child(argv)
        runs.append(run)
        print(json.dumps(run), flush=True)
    out: Dict[str, Any] = {"settings": vars(args), "runs": runs}
    if len(runs) >= 2:
        small, large = runs[0], runs[-1]

        def written(run: Dict[str, Any]) -> float:
            return run["doc_bytes_after_mib"] - run["doc_bytes_mib"]

        own_growth = written(large) - written(small)
        growth = large["pipe_peak_extra_mib"] - small["pipe_peak_extra_mib"]
        out["verdict"] = {
            "chars_ratio": round(large["chars"] / small["chars"], 2),
            "pipe_peak_extra_growth_mib": round(growth, 1),
            "entities_written_growth_mib": round(own_growth, 1),
            "growth_beyond_entities_mib": round(growth - own_growth, 1),
            "within_batch_budget": all(
                r["largest_batch_positions"] <= r["max_batch_items"] for r in runs
            ),
        }
        print(json.dumps(out["verdict"]), flush=True)
    write_json(args.out, out)
    return out


if __name__ == "__main__":
    main()
