"""Speed of `luke_ner` against two baselines on CoNLL-2003 documents.

    python benchmarks/speed.py --model DIR --conll FILE --max-docs N --out FILE.json \
        [--modes exact exact+sdpa bf16+sdpa] [--threads 2] [--device cpu|cuda] [--rounds R]

* B1, the straightforward recipe: the component's own passes (`plan`), one fp32 eager
  forward of `LukeForEntitySpanClassification` per pass, greedy decoding per sentence.
* B2, the Hugging Face docs way: `LukeTokenizer(sentence text, entity_spans=every word
  span)`, one forward per sentence, no document context (`--b2-max-span-words` caps the span
  length in words; by default every span i <= j of the sentence is classified, with no limit:
  CoNLL sentences fit the 512-token input, and the entity count only costs time).
* ours: `nlp.pipe` with `luke_ner` in each mode: exact (fp32, eager attention), exact+sdpa
  (fp32, fused entity-aware attention: the component's default), bf16 / bf16+sdpa (autocast;
  meant for GPU), ort / ort-int8 (backend = "onnxruntime" on the model's float32 or int8 ONNX
  export, written into `--onnx-dir` on first use; ONNX Runtime gets `--threads` threads too).

All models are loaded first and each method runs once on a small warm-up Doc (untimed). The
methods then run in turn, `--rounds` times (interleaved, so a shared machine's load hits them
alike); each method's best round is reported, all rounds are kept in the JSON, and so are the
medians: words/s and the speed-up over `--reference` (default ours:exact+sdpa, torch exact)
from the median rounds, with the load average before and after each round. For the ONNX
modes, the largest logit difference to the reference over every pass of the first round.
Docs are built one per CoNLL document with the file's sentence boundaries. Reported per method:
seconds (wall and process CPU time), words/s, docs/s, forward passes, speed-up over B1 and B2,
and agreement of the entities with B1 per sentence; the forward FLOPs counted from shapes,
TFLOP/s, and their share of the device's measured matmul throughput in the method's dtype
(`gemm_tflops`: a feed-forward-shaped fp32 or bf16 matmul, the ceiling of the linear layers);
with `--device cuda` also the share of `--peak-tflops`; and the peak memory of each method's
first round (`torch.cuda.max_memory_allocated` on CUDA, peak RSS on the CPU), in all and above
what was held before it (`peak_memory_extra_mib`).

`--budgets N M` then runs `--budget-mode` (the component's default, exact+sdpa, unless given)
once with each `max_batch_items` budget: seconds, words/s, forward batches, the largest batch's
positions, peak memory and agreement with B1, so that a smaller budget shows a smaller peak.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    MODES,
    ONNX_PRECISION,
    Flops,
    PeakMemory,
    Timer,
    agreement,
    b1_predict,
    b2_predict,
    component,
    config_of,
    entities_by_sentence,
    environment,
    gemm_tflops,
    load_hf,
    load_pipeline,
    onnx_export,
    progress,
    read_conll,
    write_json,
)

from luke_spacy.conll import words_doc  # noqa: E402


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="checkpoint folder")
    parser.add_argument("--conll", required=True, help="CoNLL-2003 file, e.g. eng.testb")
    parser.add_argument("--max-docs", type=int, default=None, help="first N documents")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    parser.add_argument(
        "--modes",
        nargs="*",
        default=None,
        choices=MODES,
        help="component modes (default: exact exact+sdpa, and bf16+sdpa on cuda)",
    )
    parser.add_argument(
        "--baselines", nargs="*", default=["B1", "B2"], choices=["B1", "B2"], help="baselines"
    )
    parser.add_argument("--threads", type=int, default=2, help="torch/ONNX Runtime threads")
    parser.add_argument(
        "--onnx-dir", default=None, help="ONNX exports of the model (modes ort, ort-int8)"
    )
    parser.add_argument(
        "--reference", default="ours:exact+sdpa", help="method of the x_reference ratios"
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument(
        "--peak-tflops",
        type=float,
        default=989.0,
        help="peak dense bf16 TFLOP/s of the GPU: 989 is the H100 SXM datasheet figure; "
        "give the card's own (e.g. 790 where an H200 was measured at that)",
    )
    parser.add_argument("--rounds", type=int, default=1, help="interleaved timing rounds")
    parser.add_argument(
        "--baseline-rounds",
        type=int,
        default=None,
        help="run the baselines in the first N rounds only (default: every round)",
    )
    parser.add_argument("--batch-size", type=int, default=1000, help="nlp.pipe batch_size")
    parser.add_argument("--max-batch-items", type=int, default=None, help="component setting")
    parser.add_argument(
        "--b2-max-span-words",
        type=int,
        default=None,
        help="B2: longest candidate span in words (default: no limit)",
    )
    parser.add_argument("--warmup-words", type=int, default=60, help="size of the warm-up Doc")
    parser.add_argument(
        "--budgets",
        type=int,
        nargs="*",
        default=[],
        help="max_batch_items budgets to run --budget-mode with, one run each (peak memory)",
    )
    parser.add_argument(
        "--budget-mode", default="exact+sdpa", choices=MODES, help="the mode of --budgets"
    )
    return parser.parse_args(argv)


def warmup_document(documents, n_words: int):
    """The first sentences of the first document, about n_words words."""
    out, total = [], 0
    for sentence in documents[0]:
        out.append(sentence)
        total += len(sentence)
        if total >= n_words:
            break
    return out


# A method: run(documents, flops) -> (entities per doc and sentence, forward passes, extra).
Run = Callable[[List[Any], Optional[Flops]], Tuple[List[Any], int, Dict[str, Any]]]


def ours_method(nlp, batch_size: int, logits: Optional[Dict[Any, Any]] = None) -> Run:
    """`nlp.pipe` over fresh Docs; counts passes and forward batches (`on_batch` hook). In the
    first timed round (the one counting FLOPs), every pass's span logits go into `logits`."""

    def run(documents, flops):
        docs = [words_doc(nlp.vocab, d) for d in documents]
        batches: List[Tuple[int, int]] = []
        runtime = component(nlp).runtime
        pending: List[Any] = []
        capture = logits is not None and flops is not None

        def count(batch_passes):
            pending[:] = batch_passes
            rows = len(batch_passes)
            width = max(p.length for p in batch_passes) + max(len(p.spans) for p in batch_passes)
            batches.append((rows, width))
            if flops is not None:
                flops.add_batch(rows, width, [p.length + len(p.spans) for p in batch_passes])

        def predict(inputs, want_words):
            out, words = type(runtime.backend).predict(runtime.backend, inputs, want_words)
            for row, p in enumerate(pending):
                logits[(p.doc, p.sentence, p.window, tuple(map(tuple, p.spans)))] = out[
                    row, : len(p.spans)
                ].copy()
            return out, words

        runtime.on_batch = count
        if capture:
            runtime.backend.predict = predict
        try:
            done = list(progress(nlp.pipe(docs, batch_size=batch_size), total=len(docs)))
        finally:
            runtime.on_batch = None
            if capture:
                del runtime.backend.predict
        entities = [entities_by_sentence(doc, d) for doc, d in zip(done, documents)]
        extra = {
            "forward_batches": len(batches),
            "padded_positions": sum(r * w for r, w in batches),
            "largest_batch_positions": max((r * w for r, w in batches), default=0),
            "max_batch_items": component(nlp).cfg["max_batch_items"],
        }
        return entities, sum(r for r, _ in batches), extra

    return run


