"""Shared pieces of the benchmarks: CoNLL words, the baselines, FLOPs, timing.

CoNLL files are read and turned into Docs by `luke_spacy.conll`.

Baselines (both fp32, eager transformers attention, `LukeForEntitySpanClassification.forward`
on a model instance of their own, so a fused or autocast component never leaks into them):

* B1, the straightforward recipe: the same passes as the component (its `plan`), one forward
  per pass (batch of one), greedy decoding per sentence.
* B2, what a user writes from the Hugging Face docs: the checkpoint's `LukeTokenizer` on each
  sentence's text with every word span of the sentence as `entity_spans`, one forward per
  sentence, no document context.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Set, Tuple

import numpy
import torch
from tqdm import tqdm

from luke_spacy import conll
from luke_spacy.decoding import decode_sentence

Sentence = List[str]
Document = List[Sentence]
Entity = Tuple[int, int, str]  # word start, word end (exclusive) within the sentence, label

# Progress bars on stderr (full-size runs take minutes per method on a CPU); they do not stay
# behind, so the printed results read as before.
progress = functools.partial(tqdm, file=sys.stderr, dynamic_ncols=True, leave=False)

MODES = ("exact", "exact+sdpa", "bf16", "bf16+sdpa", "ort", "ort-int8")
MODE_SETTINGS: Dict[str, Dict[str, str]] = {
    "exact": {"dtype": "float32", "attention": "eager"},
    "exact+sdpa": {"dtype": "float32", "attention": "sdpa"},
    "bf16": {"dtype": "bfloat16", "attention": "eager"},
    "bf16+sdpa": {"dtype": "bfloat16", "attention": "sdpa"},
    # The onnxruntime backend on an export of the model (`onnx_export`), float32 or int8.
    "ort": {"backend": "onnxruntime"},
    "ort-int8": {"backend": "onnxruntime"},
}
ONNX_PRECISION = {"ort": "float32", "ort-int8": "int8"}


def read_conll(path: str | Path, max_docs: Optional[int] = None) -> List[Document]:
    """Documents of a CoNLL-2003 file, each a list of sentences of words."""
    documents = conll.read_conll(path)[:max_docs]
    return [[sentence.words for sentence in document.sentences] for document in documents]


def sentence_ranges(document: Document) -> List[Tuple[int, int]]:
    """Word ranges of the sentences within the document's Doc."""
    out, start = [], 0
    for sentence in document:
        out.append((start, start + len(sentence)))
        start += len(sentence)
    return out


def entities_by_sentence(doc: Any, document: Document) -> List[Set[Entity]]:
    """The Doc's entities, per sentence, with sentence-relative word offsets."""
    ranges = sentence_ranges(document)
    out: List[Set[Entity]] = [set() for _ in ranges]
    k = 0
    for ent in doc.ents:
        while ranges[k][1] <= ent.start:
            k += 1
        start = ranges[k][0]
        out[k].add((ent.start - start, ent.end - start, ent.label_))
    return out


def greedy(
    spans: Sequence[Tuple[int, int]], logits: torch.Tensor, labels: Sequence[str]
) -> Set[Tuple[int, int, str]]:
    """The recipe's decoding: drop NIL (label 0), stable sort by max logit, no overlaps."""
    if len(spans) == 0:
        return set()
    found, ids, _ = decode_sentence(numpy.asarray(spans), logits.float().cpu().numpy())
    return {(start, end, labels[i]) for (start, end), i in zip(found.tolist(), ids.tolist())}


def onnx_export(model_dir: str, onnx_dir: str | Path, precision: str) -> Dict[str, Any]:
    """The ONNX export of a model in `onnx_dir/<precision>`, written on first use (int8 from
    the float32 export); its folder, manifest and the seconds the export took here."""
    from luke_spacy.onnx_export import export_onnx

    folder = Path(onnx_dir) / precision
    seconds = None
    if not (folder / "onnx.json").is_file():
        start = time.perf_counter()
        if precision == "float32":
            export_onnx(model_dir, folder)
        else:
            float32 = onnx_export(model_dir, onnx_dir, "float32")["folder"]
            export_onnx(float32, folder, quantize="int8")
        seconds = round(time.perf_counter() - start, 1)
    manifest = json.loads((folder / "onnx.json").read_text())
    return {"folder": str(folder), "manifest": manifest, "seconds_here": seconds}


def load_pipeline(
    model_dir: str,
    mode: str,
    device: str,
    max_batch_items: Optional[int] = None,
    onnx_dir: Optional[str] = None,
):
    """A blank English pipeline with `luke_ner` in the given mode, initialized. The ONNX
    modes run the export in `onnx_dir` (written there on first use)."""
    import spacy

    config: Dict[str, Any] = {"model": {"name": model_dir}, "device": device}
    config.update(MODE_SETTINGS[mode])
    if mode in ONNX_PRECISION:
        if onnx_dir is None:
            raise ValueError(f"mode {mode} needs an --onnx-dir for its export")
        config["onnx_path"] = onnx_export(model_dir, onnx_dir, ONNX_PRECISION[mode])["folder"]
    if max_batch_items is not None:
        config["max_batch_items"] = max_batch_items
    nlp = spacy.blank("en")
    nlp.add_pipe("luke_ner", config=config)
    nlp.initialize()
    return nlp


