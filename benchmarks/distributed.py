"""The Ray Data engine: throughput against the local engine, cluster cost, GPU scheduling.

    python benchmarks/distributed.py --out benchmarks/results/distributed.json \
        [--model DIR] [--docs 200] [--conll FILE] [--skip-cpu] [--skip-scheduling]

1. CPU, tiny model: documents/s of the local engine (`load_pipeline` + `nlp.pipe`, one torch
   thread) and of `distributed.annotate` with 1 and 2 actors (one CPU each) on the same
   documents; the Ray figures are whole jobs (actor start and model load included), like a
   user sees them. The local run also splits its time into the model's forward passes and
   the rest (host side: tokenization, planning, collation, decoding), giving the host-side
   words/s that one actor's CPU sustains.
2. The local cluster: `ray.init` wall time and the memory (PSS) of the processes it starts,
   idle and after the jobs.
3. Scheduling on logical GPUs (`ray.init(num_gpus=8)`): a stand-in actor whose batch sleeps
   the modelled time of LUKE-large on a GPU (FLOPs per word / (peak x MFU)); N actors with
   one GPU each, N = 1, 2, 4, 8. Efficiency = summed busy time / (N x span from the first
   batch's start to the last one's end); per actor = busy time / the actors' own spans (first
   to last batch: gaps there are waits on data); with start-up = from the job's start.

Documents are CoNLL-2003 test documents (words joined by spaces), repeated to --docs.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import environment, read_conll, write_json  # noqa: E402

from luke_spacy.loading import load_pipeline  # noqa: E402
from luke_spacy.model import get_scorer  # noqa: E402
from luke_spacy.records import doc_to_record  # noqa: E402

CONLL = Path(__file__).resolve().parents[2] / "shared" / "data" / "conll2003" / "eng.testb"
# LUKE-large with document context, FLOPs per word from `speed.py` on the first CoNLL test
# document (18.6 TFLOP / 419 words).
FLOP_PER_WORD = 44e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None, help="checkpoint folder (default: tiny random)")
    parser.add_argument("--conll", default=str(CONLL))
    parser.add_argument("--docs", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="H100 SXM bf16 dense")
    parser.add_argument("--mfu", type=float, default=0.4, help="assumed model FLOP utilization")
    parser.add_argument("--gpu-batch-docs", type=int, default=64)
    parser.add_argument("--batches-per-actor", type=int, default=10)
    parser.add_argument("--skip-cpu", action="store_true")
    parser.add_argument("--skip-scheduling", action="store_true")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    texts = documents(args.conll, args.docs)
    words = sum(len(text.split()) for text in texts)
    result: Dict[str, Any] = {
        "settings": vars(args),
        "environment": environment("cpu", 1),
        "data": {"documents": len(texts), "words": words},
    }
    if not args.skip_cpu:
        model = args.model or str(tiny_model())
        result["local"] = run_local(model, texts, args.batch_size)
        result["ray"] = run_ray_cpu(model, texts, args.batch_size)
        print_cpu(result)
    if not args.skip_scheduling:
        seconds_per_word = FLOP_PER_WORD / (args.peak_tflops * 1e12 * args.mfu)
        result["scheduling"] = run_scheduling(texts, seconds_per_word, args)
    write_json(args.out, result)


def documents(path: str, n: int) -> List[str]:
    docs = [" ".join(w for sentence in doc for w in sentence) for doc in read_conll(path)]
    return [docs[i % len(docs)] for i in range(n)]


def tiny_model() -> Path:
    from luke_spacy.random_model import build_random_checkpoint

    return build_random_checkpoint(Path(tempfile.mkdtemp()) / "tiny", classifier_std=1.0)


def run_local(model: str, texts: List[str], batch_size: int) -> Dict[str, Any]:
    start = time.perf_counter()
    nlp, spans_keys = load_pipeline(model=model)
    load = time.perf_counter() - start
    scorer = get_scorer(nlp.get_pipe("luke_ner").model)
    forward = [0.0]
    began: List[float] = []
    scorer.register_forward_pre_hook(lambda *_: began.append(time.perf_counter()))
    scorer.register_forward_hook(lambda *_: forward.__setitem__(0, forward[0] + stamp(began)))
    start = time.perf_counter()
    records = [doc_to_record(doc, spans_keys) for doc in nlp.pipe(texts, batch_size=batch_size)]
    seconds = time.perf_counter() - start
    words = sum(len(text.split()) for text in texts)
    host = seconds - forward[0]
    return {
        "load_s": round(load, 3),
        "seconds": round(seconds, 3),
        "docs_per_s": round(len(records) / seconds, 2),
        "words_per_s": round(words / seconds, 1),
        "forward_s": round(forward[0], 3),
        "host_s": round(host, 3),
        "host_words_per_s": round(words / host, 1),
    }


def stamp(began: List[float]) -> float:
    return time.perf_counter() - began.pop()


def run_ray_cpu(model: str, texts: List[str], batch_size: int) -> Dict[str, Any]:
    import ray

    from luke_spacy.distributed import annotate

    driver = tree_pss_mb(os.getpid())
    start = time.perf_counter()
    ray.init(num_cpus=8, include_dashboard=False, log_to_driver=False)
    startup = time.perf_counter() - start
    time.sleep(2)  # let the cluster's processes settle before measuring them
    idle = round(tree_pss_mb(os.getpid()) - driver, 1)
    out: Dict[str, Any] = {
        "cluster_start_s": round(startup, 2),
        "driver_pss_mb": driver,
        "cluster_idle_pss_mb": idle,
    }
    try:
        rows = [{"id": str(i), "text": text} for i, text in enumerate(texts)]
        for actors in (1, 2):
            dataset = ray.data.from_items(rows, override_num_blocks=8)
            start = time.perf_counter()
            done = annotate(
                dataset, model=model, actors=(actors, actors), batch_size=batch_size
            ).materialize()
            seconds = time.perf_counter() - start
            assert done.count() == len(texts)
            out[f"actors_{actors}"] = {
                "seconds": round(seconds, 2),
                "docs_per_s": round(len(texts) / seconds, 2),
                "cluster_pss_mb_after": round(tree_pss_mb(os.getpid()) - driver, 1),
            }
    finally:
        ray.shutdown()
    return out


class StandIn:
    """A GPU actor stand-in: its batch sleeps the modelled forward time of its words."""

    def __init__(self, seconds_per_word: float) -> None:
        import ray

        self.seconds_per_word = seconds_per_word
        self.gpus = ",".join(str(gpu) for gpu in ray.get_gpu_ids())

    def __call__(self, batch: Any) -> Any:
        import pyarrow as pa

        words = sum(len(text.split()) for text in batch["text"].to_pylist())
        start = time.time()
        time.sleep(words * self.seconds_per_word)
        end = time.time()
        n = batch.num_rows
        return pa.table(
            {
                "gpus": [self.gpus] * n,
                "pid": [os.getpid()] * n,
                "start": [start] * n,
                "end": [end] * n,
            }
        )


def run_scheduling(texts: List[str], seconds_per_word: float, args: Any) -> Dict[str, Any]:
    import ray
    from ray.data import ActorPoolStrategy

    mean_words = sum(len(text.split()) for text in texts) / len(texts)
    batch_s = args.gpu_batch_docs * mean_words * seconds_per_word
    out: Dict[str, Any] = {
        "seconds_per_word": seconds_per_word,
        "gpu_words_per_s": round(1 / seconds_per_word),
        "batch_docs": args.gpu_batch_docs,
        "batch_seconds": round(batch_s, 3),
    }
    ray.init(num_cpus=16, num_gpus=8, include_dashboard=False, log_to_driver=False)
    try:
        for n in (1, 2, 4, 8):
            docs = n * args.batches_per_actor * args.gpu_batch_docs
            rows = [{"text": texts[i % len(texts)]} for i in range(docs)]
            dataset = ray.data.from_items(rows, override_num_blocks=n * args.batches_per_actor)
            start = time.time()
            batches = (
                dataset.map_batches(
                    StandIn,
                    fn_constructor_args=(seconds_per_word,),
                    compute=ActorPoolStrategy(size=n),
                    num_gpus=1,
                    batch_size=args.gpu_batch_docs,
                    batch_format="pyarrow",
                )
                .to_pandas()
                .drop_duplicates(["pid", "start"])
            )
            wall = time.time() - start
            busy = float((batches["end"] - batches["start"]).sum())
            span = float(batches["end"].max() - batches["start"].min())
            # Each actor from its first batch to its last: idle gaps there are waits on data.
            per_actor = batches.groupby("pid").agg(start=("start", "min"), end=("end", "max"))
            actor_span = float((per_actor["end"] - per_actor["start"]).sum())
            out[f"actors_{n}"] = {
                "batches": len(batches),
                "gpus_seen": sorted(set(batches["gpus"])),
                "wall_s": round(wall, 2),
                "busy_s": round(busy, 2),
                "efficiency": round(busy / (n * span), 3),
                "efficiency_per_actor": round(busy / actor_span, 3),
                "efficiency_with_startup": round(busy / (n * wall), 3),
            }
            print(f"N={n}: {out[f'actors_{n}']}", flush=True)
    finally:
        ray.shutdown()
    return out


def tree_pss_mb(pid: int) -> float:
    """PSS of a process and its descendants in MB (shared pages counted once overall)."""
    children: Dict[int, List[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        todo.extend(children.get(current, []))
        try:
            for line in Path(f"/proc/{current}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return round(total / 1024, 1)


def print_cpu(result: Dict[str, Any]) -> None:
    local, ray_ = result["local"], result["ray"]
    print(f"local: {local['docs_per_s']} docs/s, host side {local['host_words_per_s']} words/s")
    print(f"cluster start {ray_['cluster_start_s']} s, idle PSS {ray_['cluster_idle_pss_mb']} MB")
    for actors in (1, 2):
        print(f"ray {actors} actor(s): {ray_[f'actors_{actors}']}")


if __name__ == "__main__":
    main()