def b1_method(nlp, model, device: str) -> Run:
    def run(documents, flops):
        docs = [words_doc(nlp.vocab, d) for d in documents]
        entities, passes = b1_predict(nlp, model, docs, documents, device, flops)
        return entities, passes, {}

    return run


def b2_method(tokenizer, model, device: str, max_span_words: Optional[int]) -> Run:
    def run(documents, flops):
        entities, passes = b2_predict(tokenizer, model, documents, device, max_span_words, flops)
        return entities, passes, {}

    return run


def flops_row(
    flops: Optional[Flops], seconds: float, peak: Optional[float], gemm: float
) -> Dict[str, Any]:
    if flops is None or not seconds:
        return {}
    tflops = flops.executed / 1e12 / seconds
    row = {
        "tflop_executed": round(flops.executed / 1e12, 3),
        "tflop_useful": round(flops.useful / 1e12, 3),
        "tflops_per_s": round(tflops, 4),
        "useful_tflops_per_s": round(flops.useful / 1e12 / seconds, 4),
        "share_of_gemm": round(tflops / gemm, 4),
    }
    if peak:
        row["share_of_peak"] = round(tflops / peak, 4)
    return row


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    # The onnxruntime backend sizes its thread pool by OMP_NUM_THREADS.
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    device = args.device
    cuda = device.startswith("cuda")
    modes = args.modes
    if modes is None:
        modes = ["exact", "exact+sdpa", "bf16+sdpa"] if cuda else ["exact", "exact+sdpa"]
    documents = read_conll(args.conll, args.max_docs)
    n_words = sum(len(s) for d in documents for s in d)
    n_sentences = sum(len(d) for d in documents)
    warm = [warmup_document(documents, args.warmup_words)]
    out: Dict[str, Any] = {
        "settings": {
            "model": str(args.model),
            "conll": str(args.conll),
            "max_docs": args.max_docs,
            "modes": modes,
            "baselines": args.baselines,
            "rounds": args.rounds,
            "batch_size": args.batch_size,
            "max_batch_items": args.max_batch_items,
            "b2_max_span_words": args.b2_max_span_words,
            "peak_tflops": args.peak_tflops if cuda else None,
            "budgets": args.budgets,
            "budget_mode": args.budget_mode,
        },
        "environment": environment(device, args.threads),
        "data": {"documents": len(documents), "sentences": n_sentences, "words": n_words},
        "results": {},
    }

    # Load everything first. The baselines get an eager fp32 model of their own; B1 takes
    # its passes from an exact pipeline.
    methods: Dict[str, Run] = {}
    configs: Dict[str, Any] = {}
    notes: Dict[str, Dict[str, Any]] = {}
    if args.baselines:
        ref_nlp = load_pipeline(args.model, "exact", device, args.max_batch_items)
        tokenizer, model = load_hf(args.model, device)
        if "B1" in args.baselines:
            methods["B1"] = b1_method(ref_nlp, model, device)
            configs["B1"] = model.config
        if "B2" in args.baselines:
            methods["B2"] = b2_method(tokenizer, model, device, args.b2_max_span_words)
            configs["B2"] = model.config
    pipelines: Dict[str, Any] = {}
    captured: Dict[str, Dict[Any, Any]] = {}
    for mode in modes:
        nlp = load_pipeline(args.model, mode, device, args.max_batch_items, args.onnx_dir)
        name = f"ours:{mode}"
        pipelines[name] = nlp
        captured[name] = {}
        methods[name] = ours_method(nlp, args.batch_size, captured[name])
        configs[name] = config_of(nlp)
        if mode.startswith("bf16") and not cuda:
            notes[name] = {"note": "autocast bfloat16 on CPU"}
    for run in methods.values():
        run(warm, None)
    config = next(iter(configs.values()))
    gemm = {
        name: gemm_tflops(device, dtype, config.hidden_size, config.intermediate_size)
        for name, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16))
    }
    out["environment"]["gemm_tflops"] = {k: round(v, 4) for k, v in gemm.items()}

    if args.onnx_dir and any(mode in ONNX_PRECISION for mode in modes):
        out["onnx_exports"] = {
            precision: onnx_export(args.model, args.onnx_dir, precision)
            for mode, precision in ONNX_PRECISION.items()
            if mode in modes
        }
    loads: List[Dict[str, Any]] = []
    walls: Dict[str, List[float]] = {name: [] for name in methods}
    cpus: Dict[str, List[float]] = {name: [] for name in methods}
    first: Dict[str, Tuple[List[Any], int, Dict[str, Any], Optional[Flops]]] = {}
    for round_index in range(args.rounds):
        load_before = _loadavg()
        for name, run in methods.items():
            if name in ("B1", "B2") and round_index >= (args.baseline_rounds or args.rounds):
                continue
            flops = Flops.of(configs[name]) if round_index == 0 else None
            timer, memory = Timer(device), PeakMemory(device)
            with memory(), timer():
                entities, passes, extra = run(documents, flops)
            walls[name].append(timer.wall)
            cpus[name].append(timer.cpu)
            if round_index == 0:
                first[name] = (entities, passes, {**extra, **memory.row()}, flops)
            print(
                f"round {round_index + 1}/{args.rounds} {name:<16} {timer.wall:9.2f} s "
                f"(cpu {timer.cpu:.2f} s)",
                flush=True,
            )
        loads.append({"round": round_index + 1, "before": load_before, "after": _loadavg()})
    out["environment"]["loadavg_rounds"] = loads

    results: Dict[str, Any] = out["results"]
    reference = args.reference if args.reference in walls else None
    b1 = first.get("B1")
    for name in methods:
        entities, passes, extra, flops = first[name]
        wall, cpu = min(walls[name]), min(cpus[name])
        row: Dict[str, Any] = {
            "seconds": round(wall, 3),
            "cpu_seconds": round(cpu, 3),
            "words_per_s": round(n_words / wall, 2),
            "docs_per_s": round(len(documents) / wall, 4),
            "passes": passes,
            "seconds_all_rounds": [round(x, 3) for x in walls[name]],
            "cpu_seconds_all_rounds": [round(x, 3) for x in cpus[name]],
            "seconds_median": round(statistics.median(walls[name]), 3),
        }
        if b1 is not None and name != "B1":
            row["x_B1"] = round(min(walls["B1"]) / wall, 3)
            row["x_B1_cpu_time"] = round(min(cpus["B1"]) / cpu, 3)
            row["agreement_with_B1"] = agreement(b1[0], entities)
        if "B2" in walls and name.startswith("ours:"):
            row["x_B2"] = round(min(walls["B2"]) / wall, 3)
        median = statistics.median(walls[name])
        row["words_per_s_median"] = round(n_words / median, 2)
        if reference is not None:
            row["x_reference_median"] = round(statistics.median(walls[reference]) / median, 3)
            if name != reference:
                row["agreement_with_reference"] = agreement(first[reference][0], entities)
        row.update(extra)
        row.update(notes.get(name, {}))
        row.update(
            flops_row(
                flops,
                wall if args.rounds == 1 else walls[name][0],
                args.peak_tflops if cuda else None,
                gemm["bfloat16" if name.startswith("ours:bf16") else "float32"],
            )
        )
        results[name] = row
    if reference is not None and reference.startswith("ours:"):
        out["logits_check"] = logits_check(pipelines, captured, reference, results)
    out["budgets"] = run_budgets(args, documents, n_words, warm, b1[0] if b1 else None)
    with contextlib.suppress(OSError):
        out["environment"]["loadavg_end"] = os.getloadavg()
    write_json(args.out, out)
    print_table(out)
    return out


