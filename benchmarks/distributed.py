"""The Ray Data engine: throughput, cluster cost, GPU scheduling, resume memory, node loss.

    python benchmarks/distributed.py --out benchmarks/results/distributed.json \
        [--model DIR] [--docs 200] [--conll FILE] [--skip-cpu] [--skip-scheduling] \
        [--resume-sizes 0,100000,1000000] [--skip-node-loss] [--node-loss-docs 300]

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
4. Resume (`run_resume`): the driver's peak RSS and the checkpoint's planning time when a
   job with 0, 100k and 1M finished ids (tiny texts) is resumed, against the engine's former
   resume, which held the finished ids in the driver.
5. Node loss (`run_node_loss`): a head and two worker nodes on this machine; a worker node
   with an actor is killed while the job runs: rows in and out, ids repeated, seconds lost.

Documents of 1-3 are CoNLL-2003 test documents (words joined by spaces), repeated to --docs.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
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
    parser.add_argument(
        "--resume-sizes",
        default="0,100000,1000000",
        help="finished ids of the resume runs, comma-separated ('' skips them)",
    )
    parser.add_argument("--skip-node-loss", action="store_true")
    parser.add_argument("--node-loss-docs", type=int, default=300)
    parser.add_argument("--work", default=None, help="folder for the jobs' files (default: temp)")
    parser.add_argument("--driver", default=None, help=argparse.SUPPRESS)  # see run_driver
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    if args.driver:
        run_driver(json.loads(args.driver))
        return
    torch.set_num_threads(1)
    result: Dict[str, Any] = {"settings": vars(args), "environment": environment("cpu", 1)}
    model = args.model or str(tiny_model())
    work = Path(args.work or tempfile.mkdtemp(prefix="luke-ray-bench-"))
    if not (args.skip_cpu and args.skip_scheduling):
        texts = documents(args.conll, args.docs)
        words = sum(len(text.split()) for text in texts)
        result["data"] = {"documents": len(texts), "words": words}
    if not args.skip_cpu:
        result["local"] = run_local(model, texts, args.batch_size)
        result["ray"] = run_ray_cpu(model, texts, args.batch_size)
        print_cpu(result)
    if not args.skip_scheduling:
        seconds_per_word = FLOP_PER_WORD / (args.peak_tflops * 1e12 * args.mfu)
        result["scheduling"] = run_scheduling(texts, seconds_per_word, args)
    sizes = [int(size) for size in args.resume_sizes.split(",") if size.strip()]
    if sizes:
        result["resume"] = run_resume(model, sizes, work / "resume")
    if not args.skip_node_loss:
        result["node_loss"] = run_node_loss(model, args.node_loss_docs, work / "node-loss")
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


# Resume: the driver's memory and planning time against the number of finished ids

RESUME_TODO = 64  # rows left to annotate in each resume run
CHUNK_ROWS = 100_000  # rows per fabricated output and checkpoint file


def run_resume(model: str, sizes: List[int], work: Path) -> Dict[str, Any]:
    """For each size N: a job whose N first rows are done (output files and Ray Data
    checkpoint files, as a killed job leaves them) and RESUME_TODO are not, resumed with
    `luke-spacy annotate --engine ray --resume` in a fresh driver process; its peak RSS
    (VmHWM), the wall time of the checkpoint's planning (Ray's `load_checkpoint`: pending
    clean-up, reading the ids, sorting them on the cluster) and of the whole command, and
    the size of the id array that Ray's checkpoint-filter actors hold (its estimate). The
    same ids are also given to the engine's former resume (the driver reads the finished ids,
    sorts them in a Python set and `ray.put`s them) for comparison."""
    out: Dict[str, Any] = {"todo_rows": RESUME_TODO, "runs": {}}
    for finished in sizes:
        folder = work / str(finished)
        inputs = build_finished_job(folder, finished, RESUME_TODO)
        argv = [
            "annotate", "--engine", "ray", "-i", str(inputs), "-o", str(folder / "out"),
            "--id-field", "id", "--model", model, "--batch-size", "64", "--resume",
        ]  # fmt: skip
        run = driver({"argv": argv})
        assert run["code"] == 0, run
        run["former_resume"] = driver({"former": str(folder / "out")})
        out["runs"][str(finished)] = run
        print(f"resume with {finished} finished ids: {run}", flush=True)
    base = out["runs"][str(sizes[0])]
    for run in out["runs"].values():
        run["driver_growth_mb"] = round(run["peak_rss_mb"] - base["peak_rss_mb"], 1)
        former = run["former_resume"]
        former["driver_growth_mb"] = round(
            former["peak_rss_mb"] - base["former_resume"]["peak_rss_mb"], 1
        )
    return out


def build_finished_job(folder: Path, finished: int, todo: int) -> Path:
    """An input of `finished + todo` tiny records (ids "d00000000"...), the output rows and
    the committed checkpoint files of the first `finished`; RETURNS the input file."""
    import uuid

    import pyarrow as pa
    import pyarrow.parquet as pq

    from luke_spacy.distributed import OUTPUT_SCHEMA

    folder.mkdir(parents=True, exist_ok=True)
    ids = [f"d{i:08d}" for i in range(finished + todo)]
    inputs = folder / "input.jsonl"
    with inputs.open("w", encoding="utf-8") as file:
        for id_ in ids:
            file.write(json.dumps({"id": id_, "text": "Peter lives in Paris ."}) + "\n")
    (folder / "out").mkdir()
    (folder / "out.checkpoint").mkdir()
    for start in range(0, finished, CHUNK_ROWS):
        chunk = pa.array(ids[start : min(finished, start + CHUNK_ROWS)], pa.string())
        n = len(chunk)
        rows = pa.table(
            {
                "id": chunk,
                "text": pa.array(["Peter lives in Paris ."] * n),
                "entities": pa.array([[]] * n, OUTPUT_SCHEMA.field("entities").type),
                "meta": pa.nulls(n, pa.string()),
                "error": pa.nulls(n, pa.string()),
            },
            schema=OUTPUT_SCHEMA,
        )
        name = f"{uuid.uuid4().hex}_{start // CHUNK_ROWS:06d}"
        pq.write_table(rows, folder / "out" / f"{name}-0.parquet")
        pq.write_table(pa.table({"id": chunk}), folder / "out.checkpoint" / f"{name}.parquet")
    return inputs


def driver(spec: Dict[str, Any]) -> Dict[str, Any]:
    """Run `run_driver` in a fresh Python (the measured driver) and return what it printed."""
    cmd = [sys.executable, __file__, "--driver", json.dumps(spec)]
    child = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    if child.returncode != 0:
        raise RuntimeError(child.stderr[-3000:])
    return json.loads(child.stdout.strip().splitlines()[-1])


def run_driver(spec: Dict[str, Any]) -> None:
    """The measured driver: the command line (`argv`), or the former resume's driver side
    (`former`: an output folder); prints its peak RSS and timings as JSON."""
    from ray.data.checkpoint.checkpoint_filter import IdColumnCheckpointManager

    planning: List[float] = []
    sizes: List[int] = []
    load = IdColumnCheckpointManager.load_checkpoint

    def timed_load(self: Any, *args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            ref, size = load(self, *args, **kwargs)
        finally:
            planning.append(time.perf_counter() - start)
        sizes.append(size)
        return ref, size

    IdColumnCheckpointManager.load_checkpoint = timed_load
    start = time.perf_counter()
    result: Dict[str, Any] = {}
    if "argv" in spec:
        from luke_spacy.cli import main as cli_main

        result["code"] = cli_main(spec["argv"])
    else:
        former_resume(spec["former"])
    result["wall_s"] = round(time.perf_counter() - start, 2)
    result["planning_s"] = round(sum(planning), 2) if planning else None
    # Ray's estimate of the sorted id array each checkpoint-filter actor holds.
    result["checkpoint_array_mb"] = round(sum(sizes) / 2**20, 1) if sizes else None
    result["peak_rss_mb"] = round(proc_status_kb("VmHWM") / 1024, 1)
    print(json.dumps(result))


def former_resume(output: str) -> None:
    """The driver side of the resume this engine had before Ray Data's checkpointing
    (94affbc): every finished id read into the driver, a sorted set, a pyarrow array,
    `ray.put`."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import ray

    from luke_spacy.distributed import list_files, read_output

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        table = read_output(list_files(output), ["id", "error"])
        done = table.filter(pc.is_null(table["error"]))["id"].to_pylist()
        ray.put(pa.array(sorted(set(done)), pa.string()))
    finally:
        ray.shutdown()


