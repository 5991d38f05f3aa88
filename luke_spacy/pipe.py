"""The `luke_ner` pipeline component."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy
import srsly
import torch
from spacy import util
from spacy.language import Language
from spacy.pipeline import Sentencizer, TrainablePipe
from spacy.tokens import Doc, Span, SpanGroup
from spacy.training import Example
from spacy.vocab import Vocab
from spacy_transformers.data_classes import TransformerData, WordpieceBatch
from spacy_transformers.pipeline_component import install_extensions
from thinc.api import Config, Model, get_torch_default_device
from thinc.types import Ragged
from transformers.modeling_outputs import BaseModelOutput

from .decoding import greedy_decode
from .encoding import Pass, RecipeSettings, batch_by_budget, collate, plan_doc
from .model import (
    entity_ids,
    get_objects,
    get_scorer,
    labels_of,
    load_checkpoint,
    load_weights,
    save_checkpoint,
)
from .tokenization import WordTokenizer

DEFAULT_CONFIG_STR = """
[luke_ner]
max_mention_length = 16
max_entity_length = 128
max_length = 510
context = "document"
max_batch_items = 4096
device = null
dtype = "float32"
overwrite_ents = false
spans_key = "luke_ner"
set_trf_data = false

[luke_ner.model]
@architectures = "luke_spacy.LukeSpanClassifier.v1"
name = "studio-ousia/luke-large-finetuned-conll-2003"
revision = "main"
mixed_precision = false