def logits_check(
    pipelines: Dict[str, Any],
    captured: Dict[str, Dict[Any, Any]],
    reference: str,
    results: Dict[str, Any],
) -> Dict[str, Any]:
    """The largest difference of every candidate span's logits (not only the decoded ones)
    between each ONNX method and the reference, pass by pass, as the first round scored them."""
    expected = captured[reference]
    out: Dict[str, Any] = {"reference": reference, "passes": len(expected)}
    for name, nlp in pipelines.items():
        if component(nlp).settings.backend != "onnxruntime":
            continue
        got = captured[name]
        if set(got) != set(expected):
            raise RuntimeError(f"{name} ran other passes than {reference}")
        diff = max(float(abs(got[key] - expected[key]).max()) for key in expected)
        out[name] = {
            "max_abs_logit_diff": diff,
            "spans": int(sum(len(value) for value in got.values())),
            "precision": component(nlp).runtime.backend.precision,
        }
        results[name]["max_abs_logit_diff_vs_reference"] = diff
        print(f"logits {name} vs {reference}: max |diff| {diff:.3g}", flush=True)
    return out


def _loadavg() -> Optional[List[float]]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def run_budgets(
    args: argparse.Namespace, documents: List[Any], n_words: int, warm: List[Any], b1_entities
) -> Dict[str, Any]:
    """`--budget-mode` once per `--budgets` value: time, batches and peak memory."""
    out: Dict[str, Any] = {}
    for budget in args.budgets:
        nlp = load_pipeline(args.model, args.budget_mode, args.device, budget, args.onnx_dir)
        run = ours_method(nlp, args.batch_size)
        run(warm, None)
        timer, memory = Timer(args.device), PeakMemory(args.device)
        with memory(), timer():
            entities, passes, extra = run(documents, None)
        row: Dict[str, Any] = {
            "mode": args.budget_mode,
            "seconds": round(timer.wall, 3),
            "words_per_s": round(n_words / timer.wall, 2),
            "passes": passes,
            **extra,
            **memory.row(),
        }
        if b1_entities is not None:
            row["agreement_with_B1"] = agreement(b1_entities, entities)
        out[str(budget)] = row
        print(
            f"budget {budget:>6} {args.budget_mode}: {timer.wall:.2f} s, largest batch "
            f"{extra['largest_batch_positions']} positions, peak memory +{memory.extra_mib} MiB "
            f"({memory.kind})",
            flush=True,
        )
        del nlp, run
    return out