def proc_status_kb(key: str, pid: str = "self") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1])
    raise KeyError(key)


# Node loss: a three-node cluster loses a worker node while the job runs


def run_node_loss(model: str, docs: int, work: Path) -> Dict[str, Any]:
    """A local `ray.cluster_utils.Cluster`: a head without CPUs (the driver's) and two worker
    nodes of 3 CPUs, so each holds one 2-CPU actor. A clean job first; then the same job,
    and once its first rows are committed the worker node of one actor is killed (its
    processes SIGKILLed, then the node removed); when that job fails, `--resume` finishes it.
    Rows in and out, ids repeated, and the seconds lost against the clean job."""
    import ray
    from ray.cluster_utils import Cluster

    from luke_spacy.cli import main as cli_main
    from luke_spacy.distributed import list_files, summarize_output

    inputs = node_loss_inputs(work, docs)
    cluster = Cluster(
        initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False}
    )
    workers = [cluster.add_node(num_cpus=3) for _ in range(2)]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    out: Dict[str, Any] = {"docs": docs, "nodes": "head (0 CPUs) + 2 workers (3 CPUs)"}

    def job(name: str, *more: str) -> Dict[str, Any]:
        argv = [
            "annotate", "--engine", "ray", "--model", model, "-o", str(work / name),
            "--actors", "1:2", "--cpus-per-actor", "2", "--batch-size", "8", *more,
        ]  # fmt: skip
        for path in inputs:
            argv += ["-i", str(path)]
        start = time.perf_counter()
        code = cli_main(argv)
        summary = summarize_output(list_files(str(work / name)))
        return {
            "code": code,
            "seconds": round(time.perf_counter() - start, 2),
            "rows_out": summary.rows,
            "repeated_ids": summary.repeated_ids,
        }

    try:
        out["clean"] = job("clean")
        result: Dict[str, Any] = {}
        runner = threading.Thread(target=lambda: result.update(job("lost")))
        runner.start()
        out["kill"] = kill_a_worker_node(cluster, workers, work / "lost.checkpoint", runner)
        runner.join(timeout=900)
        out["lost"] = result
        if result.get("code") != 0:
            out["resume"] = job("lost", "--resume")
    finally:
        ray.shutdown()
        cluster.shutdown()
    out["rows_in"] = docs
    seconds = out["lost"]["seconds"] + out.get("resume", {}).get("seconds", 0)
    out["seconds_lost"] = round(seconds - out["clean"]["seconds"], 2)
    print(f"node loss: {out}", flush=True)
    return out


