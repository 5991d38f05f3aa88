"""A loaded LUKE span classifier (torch) written as an ONNX export folder, and its int8
quantization with ONNX Runtime.

The graph is the torch backend's own forward (`model.LukeSpanScorer`: the encoder with
entity-aware attention, then `classifier(cat(h[start], h[end], h_entity))`), traced by
torch's TorchScript exporter at opset 17 with dynamic batch, word, span and mention axes. It
also returns the final word states, for `set_trf_data`. The fused entity-aware attention is
traced (see `EXPORT_ATTENTION`). The entity embedding table keeps only the rows luke_ner feeds
([PAD] and [MASK] lie in the first four), so LUKE-large's 500,000-row table (512 MB) does not
travel into the graph. Folder layout and checks: `onnx_files`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Dict, Iterator, Tuple

import torch

from . import __version__
from .attention import (
    fuse_entity_aware_attention,
    is_entity_aware_attention_fused,
    unfuse_entity_aware_attention,
)
from .checkpoint import save_tokenizer_settings, tokenizer_settings
from .onnx_files import (
    DATA_NAME,
    GRAPH_NAME,
    INPUT_NAMES,
    MANIFEST_NAME,
    OUTPUT_NAMES,
    check_export,
    write_manifest,
)
from .tokenization import entity_ids

OPSET = 17
# Protobuf cannot hold a message over 2 GB: larger graphs keep their weights in DATA_NAME.
PROTOBUF_LIMIT = 2**31 - 1
# Both attentions trace to graphs that agree with torch to ~1e-5 on LUKE-large. The fused one
# (`attention.FusedLukeSelfAttention`, the torch default) has one projection MatMul per segment
# and no concatenation of score blocks; on LUKE-large (2 CPU threads, one pass of 512 words and
# 128 spans) it ran as fast as eager in float32 and ~1.2x faster in int8.
EXPORT_ATTENTION = "sdpa"
# Dynamic quantization of the linear layers: weights int8 (per output channel unless told),
# activations quantized per batch at run time.
QUANTIZED_OPS = ["MatMul"]


class _Positional(torch.nn.Module):
    """The scorer with one positional argument per input, both outputs always returned."""

    def __init__(self, scorer: torch.nn.Module) -> None:
        super().__init__()
        self.scorer = scorer

    def forward(self, *inputs: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        logits, words = self.scorer(dict(zip(INPUT_NAMES, inputs)), return_words=True)
        return logits, words


def write_export(
    scorer: torch.nn.Module,
    tokenizer: Any,
    folder: Path,
    *,
    source: Dict[str, Any],
    attention: str = EXPORT_ATTENTION,
    external_data_over: int = PROTOBUF_LIMIT,
) -> Dict[str, Any]:
    """Export a loaded `LukeForEntitySpanClassification` into an empty folder.

    scorer (LukeSpanScorer): The torch backend's scorer (`model.LukeSpanScorer`) around the
        loaded span classifier, which is left as it was.
    tokenizer (Any): Its tokenizer (saved with the graph).
    folder (Path): The output folder (created; should be empty).
    source (Dict[str, Any]): What it was exported from ("name", "fingerprint"), recorded.
    attention (str): "eager" or "sdpa": the attention traced into the graph.
    external_data_over (int): Graphs larger than this (bytes) keep their weights in
        model.onnx.data (protobuf's limit; lower in tests).
    RETURNS (Dict[str, Any]): The manifest written.
    """
    folder = Path(folder)
    transformer = scorer.hf
    folder.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    config = transformer.config
    labels = [config.id2label[i] for i in range(len(config.id2label))]
    mask_id, pad_id = entity_ids(tokenizer)
    rows = max(mask_id, pad_id) + 1
    with (
        _export_state(transformer, attention, rows),
        tempfile.TemporaryDirectory(dir=folder, prefix=".export-") as tmp,
    ):
        traced = Path(tmp) / GRAPH_NAME
        _trace(scorer, traced)
        graph_files = _place_graph(traced, folder, external_data_over)
    config.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    save_tokenizer_settings(folder, tokenizer_settings(tokenizer, (mask_id, pad_id)))
    import onnx

    return write_manifest(
        folder,
        labels=labels,
        precision="float32",
        graph_files=graph_files,
        source=source,
        export={
            "luke_spacy": __version__,
            "torch": torch.__version__,
            "onnx": onnx.__version__,
            "opset": OPSET,
            "attention": attention,
            "entity_rows": rows,
            "seconds": round(time.perf_counter() - start, 1),
        },
    )


def quantize_export(
    source: Path,
    folder: Path,
    *,
    per_channel: bool = True,
    external_data_over: int = PROTOBUF_LIMIT,
) -> Dict[str, Any]:
    """Write an int8 copy of a float32 export: ONNX Runtime's dynamic quantization of the
    linear layers (int8 weights, activations quantized at run time).

    source (Path): A float32 export folder (checked first).
    folder (Path): The output folder (created; should be empty).
    per_channel (bool): One weight scale per output channel rather than per matrix.
    external_data_over (int): As for `write_export`.
    RETURNS (Dict[str, Any]): The manifest written.
    """
    import onnx
    import onnxruntime
    from onnxruntime.quantization import QuantType, quantize_dynamic

    source, folder = Path(source), Path(folder)
    manifest = check_export(source)
    if manifest["precision"] != "float32":
        raise ValueError(f"'{source}' is already a {manifest['precision']} export.")
    folder.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=folder, prefix=".quantize-") as tmp:
        quantized = Path(tmp) / GRAPH_NAME
        with warnings.catch_warnings(), _quiet_root_logger():
            warnings.simplefilter("ignore")
            quantize_dynamic(
                source / GRAPH_NAME,
                quantized,
                weight_type=QuantType.QInt8,
                per_channel=per_channel,
                op_types_to_quantize=QUANTIZED_OPS,
                use_external_data_format=DATA_NAME in manifest["files"],
                extra_options={"MatMulConstBOnly": True},
            )
        graph_files = _place_graph(quantized, folder, external_data_over)
    for file in sorted(source.iterdir()):
        if file.is_file() and file.name not in (MANIFEST_NAME, *manifest["files"]):
            shutil.copy2(file, folder / file.name)
    return write_manifest(
        folder,
        labels=manifest["labels"],
        precision="int8",
        graph_files=graph_files,
        source=manifest["source"],
        export={
            **manifest["export"],
            "onnxruntime": onnxruntime.__version__,
            "onnx": onnx.__version__,
            "quantize_seconds": round(time.perf_counter() - start, 1),
        },
        quantization={
            "method": "onnxruntime.quantization.quantize_dynamic",
            "weight_type": "QInt8",
            "per_channel": per_channel,
            "op_types": QUANTIZED_OPS,
        },
    )


def state_fingerprint(scorer: torch.nn.Module, tokenizer: Any) -> str:
    """A fingerprint of a checkpoint in memory (weights that may be in no file, e.g. trained
    in this process): SHA-256 over its tensors, config and tokenizer settings."""
    digest = hashlib.sha256()
    transformer = scorer.hf
    digest.update(transformer.config.to_json_string().encode())
    settings = tokenizer_settings(tokenizer, entity_ids(tokenizer))
    digest.update(json.dumps(settings, sort_keys=True).encode())
    for name, tensor in transformer.state_dict().items():
        data = tensor.detach().cpu().contiguous()
        digest.update(f"{name}\0{data.dtype}\0{tuple(data.shape)}\0".encode())
        digest.update(data.view(torch.uint8).numpy())
    return "memory:sha256:" + digest.hexdigest()


@contextlib.contextmanager
def _quiet_root_logger() -> Iterator[None]:
    """ONNX Runtime's quantizer advises pre-processing on the root logger, installing a
    handler there first; it runs shape inference itself, all the linear layers need."""
    root = logging.getLogger()
    handler, level = logging.NullHandler(), root.level
    root.addHandler(handler)
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


@contextlib.contextmanager
def _export_state(transformer: Any, attention: str, entity_rows: int) -> Iterator[None]:
    """Eval mode, the attention to trace and the entity table cut to the rows luke_ner feeds,
    for the duration of the export; the model is given back as it was."""
    fused = is_entity_aware_attention_fused(transformer)
    training = transformer.training
    embeddings = transformer.luke.entity_embeddings
    table = embeddings.entity_embeddings
    kept = torch.nn.Embedding(
        min(entity_rows, table.num_embeddings), table.embedding_dim, padding_idx=None
    )
    kept.weight = torch.nn.Parameter(table.weight[: kept.num_embeddings].detach().clone())
    transformer.eval()
    if attention == "sdpa":
        fuse_entity_aware_attention(transformer)
    else:
        unfuse_entity_aware_attention(transformer)
    embeddings.entity_embeddings = kept
    try:
        yield
    finally:
        embeddings.entity_embeddings = table
        if fused:
            fuse_entity_aware_attention(transformer)
        else:
            unfuse_entity_aware_attention(transformer)
        transformer.train(training)


def _trace(scorer: torch.nn.Module, file: Path) -> None:
    """Trace the scorer into `file` with small example inputs and dynamic axes."""
    batch, words, spans, mention = 2, 12, 3, 4
    example = {
        "input_ids": torch.full((batch, words), 5, dtype=torch.long),
        "attention_mask": torch.ones(batch, words, dtype=torch.long),
        "entity_ids": torch.zeros(batch, spans, dtype=torch.long),
        "entity_attention_mask": torch.ones(batch, spans, dtype=torch.long),
        "entity_position_ids": torch.full((batch, spans, mention), -1, dtype=torch.long),
        "entity_start_positions": torch.ones(batch, spans, dtype=torch.long),
        "entity_end_positions": torch.ones(batch, spans, dtype=torch.long),
    }
    example["entity_position_ids"][..., 0] = 1
    axes: Dict[str, Dict[int, str]] = {
        "input_ids": {0: "batch", 1: "words"},
        "attention_mask": {0: "batch", 1: "words"},
        "entity_position_ids": {0: "batch", 1: "spans", 2: "mention"},
        "logits": {0: "batch", 1: "spans"},
        "word_states": {0: "batch", 1: "words"},
    }
    for name in ("entity_ids", "entity_attention_mask"):
        axes[name] = {0: "batch", 1: "spans"}
    for name in ("entity_start_positions", "entity_end_positions"):
        axes[name] = {0: "batch", 1: "spans"}
    with warnings.catch_warnings(), torch.no_grad():
        # The TorchScript exporter is deprecated in favour of torch.export, which does not
        # yet trace LUKE with dynamic shapes; its warnings say nothing about this graph.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _Positional(scorer),
            tuple(example[name] for name in INPUT_NAMES),
            str(file),
            dynamo=False,
            input_names=list(INPUT_NAMES),
            output_names=list(OUTPUT_NAMES),
            dynamic_axes=axes,
            opset_version=OPSET,
            do_constant_folding=True,
        )


def _place_graph(graph: Path, folder: Path, external_data_over: int) -> Tuple[str, ...]:
    """Move a graph (and whatever external data the exporter wrote beside it) into the
    folder as model.onnx, its weights in model.onnx.data when it is too large for one file."""
    import onnx

    size = sum(f.stat().st_size for f in graph.parent.iterdir() if f.is_file())
    single = [f for f in graph.parent.iterdir() if f.is_file()] == [graph]
    target = folder / GRAPH_NAME
    data = folder / DATA_NAME
    if data.exists():
        data.unlink()  # an earlier export's, written over with --force
    if single and size <= external_data_over:
        shutil.move(str(graph), target)
        return (GRAPH_NAME,)
    proto = onnx.load(str(graph), load_external_data=True)
    if size <= external_data_over:
        onnx.save_model(proto, str(target))
        return (GRAPH_NAME,)
    onnx.save_model(
        proto,
        str(target),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=DATA_NAME,
        size_threshold=1024,
    )
    return (GRAPH_NAME, DATA_NAME)