def component(nlp: Any) -> Any:
    return nlp.get_pipe("luke_ner")


def model_inputs(nlp: Any, passes: Sequence[Any], device: str) -> Dict[str, torch.Tensor]:
    """The component's model inputs for passes (its `collate`), as tensors on `device`."""
    arrays = component(nlp).runtime.collate(passes)
    return {key: torch.from_numpy(value).to(device) for key, value in arrays.items()}


def scorer_of(nlp: Any) -> Any:
    from luke_spacy.model import get_scorer

    return get_scorer(component(nlp).model)


def config_of(nlp: Any) -> Any:
    """The checkpoint config of the pipeline's luke_ner, whatever its backend."""
    return component(nlp).runtime.backend.config


def load_hf(model_dir: str, device: str):
    """Tokenizer and an eager, fp32, eval-mode `LukeForEntitySpanClassification`."""
    from transformers import AutoTokenizer, LukeForEntitySpanClassification

    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    model = LukeForEntitySpanClassification.from_pretrained(model_dir, local_files_only=True)
    model.eval().to(device)
    return tokenizer, model


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


@dataclass
class Timer:
    """Wall and process CPU time of a block (the machine may be shared)."""

    device: str = "cpu"
    wall: float = 0.0
    cpu: float = 0.0

    @contextlib.contextmanager
    def __call__(self) -> Iterator[None]:
        sync(self.device)
        w, c = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            sync(self.device)
            self.wall += time.perf_counter() - w
            self.cpu += time.process_time() - c


