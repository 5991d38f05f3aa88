"""The `luke_ner` pipeline component."""

import contextlib
import warnings
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy
import srsly
import torch
from spacy import util
from spacy.language import Language
from spacy.pipeline import Sentencizer, TrainablePipe
from spacy.tokens import Doc, Span, SpanGroup
from spacy.training import Example, validate_examples
from spacy.util import logger
from spacy.vocab import Vocab
from spacy_transformers.data_classes import TransformerData, WordpieceBatch
from spacy_transformers.pipeline_component import install_extensions
from thinc.api import Config, Model, get_torch_default_device
from thinc.types import Ragged
from transformers.modeling_outputs import BaseModelOutput

from .attention import fuse_entity_aware_attention, unfuse_entity_aware_attention
from .checkpoint import check_saved_labels, peek_labels
from .decoding import decode_logits, softmax
from .encoding import Pass, RecipeSettings, batch_by_budget, collate, groups_of, plan_doc
from .model import (
    check_device,
    entity_ids,
    get_objects,
    get_scorer,
    labels_of,
    load_checkpoint,
    load_weights,
    save_checkpoint,
)
from .tokenization import WordTokenizer
from .training import Coverage, coverage, gold_doc, span_loss, span_targets

DEFAULT_CONFIG_STR = """
[luke_ner]
max_mention_length = 16
max_entity_length = 128
max_length = 510
context = "document"
max_batch_items = 4096
device = null
dtype = "float32"
attention = "sdpa"
overwrite_ents = false
threshold = 0.0
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
# Forward batches' worth of passes planned, sorted and run together: enough to sort away
# padding, small enough that a long Doc is never planned or held whole.
GROUP_BATCHES = 32
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
ATTENTIONS = ("eager", "sdpa")


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
    attention: str,
    overwrite_ents: bool,
    threshold: float,
    spans_key: Optional[str],
    set_trf_data: bool,
    scorer: Optional[Callable],
) -> "LukeEntityRecognizer":
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
        attention=attention,
        overwrite_ents=overwrite_ents,
        threshold=threshold,
        spans_key=spans_key,
        set_trf_data=set_trf_data,
        scorer=scorer,
    )


@dataclass
class DocScores:
    """Every candidate span of one Doc with its logits (what `get_loss` takes).

    spans (numpy.ndarray): (n, 2) word spans, end exclusive, in the recipe's order.
    logits (numpy.ndarray): (n, n_labels) span logits; label 0 is the no-entity class.
    """

    spans: numpy.ndarray
    logits: numpy.ndarray


@dataclass
class DocEntities:
    """Decoded predictions for one Doc (what `predict` returns).

    spans (numpy.ndarray): (k, 2) entity word spans, end exclusive, sorted by start.
    labels (numpy.ndarray): (k,) label ids; `cfg["labels"][i]` is the label's name.
    scores (numpy.ndarray): (k,) softmax probability of each entity's label.
    trf_data (Optional[TransformerData]): LUKE's word representations, when requested.
    """

    spans: numpy.ndarray
    labels: numpy.ndarray
    scores: numpy.ndarray
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
        attention: str = "sdpa",
        overwrite_ents: bool = False,
        threshold: float = 0.0,
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
        attention (str): "eager" (transformers' own) or "sdpa" (entity-aware attention fused
            into one scaled_dot_product_attention call per layer).
        overwrite_ents (bool): Replace entities already on the Doc instead of keeping them.
        threshold (float): Least probability of a span's best label for it to compete as an
            entity; 0.0 is the recipe (every span whose best label is not no-entity).
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
            attention=attention,
            threshold=threshold,
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
            "attention": attention,
            "overwrite_ents": overwrite_ents,
            "threshold": threshold,
            "spans_key": spans_key,
            "set_trf_data": set_trf_data,
            "labels": peek_labels(model.attrs["name"], model.attrs["revision"]),
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
        self,
        get_examples: Optional[Callable[[], Iterable[Example]]] = None,
        *,
        nlp: Optional[Language] = None,
        labels: Optional[Sequence[str]] = None,
    ) -> None:
        """Load the checkpoint; for training, give it a head for the training labels.

        Without examples or labels the checkpoint is loaded as it is (inference), so a wrong
        model name fails here rather than on the first Doc. With them, the head is kept when
        the checkpoint already has exactly these labels and freshly initialized otherwise
        (also for pretrained-only LUKE checkpoints). Gold entities that can never be
        candidate spans are counted and reported.

        get_examples (Optional[Callable[[], Iterable[Example]]]): The training data.
        nlp (Optional[Language]): The current nlp object.
        labels (Optional[Sequence[str]]): Entity labels, e.g. from
            `[initialize.components.luke_ner]`; read from the examples when None.
        """
        examples = list(get_examples()) if get_examples is not None else []
        if labels is None:
            # spaCy passes a placeholder example without entities when there is no data:
            # that is an inference pipeline being initialized, not a training set.
            labels = sorted({ent.label_ for eg in examples for ent in eg.reference.ents}) or None
        if labels is None:
            self._objects()
            return
        if not labels:
            raise ValueError(
                "luke_ner: the training data has no entities, so there are no labels to "
                "train; give them in [initialize.components.luke_ner] labels = [...]."
            )
        self._on_load(load_weights(self.model, labels=list(labels)))
        if examples:
            report = self.coverage(examples)
            self.cfg["coverage"] = {"n_entities": report.n_entities, **report.lost}
            if report.n_lost:
                warnings.warn(f"luke_ner: {report.describe()}", stacklevel=2)
            else:
                logger.info("luke_ner: %s", report.describe())

    def coverage(self, examples: Iterable[Example]) -> Coverage:
        """Count the gold entities of the examples that can never be candidate spans."""
        self._objects()
        report = Coverage()
        for eg in examples:
            gold = gold_doc(eg, self.sentences)
            lengths = [len(ids) for ids in self._word_tokenizer([t.text for t in gold.doc])]
            coverage(gold, lengths, self.cfg["max_mention_length"], report)
        return report

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
        self.cfg["labels"] = labels_of(objects)
        self._word_tokenizer = WordTokenizer(objects.tokenizer)
        if self.cfg["attention"] == "sdpa":
            fuse_entity_aware_attention(objects.transformer)
        else:
            unfuse_entity_aware_attention(objects.transformer)

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

    def plan(
        self, docs: Sequence[Doc], sentences: Optional[Sequence[List[Tuple[int, int]]]] = None
    ) -> Tuple[List[Pass], List[List[Tuple[int, ...]]]]:
        """The passes that score every candidate span of the Docs, and each Doc's word ids.

        docs (Sequence[Doc]): The Docs.
        sentences (Optional[Sequence[List[Tuple[int, int]]]]): Sentence ranges of each Doc;
            `self.sentences(doc)` when None.
        """
        passes: List[Pass] = []
        doc_word_ids = []
        for i, doc in enumerate(docs):
            word_ids, doc_passes = self._plan_doc(
                i, doc, None if sentences is None else sentences[i]
            )
            doc_word_ids.append(word_ids)
            passes.extend(doc_passes)
        return passes, doc_word_ids

    def _plan_doc(
        self, index: int, doc: Doc, sentences: Optional[List[Tuple[int, int]]] = None
    ) -> Tuple[List[Tuple[int, ...]], Iterator[Pass]]:
        """One Doc's word ids and its passes, planned lazily."""
        self._objects()
        word_ids = self._word_tokenizer([token.text for token in doc])
        passes = plan_doc(
            index,
            word_ids,
            self.sentences(doc) if sentences is None else sentences,
            self.settings,
            cover_all=self.cfg["set_trf_data"],
        )
        return word_ids, passes

    def predict(self, docs: Iterable[Doc]) -> List[DocEntities]:
        """Score the candidate spans of each Doc and decode them, without modifying the Docs.

        Each sentence is decoded as soon as its passes have run, so memory does not grow
        with the length of a Doc. Entities already on a Doc keep their words free unless
        `overwrite_ents` is set.

        docs (Iterable[Doc]): The documents to predict.
        RETURNS (List[DocEntities]): The entities of each Doc.
        """
        docs = list(docs)
        tokenizer = self._objects().tokenizer
        taken = [
            set()
            if self.cfg["overwrite_ents"]
            else {i for e in doc.ents for i in range(e.start, e.end)}
            for doc in docs
        ]
        found: List[List[Tuple[numpy.ndarray, numpy.ndarray, numpy.ndarray]]] = [[] for _ in docs]
        words: Optional[List[Any]] = [None] * len(docs) if self.cfg["set_trf_data"] else None
        for d, spans, logits in self._sentence_scores(docs, words=words):
            lo, hi = int(spans[:, 0].min()), int(spans[:, 1].max())
            accepted = decode_logits(
                spans,
                logits,
                taken=[i for i in range(lo, hi) if i in taken[d]],
                threshold=self.cfg["threshold"],
            )
            if accepted:
                rows = [k for _, _, k in accepted]
                probs = softmax(logits[rows]).max(axis=1)
                labels = numpy.asarray([label for _, label, _ in accepted])
                found[d].append((spans[rows], labels, probs))
        return [
            _doc_entities(parts, _trf_data(*words[d], tokenizer) if words is not None else None)
            for d, parts in enumerate(found)
        ]

    def span_scores(self, docs: Iterable[Doc]) -> List[DocScores]:
        """Every candidate span of each Doc with its logits, in the recipe's order.

        docs (Iterable[Doc]): The documents to score.
        RETURNS (List[DocScores]): The candidate spans and logits of each Doc.
        """
        docs = list(docs)
        parts: List[List[Tuple[numpy.ndarray, numpy.ndarray]]] = [[] for _ in docs]
        for d, spans, logits in self._sentence_scores(docs):
            parts[d].append((spans, logits))
        n_labels = len(self.cfg["labels"])
        return [
            DocScores(
                numpy.concatenate([s for s, _ in doc_parts])
                if doc_parts
                else numpy.zeros((0, 2), "i"),
                numpy.concatenate([x for _, x in doc_parts])
                if doc_parts
                else numpy.zeros((0, n_labels), "f"),
            )
            for doc_parts in parts
        ]

    def _sentence_scores(
        self,
        docs: Sequence[Doc],
        sentences: Optional[Sequence[List[Tuple[int, int]]]] = None,
        words: Optional[List[Any]] = None,
    ) -> Iterator[Tuple[int, numpy.ndarray, numpy.ndarray]]:
        """(Doc index, spans, logits) of each sentence with candidates, in order.

        Passes are planned lazily and run in groups of GROUP_BATCHES batch budgets, and a
        sentence is yielded once its last pass has run: what is held at once is bounded by
        the groups, not by the Doc. With `words` (a list with one slot per Doc), each slot
        receives the Doc's word ids and LUKE's final state of each of its subwords.
        """
        want_words = words is not None
        width = self._objects().transformer.config.hidden_size

        def planned() -> Iterator[Pass]:
            for d, doc in enumerate(docs):
                word_ids, passes = self._plan_doc(
                    d, doc, None if sentences is None else sentences[d]
                )
                if want_words:
                    words[d] = (word_ids, numpy.zeros((sum(map(len, word_ids)), width), "f"))
                yield from passes

        key: Optional[Tuple[int, int]] = None
        spans: List[Tuple[int, int]] = []
        logits: List[numpy.ndarray] = []
        previous: Optional[Pass] = None
        for group in groups_of(planned(), GROUP_BATCHES * self.cfg["max_batch_items"]):
            # Chunks of one window share its words; the first chunk's states are kept.
            first = []
            for p in group:
                first.append(previous is None or (previous.doc, previous.core) != (p.doc, p.core))
                previous = p
            outputs: List[Any] = [None] * len(group)
            for indices, batch_logits, batch_words in self._run(group, want_words):
                for row, i in enumerate(indices):
                    # Copies, so no batch output stays alive with the group.
                    outputs[i] = batch_logits[row, : len(group[i].spans)].copy()
                    if batch_words is not None and first[i]:
                        begin, (a, b) = group[i].window[0], group[i].core
                        words[group[i].doc][1][a:b] = batch_words[
                            row, 1 + a - begin : 1 + b - begin
                        ]
            for p, out in zip(group, outputs):
                if (p.doc, p.sentence) != key:
                    if spans:
                        yield key[0], numpy.asarray(spans, "i"), numpy.concatenate(logits)
                    key, spans, logits = (p.doc, p.sentence), [], []
                if p.spans:
                    spans.extend(p.spans)
                    logits.append(out)
        if spans:
            yield key[0], numpy.asarray(spans, "i"), numpy.concatenate(logits)

    def _run(
        self, passes: Sequence[Pass], want_words: bool = False
    ) -> Iterator[Tuple[List[int], numpy.ndarray, Optional[numpy.ndarray]]]:
        """Forward batches of passes under the batch budget; yields numpy results per batch."""
        if not passes:
            return
        scorer = get_scorer(self.model)
        device = self._to_device()
        scorer.eval()
        for indices, batch in self._batches(passes, device):
            with torch.inference_mode(), self._autocast(device):
                logits, words = scorer(batch, return_words=want_words)
            yield (
                indices,
                logits.float().cpu().numpy(),
                words.float().cpu().numpy() if words is not None else None,
            )

    def _batches(
        self, passes: Sequence[Pass], device: torch.device
    ) -> Iterator[Tuple[List[int], Dict[str, torch.Tensor]]]:
        """Tensor batches of passes under the batch budget, with their pass indices."""
        for indices in batch_by_budget(passes, self.cfg["max_batch_items"]):
            yield indices, self.collate_passes([passes[i] for i in indices], device)

    def collate_passes(
        self, passes: Sequence[Pass], device: Union[torch.device, str] = "cpu"
    ) -> Dict[str, torch.Tensor]:
        """The model inputs of passes padded into one batch, with the checkpoint's ids.

        passes (Sequence[Pass]): Passes from `plan`.
        device (Union[torch.device, str]): Where the tensors go.
        RETURNS (Dict[str, torch.Tensor]): The `LukeForEntitySpanClassification` inputs.
        """
        tokenizer = self._objects().tokenizer
        mask_id, pad_entity_id = entity_ids(tokenizer)
        return collate(
            passes,
            cls_id=tokenizer.cls_token_id,
            sep_id=tokenizer.sep_token_id,
            pad_id=tokenizer.pad_token_id,
            mask_entity_id=mask_id,
            pad_entity_id=pad_entity_id,
            max_mention_length=self.cfg["max_mention_length"],
            device=device,
        )

    def _to_device(self) -> torch.device:
        """Move the model to the configured device (or thinc's current one) and return it."""
        if self.cfg["device"] is not None:
            device = torch.device(self.cfg["device"])
        else:
            device = get_torch_default_device()
        scorer = get_scorer(self.model)
        if next(scorer.parameters()).device != device:
            scorer.to(device)
        return device

    def _autocast(self, device: torch.device):
        dtype = self.cfg["dtype"]
        if dtype == "float32":
            return contextlib.nullcontext()
        if dtype == "float16" and device.type == "cpu":
            raise ValueError("dtype = 'float16' needs a GPU; use 'bfloat16' or 'float32' on CPU.")
        return torch.autocast(device_type=device.type, dtype=DTYPES[dtype])

    def set_annotations(self, docs: Iterable[Doc], predictions: Sequence[DocEntities]) -> None:
        """Write the predicted entities to `doc.ents` (and `doc.spans[spans_key]`).

        docs (Iterable[Doc]): The documents to modify.
        predictions (Sequence[DocEntities]): The output of `predict`.
        """
        labels = self.cfg["labels"]
        spans_key = self.cfg["spans_key"]
        for doc, pred in zip(docs, predictions):
            kept = [] if self.cfg["overwrite_ents"] else list(doc.ents)
            new = [
                Span(doc, s, e, label=labels[label])
                for (s, e), label in zip(pred.spans.tolist(), pred.labels.tolist())
            ]
            doc.ents = sorted(kept + new, key=lambda span: span.start)
            if spans_key is not None:
                doc.spans[spans_key] = SpanGroup(
                    doc, name=spans_key, spans=new, attrs={"scores": pred.scores}
                )
            if pred.trf_data is not None:
                doc._.trf_data = pred.trf_data

    def update(
        self,
        examples: Iterable[Example],
        *,
        drop: float = 0.0,
        sgd=None,
        losses: Optional[Dict[str, float]] = None,
    ) -> Dict[str, float]:
        """Learn from examples with the recipe's objective.

        Every candidate span of each sentence (same windows, span limit and chunks as at
        inference) is classified into its gold label or the no-entity class; the loss is the
        cross-entropy averaged over all candidate spans of the examples.

        examples (Iterable[Example]): A batch of Example objects.
        drop (float): The dropout rate of the transformer.
        sgd (thinc.api.Optimizer): The optimizer; None accumulates gradients only.
        losses (Optional[Dict[str, float]]): Loss per component, updated in place.
        RETURNS (Dict[str, float]): The updated losses dictionary.
        """
        losses = {} if losses is None else losses
        losses.setdefault(self.name, 0.0)
        examples = list(examples)
        validate_examples(examples, "LukeEntityRecognizer.update")
        if not examples:
            return losses
        golds = [gold_doc(eg, self.sentences) for eg in examples]
        passes, _ = self.plan([g.doc for g in golds], [g.sentences for g in golds])
        n_spans = sum(len(p.spans) for p in passes)
        if n_spans == 0:
            return losses
        label_ids = {label: i for i, label in enumerate(self.cfg["labels"])}
        for module in get_scorer(self.model).modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = drop
        device = self._to_device()
        for indices, batch in self._batches(passes, device):
            targets = torch.full(batch["entity_ids"].shape, -1, dtype=torch.long)
            for row, i in enumerate(indices):
                p = passes[i]
                gold = span_targets(p.spans, golds[p.doc].entities, label_ids)
                targets[row, : len(gold)] = torch.tensor(gold)
            logits, backprop = self.model.begin_update(batch)
            loss, d_logits = span_loss(logits, targets.to(logits.device), n_spans)
            backprop(d_logits)
            losses[self.name] += loss
        if sgd not in (None, False):
            self.finish_update(sgd)
        return losses

    def get_loss(
        self, examples: Iterable[Example], scores: Sequence[DocScores]
    ) -> Tuple[float, List[numpy.ndarray]]:
        """The recipe's loss of predicted scores, and its gradient per Doc.

        examples (Iterable[Example]): The examples whose predicted Docs were scored.
        scores (Sequence[DocScores]): The output of `span_scores` on those Docs.
        RETURNS (Tuple[float, List[numpy.ndarray]]): The loss and d_logits of each Doc.
        """
        examples = list(examples)
        label_ids = {label: i for i, label in enumerate(self.cfg["labels"])}
        n_spans = max(1, sum(len(s.spans) for s in scores))
        total, grads = 0.0, []
        for eg, score in zip(examples, scores):
            gold = gold_doc(eg, self.sentences)
            spans = [tuple(s) for s in score.spans.tolist()]
            targets = torch.tensor([span_targets(spans, gold.entities, label_ids)])
            loss, grad = span_loss(torch.from_numpy(score.logits)[None], targets, n_spans)
            total += loss
            grads.append(grad[0].numpy())
        return total, grads

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
            "luke_ner takes its labels from the checkpoint's config.id2label, or for "
            "training from the data or [initialize.components.luke_ner] labels."
        )

    def _restore_cfg(self, saved: Dict[str, Any]) -> None:
        # Settings come from the pipeline config (so load-time overrides apply); only what
        # initialization learned is restored.
        self.cfg.update({k: v for k, v in saved.items() if k in ("labels", "coverage")})

    def to_bytes(self, *, exclude: Iterable[str] = tuple()) -> bytes:
        """Serialize the component, weights and tokenizer included."""
        self._objects()
        serialize = {
            "cfg": lambda: srsly.json_dumps(self.cfg),
            "model": lambda: self.model.to_bytes(),
        }
        return util.to_bytes(serialize, exclude)

    def from_bytes(
        self, bytes_data: bytes, *, exclude: Iterable[str] = tuple()
    ) -> "LukeEntityRecognizer":
        """Load the component from bytes; never touches the network."""
        deserialize = {
            "cfg": lambda b: self._restore_cfg(srsly.json_loads(b)),
            "model": lambda b: self.model.from_bytes(b),
        }
        util.from_bytes(bytes_data, deserialize, exclude)
        self._on_load(get_objects(self.model))
        return self

    def to_disk(self, path: Union[str, Path], *, exclude: Iterable[str] = tuple()) -> None:
        """Save the component: cfg, and a Hugging Face folder (safetensors, tokenizer)."""
        objects = self._objects()
        serialize = {
            "cfg": lambda p: srsly.write_json(p, self.cfg),
            "model": lambda p: save_checkpoint(objects, p),
        }
        util.to_disk(path, serialize, exclude)

    def from_disk(self, path: Union[str, Path], *, exclude: Iterable[str] = tuple()):
        """Load the component from a folder; never touches the network."""

        def load_model(p: Path) -> None:
            self.model.shims[0].set_objects(load_checkpoint(str(p), local_files_only=True))

        deserialize = {
            "cfg": lambda p: self._restore_cfg(srsly.read_json(p)),
            "model": load_model,
        }
        check_saved_labels(path)
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
    attention: str,
    threshold: float = 0.0,
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
    if (
        isinstance(threshold, bool)
        or not isinstance(threshold, (int, float))
        or not (0.0 <= threshold <= 1.0)
    ):
        raise ValueError(f"luke_ner: threshold must be between 0.0 and 1.0, got {threshold!r}.")
    if context not in CONTEXTS:
        raise ValueError(f"luke_ner: context must be one of {CONTEXTS}, got {context!r}.")
    if attention not in ATTENTIONS:
        raise ValueError(f"luke_ner: attention must be one of {ATTENTIONS}, got {attention!r}.")
    if dtype not in DTYPES:
        raise ValueError(f"luke_ner: dtype must be one of {tuple(DTYPES)}, got {dtype!r}.")
    check_device(device)


def _doc_entities(
    parts: List[Tuple[numpy.ndarray, numpy.ndarray, numpy.ndarray]],
    trf_data: Optional[TransformerData],
) -> DocEntities:
    """One Doc's entities from its sentences' (spans, labels, scores), sorted by start."""
    if not parts:
        return DocEntities(
            numpy.zeros((0, 2), "i"), numpy.zeros(0, "i"), numpy.zeros(0, "f"), trf_data
        )
    spans, labels, scores = (numpy.concatenate(x) for x in zip(*parts))
    order = numpy.argsort(spans[:, 0], kind="stable")
    return DocEntities(
        spans[order].astype("i"), labels[order].astype("i"), scores[order].astype("f"), trf_data
    )


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