def print_table(out: Dict[str, Any]) -> None:
    data, env = out["data"], out["environment"]
    print(
        f"\n{data['documents']} documents, {data['sentences']} sentences, {data['words']} words"
        f" on {env['device']} ({env['threads']} threads), best of "
        f"{out['settings']['rounds']} round(s)"
    )
    header = f"{'method':<16} {'s':>9} {'cpu s':>9} {'words/s':>9} {'docs/s':>8} {'passes':>7}"
    header += f" {'xB1':>6} {'xB1cpu':>6} {'xB2':>6} {'agreeB1':>8}"
    if any("tflops_per_s" in row for row in out["results"].values()):
        header += f" {'TFLOP/s':>8} {'gemm%':>6} {'peak%':>6}"
    header += f" {'mem+MiB':>8} {'w/s med':>8} {'xref med':>8} {'agreeRef':>8}"
    print(header)
    for name, row in out["results"].items():
        agree = row.get("agreement_with_B1", {}).get("sentences_identical")
        line = (
            f"{name:<16} {row['seconds']:9.2f} {row['cpu_seconds']:9.2f} "
            f"{row['words_per_s']:9.1f} {row['docs_per_s']:8.3f} {row['passes']:7d} "
            f"{_fmt(row.get('x_B1'))} {_fmt(row.get('x_B1_cpu_time'))} {_fmt(row.get('x_B2'))} "
            f"{_fmt(agree, 8, 4)}"
        )
        if "tflops_per_s" in row:
            line += f" {row['tflops_per_s']:8.3f} {100 * row['share_of_gemm']:6.1f}"
            peak = row.get("share_of_peak")
            line += f" {100 * peak:6.2f}" if peak is not None else "      -"
        line += f" {_fmt(row.get('peak_memory_extra_mib'), 8, 1)}"
        agree_ref = row.get("agreement_with_reference", {}).get("sentences_identical")
        line += f" {_fmt(row.get('words_per_s_median'), 8, 1)}"
        line += f" {_fmt(row.get('x_reference_median'), 8)} {_fmt(agree_ref, 8, 4)}"
        print(line)


def _fmt(value: Optional[float], width: int = 6, digits: int = 2) -> str:
    return f"{value:{width}.{digits}f}" if value is not None else " " * (width - 1) + "-"


if __name__ == "__main__":
    main()