def rss_kib(field: str = "VmRSS") -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def reset_peak_rss() -> bool:
    """Reset the kernel's peak RSS (VmHWM) of this process; False where not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


@dataclass
class PeakMemory:
    """Peak memory of a block, in MiB: in all, and above what was held when it began.

    On CUDA, `torch.cuda.max_memory_allocated` (`total` includes the weights of every loaded
    model; `extra` is the activations and workspace, what `max_batch_items` bounds). On the
    CPU, the process's peak RSS (VmHWM, reset at the start; None where it cannot be reset).
    """

    device: str = "cpu"
    kind: str = ""
    total_mib: Optional[float] = None
    extra_mib: Optional[float] = None

    @contextlib.contextmanager
    def __call__(self) -> Iterator[None]:
        cuda = self.device.startswith("cuda")
        self.kind = "cuda_max_allocated" if cuda else "rss_peak"
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated() / 2**10
        else:
            before = rss_kib()
            reset = reset_peak_rss()
        try:
            yield
        finally:
            if cuda:
                torch.cuda.synchronize()
                peak = torch.cuda.max_memory_allocated() / 2**10
            else:
                peak = rss_kib("VmHWM") if reset else None
            if peak is not None:
                self.total_mib = round(peak / 1024, 1)
                self.extra_mib = round((peak - before) / 1024, 1)

    def row(self) -> Dict[str, Any]:
        return {
            "peak_memory_kind": self.kind,
            "peak_memory_mib": self.total_mib,
            "peak_memory_extra_mib": self.extra_mib,
        }


@dataclass
class Flops:
    """Forward FLOPs counted from shapes (transformer layers only).

    Per layer and token: 5 d^2 MACs for the projections (two queries, key, value, output),
    2 d d_ff for the feed-forward, and 2 T d for the attention over T keys; 2 FLOPs per MAC.
    Embeddings and the span head are left out. `executed` counts padded positions as run,
    `useful` only the real ones.
    """

    hidden: int
    ffn: int
    layers: int
    executed: float = 0.0
    useful: float = 0.0

    @classmethod
    def of(cls, config: Any) -> Flops:
        return cls(config.hidden_size, config.intermediate_size, config.num_hidden_layers)

    def per_sequence(self, tokens: int, keys: int) -> float:
        d = self.hidden
        macs = tokens * (5 * d * d + 2 * d * self.ffn + 2 * keys * d)
        return 2.0 * macs * self.layers

    def add_batch(self, rows: int, padded: int, real: Sequence[int]) -> None:
        self.executed += rows * self.per_sequence(padded, padded)
        self.useful += sum(self.per_sequence(t, t) for t in real)


def gemm_tflops(
    device: str, dtype: torch.dtype, hidden: int, ffn: int, rows: int = 2048, seconds: float = 3.0
) -> float:
    """Measured TFLOP/s of one feed-forward-shaped matmul, (rows x hidden) @ (hidden x ffn).

    The ceiling the transformer's linear layers (most of its FLOPs) can reach on this device
    and dtype, with the same threads.
    """
    a = torch.randn(rows, hidden, device=device).to(dtype)
    b = torch.randn(hidden, ffn, device=device).to(dtype)
    with torch.inference_mode():
        for _ in range(3):
            a @ b
        sync(device)
        count, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            a @ b
            count += 1
            if count % 8 == 0:
                sync(device)
        sync(device)
        elapsed = time.perf_counter() - start
    return 2.0 * rows * hidden * ffn * count / elapsed / 1e12


def b1_predict(
    nlp: Any,
    model: Any,
    docs: Sequence[Any],
    documents: Sequence[Document],
    device: str,
    flops: Optional[Flops] = None,
) -> Tuple[List[List[Set[Entity]]], int]:
    """B1: the component's passes, one fp32 eager forward per pass, greedy per sentence.

    RETURNS (Tuple[List[List[Set[Entity]]], int]): Entities per document and sentence, and
        the number of forward passes.
    """
    pipe = component(nlp)
    passes = pipe.runtime.plan(docs)
    labels = [model.config.id2label[i] for i in range(len(model.config.id2label))]
    spans: Dict[Tuple[int, int], List[Tuple[int, int]]] = {}
    logits: Dict[Tuple[int, int], List[torch.Tensor]] = {}
    with torch.inference_mode():
        for p in progress(passes, desc="B1", unit="pass"):
            batch = model_inputs(nlp, [p], device)
            out = model(**batch)
            if flops is not None:
                n = p.length + len(p.spans)
                flops.add_batch(1, n, [n])
            key = (p.doc, p.sentence)
            spans.setdefault(key, []).extend(p.spans)
            logits.setdefault(key, []).append(out.logits[0].float().cpu())
    result: List[List[Set[Entity]]] = []
    for d, document in enumerate(documents):
        ranges = sentence_ranges(document)
        per_sentence = []
        for s, (start, _) in enumerate(ranges):
            key = (d, s)
            if key not in spans:
                per_sentence.append(set())
                continue
            found = greedy(spans[key], torch.cat(logits[key]), labels)
            per_sentence.append({(a - start, b - start, lab) for a, b, lab in found})
        result.append(per_sentence)
    return result, len(passes)


def b2_spans(sentence: Sentence, max_span_words: Optional[int] = None):
    """Text, character spans and word spans of every word span of a sentence (HF docs style)."""
    text, chars = conll.join_words(sentence)
    word_spans = [
        (i, j + 1)
        for i in range(len(sentence))
        for j in range(i, len(sentence))
        if max_span_words is None or j - i < max_span_words
    ]
    char_spans = [(chars[i][0], chars[j - 1][1]) for i, j in word_spans]
    return text, char_spans, word_spans


def b2_predict(
    tokenizer: Any,
    model: Any,
    documents: Sequence[Document],
    device: str,
    max_span_words: Optional[int] = None,
    flops: Optional[Flops] = None,
) -> Tuple[List[List[Set[Entity]]], int]:
    """B2: per sentence, `tokenizer(text, entity_spans=all word spans)` and one forward.

    Decoded with the same greedy decoding as B1 (the HF docs example prints every non-NIL
    span; greedy decoding makes the outputs comparable).
    """
    labels = [model.config.id2label[i] for i in range(len(model.config.id2label))]
    result: List[List[Set[Entity]]] = []
    n_forward = 0
    with torch.inference_mode():
        for document in progress(documents, desc="B2", unit="doc"):
            per_sentence = []
            for sentence in document:
                text, char_spans, word_spans = b2_spans(sentence, max_span_words)
                if not char_spans:
                    per_sentence.append(set())
                    continue
                inputs = tokenizer(text, entity_spans=char_spans, return_tensors="pt")
                inputs = {k: v.to(device) for k, v in inputs.items()}
                out = model(**inputs)
                n_forward += 1
                if flops is not None:
                    n = inputs["input_ids"].shape[1] + inputs["entity_ids"].shape[1]
                    flops.add_batch(1, n, [n])
                per_sentence.append(greedy(word_spans, out.logits[0].cpu(), labels))
            result.append(per_sentence)
    return result, n_forward


def agreement(
    a: Sequence[Sequence[Set[Entity]]], b: Sequence[Sequence[Set[Entity]]]
) -> Dict[str, Any]:
    """Share of sentences whose entity sets are identical, and entity-level overlap."""
    same = total = common = n_a = n_b = 0
    for doc_a, doc_b in zip(a, b):
        for sa, sb in zip(doc_a, doc_b):
            total += 1
            same += sa == sb
            common += len(sa & sb)
            n_a += len(sa)
            n_b += len(sb)
    return {
        "sentences_identical": same / total if total else 1.0,
        "sentences": total,
        "sentences_differing": total - same,
        "entities": n_b,
        "entities_reference": n_a,
        "entities_common": common,
    }


def environment(device: str, threads: int) -> Dict[str, Any]:
    import transformers

    env: Dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "threads": threads,
        "device": device,
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
    }
    if device.startswith("cuda"):
        env["gpu"] = torch.cuda.get_device_name()
    with contextlib.suppress(ImportError):
        import onnx
        import onnxruntime

        env["onnxruntime"] = onnxruntime.__version__
        env["onnx"] = onnx.__version__
    with contextlib.suppress(OSError):
        env["loadavg_start"] = os.getloadavg()
    return env


def write_json(path: Optional[str], data: Dict[str, Any]) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