def node_loss_inputs(work: Path, docs: int) -> List[Path]:
    from luke_spacy.random_model import SAMPLE_TEXT

    work.mkdir(parents=True, exist_ok=True)
    paths = []
    for part in range(3):
        path = work / f"part{part}.jsonl"
        with path.open("w", encoding="utf-8") as file:
            for i in range(part * docs // 3, (part + 1) * docs // 3):
                text = f"{SAMPLE_TEXT[i % len(SAMPLE_TEXT)]} ({i})"
                file.write(json.dumps({"text": text}) + "\n")
        paths.append(path)
    return paths


def kill_a_worker_node(
    cluster: Any, workers: List[Any], checkpoint: Path, runner: threading.Thread
) -> Dict[str, Any]:
    """Wait until the job has committed rows (a checkpoint file) and an actor runs on a
    worker node, then kill that node: SIGKILL its raylet's processes, remove the node."""
    start = time.perf_counter()
    while runner.is_alive():
        committed = [p for p in checkpoint.glob("*.parquet") if ".pending" not in p.name]
        hosts = {raylet_pid(node): node for node in workers}
        actors = {pid: hosts[host] for pid, host in actor_hosts(set(hosts)).items()}
        if committed and actors:
            pid, node = next(iter(actors.items()))
            victims = [p for p, n in actors.items() if n is node]
            for victim in victims:
                os.kill(victim, signal.SIGKILL)
            cluster.remove_node(node, allow_graceful=False)
            return {
                "after_s": round(time.perf_counter() - start, 2),
                "committed_files": len(committed),
                "actors_killed": len(victims),
            }
        time.sleep(0.2)
    return {"after_s": None, "committed_files": None, "actors_killed": 0}


def raylet_pid(node: Any) -> int:
    from ray._private import ray_constants

    return node.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process.pid


def actor_hosts(raylets: set) -> Dict[int, int]:
    """The processes of LukeAnnotator actors, with the raylet they descend from."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if b"LukeAnnotator" not in cmdline:
            continue
        pid = parent = int(entry)
        while parent > 1 and parent not in raylets:
            try:
                parent = proc_status_kb("PPid", str(parent))
            except (OSError, KeyError):
                break
        if parent in raylets:
            found[pid] = parent
    return found


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