[luke_ner.scorer]
@scorers = "spacy.ner_scorer.v1"
"""
DEFAULT_CONFIG = Config().from_str(DEFAULT_CONFIG_STR)
CONTEXTS = ("document", "sentence")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@Language.factory(
    "luke_ner",
    assigns=["doc.ents", "token.ent_iob", "token.ent_type"],
    default_config=DEFAULT_CONFIG["luke_ner"],
    default_score_weights={"ents_f": 1.0, "ents_p": 0.0, "ents_r": 0.0, "ents_per_type": None},
)
def make_luke_ner(
    nlp: Language,
    name: str,
    model: Model,
    max_mention_length: int,
    max_entity_length: int,
    max_length: int,
    context: str,
    max_batch_items: int,
    device: Optional[str],
    dtype: str,
    overwrite_ents: bool,
    spans_key: Optional[str],
    set_trf_data: bool,
    scorer: Optional[Callable],
) -> LukeEntityRecognizer:
    """Construct a LUKE span-classification entity recognizer."""
    return LukeEntityRecognizer(
        nlp.vocab,
        model,
        name,
        max_mention_length=max_mention_length,
        max_entity_length=max_entity_length,
        max_length=max_length,
        context=context,
        max_batch_items=max_batch_items,
        device=device,
        dtype=dtype,
        overwrite_ents=overwrite_ents,
        spans_key=spans_key,
        set_trf_data=set_trf_data,
        scorer=scorer,
    )


@dataclass
class DocScores:
    """Predictions for one Doc: every candidate span with its logits.

    spans (numpy.ndarray): (n, 2) word spans, end exclusive, in the recipe's order.
    logits (numpy.ndarray): (n, n_labels) span logits; label 0 is the no-entity class.
    trf_data (Optional[TransformerData]): LUKE's word representations, when requested.
    """

    spans: numpy.ndarray
    logits: numpy.ndarray
    trf_data: Optional[TransformerData] = None


class LukeEntityRecognizer(TrainablePipe):
    """Named entity recognition with a LUKE span classifier (LUKE's published recipe).

    Words are the Doc's tokens. Each sentence is scored with balanced document context, every
    span of at most `max_mention_length` subwords is a candidate, and the best-scoring
    non-overlapping spans become `doc.ents`.
    """

    def __init__(
        self,
        vocab: Vocab,
        model: Model,
        name: str = "luke_ner",
        *,
        max_mention_length: int = 16,
        max_entity_length: int = 128,
        max_length: int = 510,
        context: str = "document",
        max_batch_items: int = 4096,
        device: Optional[str] = None,
        dtype: str = "float32",
        overwrite_ents: bool = False,
        spans_key: Optional[str] = "luke_ner",
        set_trf_data: bool = False,
        scorer: Optional[Callable] = None,
    ) -> None:
        """Initialize the component.

        vocab (Vocab): The shared vocabulary.
        model (Model): A `luke_spacy.LukeSpanClassifier.v1` model.
        name (str): The component instance name.
        max_mention_length (int): Longest candidate span in subwords (the recipe's 16).
        max_entity_length (int): Most candidate spans per forward pass (the recipe's 128).
        max_length (int): Window size in subwords without special tokens (the recipe's 510).
        context (str): "document" (balanced document context) or "sentence" (none).
        max_batch_items (int): Padded word+span positions per forward batch.
        device (Optional[str]): Torch device; None follows spacy.prefer_gpu/require_gpu.
        dtype (str): "float32" (exact), or "bfloat16"/"float16" autocast.
        overwrite_ents (bool): Replace entities already on the Doc instead of keeping them.
        spans_key (Optional[str]): Key of `doc.spans` for the scored entities, None for none.
        set_trf_data (bool): Store LUKE's word representations in `doc._.trf_data`.
        scorer (Optional[Callable]): The scoring method.
        """
        check_settings(
            max_mention_length=max_mention_length,
            max_entity_length=max_entity_length,
            max_length=max_length,
            context=context,
            max_batch_items=max_batch_items,
            device=device,
            dtype=dtype,
        )
        self.vocab = vocab
        self.model = model
        self.name = name
        self.scorer = scorer
        self.cfg: Dict[str, Any] = {
            "max_mention_length": max_mention_length,
            "max_entity_length": max_entity_length,
            "max_length": max_length,
            "context": context,
            "max_batch_items": max_batch_items,
            "device": device,
            "dtype": dtype,
            "overwrite_ents": overwrite_ents,
            "spans_key": spans_key,
            "set_trf_data": set_trf_data,
            "labels": [],
        }
        self._word_tokenizer: Optional[WordTokenizer] = None
        self._sentencizer = Sentencizer()
        if set_trf_data:
            install_extensions()

    @property
    def labels(self) -> Tuple[str, ...]:
        """The entity labels of the checkpoint (without the no-entity class)."""
        return tuple(self.cfg["labels"][1:])

    @property
    def settings(self) -> RecipeSettings:
        cfg = self.cfg
        return RecipeSettings(
            max_mention_length=cfg["max_mention_length"],
            max_entity_length=cfg["max_entity_length"],
            max_length=cfg["max_length"],
            document_context=cfg["context"] == "document",
        )

    def initialize(
        self, get_examples: Optional[Callable[[], Iterable[Example]]] = None, *, nlp=None
    ) -> None:
        """Load the checkpoint named in the model config, so errors surface early.

        get_examples (Optional[Callable[[], Iterable[Example]]]): Unused for inference.
        nlp (Language): The current nlp object.
        """
        self._objects()

    def _objects(self):
        objects = get_objects(self.model)
        if objects is None:
            objects = load_weights(self.model)
        if self._word_tokenizer is None or self._word_tokenizer.tokenizer is not objects.tokenizer:
            self._on_load(objects)
        return objects

    def _on_load(self, objects) -> None:
        config = objects.transformer.config
        capacity = config.max_position_embeddings - config.pad_token_id - 3
        if self.cfg["max_length"] > capacity:
            raise ValueError(
                f"max_length = {self.cfg['max_length']} does not fit the checkpoint, whose "
                f"max_position_embeddings = {config.max_position_embeddings} allows at most "
                f"{capacity} subwords per window; set max_length to {capacity} or less."
            )
        entity_ids(objects.tokenizer)
        self.cfg["labels"] = labels_of(objects)
        self._word_tokenizer = WordTokenizer(objects.tokenizer)

    def sentences(self, doc: Doc) -> List[Tuple[int, int]]:
        """The sentence word ranges the component scores.

        `doc.sents` when the Doc has sentence boundaries; otherwise the boundaries spaCy's
        rule-based Sentencizer would set (punctuation), without writing them to the Doc.
        Sentences longer than the window are split further by the windowing, never truncated.
        """
        if len(doc) == 0:
            return []
        if doc.has_annotation("SENT_START"):
            return [(sent.start, sent.end) for sent in doc.sents]
        starts = [i for i, is_start in enumerate(self._sentencizer.predict([doc])[0]) if is_start]
        starts = starts if starts and starts[0] == 0 else [0, *starts]
        return list(zip(starts, [*starts[1:], len(doc)]))

    def plan(self, docs: Sequence[Doc]) -> Tuple[List[Pass], List[List[Tuple[int, ...]]]]:
        """The passes that score every candidate span of the Docs, and each Doc's word ids."""
        self._objects()
        settings = self.settings
        passes: List[Pass] = []
        doc_word_ids = []
        for i, doc in enumerate(docs):
            word_ids = self._word_tokenizer([token.text for token in doc])
            doc_word_ids.append(word_ids)
            passes.extend(
                plan_doc(
                    i,
                    word_ids,
                    self.sentences(doc),
                    settings,
                )
            )
        return passes, doc_word_ids

    def predict(self, docs: Iterable[Doc]) -> List[DocScores]:
        """Score every candidate span of each Doc, without modifying the Docs.

        docs (Iterable[Doc]): The documents to predict.
        RETURNS (List[DocScores]): The candidate spans and logits of each Doc.
        """
        docs = list(docs)
        objects = self._objects()
        passes, doc_word_ids = self.plan(docs)
        n_labels = len(self.cfg["labels"])
        pass_logits: List[Optional[numpy.ndarray]] = [None] * len(passes)
        want_words = self.cfg["set_trf_data"]
        hidden: List[Optional[numpy.ndarray]] = [None] * len(docs)
        if want_words:
            width = objects.transformer.config.hidden_size
            hidden = [numpy.zeros((sum(map(len, ids)), width), "f") for ids in doc_word_ids]
        for batch in self._run(passes, want_words):
            indices, logits, words = batch
            for row, i in enumerate(indices):
                p = passes[i]
                pass_logits[i] = logits[row, : len(p.spans)]
                if words is not None and _first_chunk(passes, i):
                    begin, stop = p.window
                    a, b = p.core
                    hidden[p.doc][a:b] = words[row, 1 + a - begin : 1 + b - begin]
        scores = []
        by_doc: List[List[int]] = [[] for _ in docs]
        for i, p in enumerate(passes):
            by_doc[p.doc].append(i)
        for d in range(len(docs)):
            spans = [s for i in by_doc[d] for s in passes[i].spans]
            logits = (
                numpy.concatenate([pass_logits[i] for i in by_doc[d]])
                if spans
                else numpy.zeros((0, n_labels), "f")
            )
            trf_data = (
                _trf_data(doc_word_ids[d], hidden[d], objects.tokenizer) if want_words else None
            )
            scores.append(
                DocScores(numpy.asarray(spans, dtype="i").reshape(-1, 2), logits, trf_data)
            )
        return scores

    def _run(
        self, passes: Sequence[Pass], want_words: bool = False
    ) -> Iterator[Tuple[List[int], numpy.ndarray, Optional[numpy.ndarray]]]:
        """Forward batches of passes under the batch budget; yields numpy results per batch."""
        if not passes:
            return
        objects = self._objects()
        scorer = get_scorer(self.model)
        device = self._device()
        if next(scorer.parameters()).device != device:
            scorer.to(device)
        scorer.eval()
        tokenizer = objects.tokenizer
        mask_id, pad_entity_id = entity_ids(tokenizer)
        for indices in batch_by_budget(passes, self.cfg["max_batch_items"]):
            batch = collate(
                [passes[i] for i in indices],
                cls_id=tokenizer.cls_token_id,
                sep_id=tokenizer.sep_token_id,
                pad_id=tokenizer.pad_token_id,
                mask_entity_id=mask_id,
                pad_entity_id=pad_entity_id,
                max_mention_length=self.cfg["max_mention_length"],
                device=device,
            )
            with torch.inference_mode(), self._autocast(device):
                logits, words = scorer(batch, return_words=want_words)
            yield (
                indices,
                logits.float().cpu().numpy(),
                words.float().cpu().numpy() if words is not None else None,
            )

    def _device(self) -> torch.device:
        if self.cfg["device"] is not None:
            return torch.device(self.cfg["device"])
        return get_torch_default_device()

    def _autocast(self, device: torch.device):
        dtype = self.cfg["dtype"]
        if dtype == "float32":
            return contextlib.nullcontext()
        if dtype == "float16" and device.type == "cpu":
            raise ValueError("dtype = 'float16' needs a GPU; use 'bfloat16' or 'float32' on CPU.")
        return torch.autocast(device_type=device.type, dtype=DTYPES[dtype])

    def set_annotations(self, docs: Iterable[Doc], scores: Sequence[DocScores]) -> None:
        """Decode the scores into `doc.ents` (and `doc.spans[spans_key]`).

        docs (Iterable[Doc]): The documents to modify.
        scores (Sequence[DocScores]): The output of `predict`.
        """
        labels = self.cfg["labels"]
        spans_key = self.cfg["spans_key"]
        for doc, score in zip(docs, scores):
            kept = [] if self.cfg["overwrite_ents"] else list(doc.ents)
            taken = [i for ent in kept for i in range(ent.start, ent.end)]
            logits = score.logits
            accepted = greedy_decode(
                [tuple(s) for s in score.spans.tolist()],
                logits.max(axis=1).tolist() if len(logits) else [],
                logits.argmax(axis=1).tolist() if len(logits) else [],
                no_entity_id=0,
                taken=taken,
            )
            new = [Span(doc, s, e, label=labels[label]) for (s, e), label, _ in accepted]
            doc.ents = sorted(kept + new, key=lambda span: span.start)
            if spans_key is not None:
                probs = _softmax(logits[[k for _, _, k in accepted]]) if accepted else logits
                group = sorted(
                    zip(new, probs.max(axis=1).tolist() if accepted else []),
                    key=lambda item: item[0].start,
                )
                doc.spans[spans_key] = SpanGroup(
                    doc,
                    name=spans_key,
                    spans=[span for span, _ in group],
                    attrs={"scores": numpy.asarray([p for _, p in group], dtype="f")},
                )
            if score.trf_data is not None:
                doc._.trf_data = score.trf_data

    def pipe(self, stream: Iterable[Doc], *, batch_size: int = 128) -> Iterator[Doc]:
        """Process a stream of Docs; forward passes are batched across Docs.

        The batch size only sets how many Docs are buffered; forward batches are bounded by
        `max_batch_items` whatever it is.

        stream (Iterable[Doc]): A stream of documents.
        batch_size (int): The number of documents to buffer.
        YIELDS (Doc): Processed documents in order.
        """
        stream = iter(stream)
        while True:
            docs = list(islice(stream, batch_size))
            if not docs:
                return
            self.set_annotations(docs, self.predict(docs))
            yield from docs

    def add_label(self, label: str) -> int:
        raise NotImplementedError(
            "luke_ner takes its labels from the checkpoint's config.id2label."
        )

    def to_bytes(self, *, exclude: Iterable[str] = tuple()) -> bytes:
        """Serialize the component, weights and tokenizer included."""
        self._objects()
        serialize = {
            "cfg": lambda: srsly.json_dumps(self.cfg),
            "model": lambda: self.model.to_bytes(),
        }
        return util.to_bytes(serialize, exclude)

    def from_bytes(self, bytes_data: bytes, *, exclude: Iterable[str] = tuple()):
        """Load the component from bytes; never touches the network."""
        deserialize = {
            "cfg": lambda b: self.cfg.update(srsly.json_loads(b)),
            "model": lambda b: self.model.from_bytes(b),
        }
        util.from_bytes(bytes_data, deserialize, exclude)
        self._on_load(get_objects(self.model))
        return self

    def to_disk(self, path: str | Path, *, exclude: Iterable[str] = tuple()) -> None:
        """Save the component: cfg, and a Hugging Face folder (safetensors, tokenizer)."""
        objects = self._objects()
        serialize = {
            "cfg": lambda p: srsly.write_json(p, self.cfg),
            "model": lambda p: save_checkpoint(objects, p),
        }
        util.to_disk(path, serialize, exclude)

    def from_disk(self, path: str | Path, *, exclude: Iterable[str] = tuple()):
        """Load the component from a folder; never touches the network."""

        def load_model(p: Path) -> None:
            self.model.shims[0].set_objects(load_checkpoint(str(p), local_files_only=True))

        deserialize = {
            "cfg": lambda p: self.cfg.update(srsly.read_json(p)),
            "model": load_model,
        }
        util.from_disk(path, deserialize, exclude)
        self._on_load(get_objects(self.model))
        return self


def check_settings(
    *,
    max_mention_length: int,
    max_entity_length: int,
    max_length: int,
    context: str,
    max_batch_items: int,
    device: Optional[str],
    dtype: str,
) -> None:
    """Raise a ValueError that names the fix for an invalid setting."""
    for key, value in (
        ("max_mention_length", max_mention_length),
        ("max_entity_length", max_entity_length),
        ("max_length", max_length),
        ("max_batch_items", max_batch_items),
    ):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"luke_ner: {key} must be a positive integer, got {value!r}.")
    if max_mention_length > max_length:
        raise ValueError(
            f"luke_ner: max_mention_length ({max_mention_length}) cannot exceed max_length "
            f"({max_length})."
        )
    if context not in CONTEXTS:
        raise ValueError(f"luke_ner: context must be one of {CONTEXTS}, got {context!r}.")
    if dtype not in DTYPES:
        raise ValueError(f"luke_ner: dtype must be one of {tuple(DTYPES)}, got {dtype!r}.")
    if device is not None:
        try:
            torch.device(device)
        except (RuntimeError, TypeError) as err:
            raise ValueError(
                f"luke_ner: device {device!r} is not a torch device; use null, 'cpu' or 'cuda:0'."
            ) from err


def _first_chunk(passes: Sequence[Pass], i: int) -> bool:
    return i == 0 or passes[i - 1].core != passes[i].core or passes[i - 1].doc != passes[i].doc


def _softmax(x: numpy.ndarray) -> numpy.ndarray:
    e = numpy.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _trf_data(
    word_ids: Sequence[Sequence[int]], hidden: numpy.ndarray, tokenizer
) -> TransformerData:
    ids = [i for word in word_ids for i in word]
    n = len(ids)
    wordpieces = WordpieceBatch(
        strings=[tokenizer.convert_ids_to_tokens(ids)],
        input_ids=numpy.asarray([ids], dtype="i").reshape(1, n),
        attention_mask=numpy.ones((1, n), dtype="bool"),
        lengths=[n],
        token_type_ids=None,
    )
    align = Ragged(numpy.arange(n, dtype="i"), numpy.asarray([len(w) for w in word_ids], "i"))
    return TransformerData(
        wordpieces=wordpieces,
        model_output=BaseModelOutput(last_hidden_state=hidden[None]),
        align=align,
    )
