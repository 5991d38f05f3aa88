"""The `luke_ner` pipeline component: spaCy's TrainablePipe contract over `LukeRuntime`."""

import warnings
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy
import srsly
import torch
from spacy import util
from spacy.language import Language
from spacy.pipeline import Sentencizer, TrainablePipe
from spacy.tokens import Doc
from spacy.training import Example, validate_examples
from spacy.util import logger
from spacy.vocab import Vocab
from spacy_transformers.data_classes import TransformerData
from spacy_transformers.pipeline_component import install_extensions
from thinc.api import Config, Model

from .annotation import scored_span_group, trf_data, word_spans
from .checkpoint import check_saved_labels, peek_labels
from .corpus import sentence_ranges
from .decoding import decode_sentence
from .encoding import Pass, batch_by_budget, plan_doc
from .runtime import LukeRuntime
from .scheduling import DocEntities, DocScores, DocStates, ScoredSentence, score_passes
from .settings import Attention, Context, DType, NerSettings
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
    context: Context,
    max_batch_items: int,
    device: Optional[str],
    dtype: DType,
    attention: Attention,
    overwrite_ents: bool,
    threshold: float,
    spans_key: Optional[str],
    set_trf_data: bool,
    scorer: Optional[Callable],
) -> "LukeEntityRecognizer":
    """Construct a LUKE span-classification entity recognizer.

    model (Model): A `luke_spacy.LukeSpanClassifier.v1` model (checkpoint name and revision).
    scorer (Optional[Callable]): The scoring method.
    The other arguments are the settings documented on `luke_spacy.settings.NerSettings`.
    """
    # The factory's own arguments, so spaCy validates each setting against its type.
    given = locals()
    settings = NerSettings(**{key: given[key] for key in NerSettings.__dataclass_fields__})
    return LukeEntityRecognizer(nlp.vocab, model, name, settings=settings, scorer=scorer)


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
        settings: NerSettings = NerSettings(),
        scorer: Optional[Callable] = None,
    ) -> None:
        """Initialize the component.

        vocab (Vocab): The shared vocabulary.
        model (Model): A `luke_spacy.LukeSpanClassifier.v1` model.
        name (str): The component instance name.
        settings (NerSettings): The component's settings (see `make_luke_ner`).
        scorer (Optional[Callable]): The scoring method.
        """
        self.vocab = vocab
        self.model = model
        self.name = name
        self.scorer = scorer
        self.settings = settings
        self.runtime = LukeRuntime(model, settings)
        # The serialized view: the settings, and what initialization learned.
        self.cfg: Dict[str, Any] = {
            **settings.to_dict(),
            "labels": peek_labels(model.attrs["name"], model.attrs["revision"]),
        }
        # Instrumentation: called with the passes of each forward batch before it runs.
        self.on_batch: Optional[Callable[[Sequence[Pass]], None]] = None
        self._sentencizer = Sentencizer()
        if settings.set_trf_data:
            install_extensions()

    @property
    def labels(self) -> Tuple[str, ...]:
        """The entity labels of the checkpoint (without the no-entity class)."""
        return tuple(self._label_names()[1:])

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
        if labels is not None and not labels:
            raise ValueError(
                "luke_ner: the training data has no entities, so there are no labels to "
                "train; give them in [initialize.components.luke_ner] labels = [...]."
            )
        self.runtime.load(labels=None if labels is None else list(labels))
        if labels is None or not examples:
            return
        report = Coverage()
        for eg in examples:
            gold = gold_doc(eg, self.sentences)
            lengths = [len(ids) for ids in self._word_ids(gold.doc)]
            coverage(gold, lengths, self.settings.max_mention_length, report)
        self.cfg["coverage"] = {"n_entities": report.n_entities, **report.lost}
        if report.n_lost:
            warnings.warn(f"luke_ner: {report.describe()}", stacklevel=2)
        else:
            logger.info("luke_ner: %s", report.describe())

    def sentences(self, doc: Doc) -> List[Tuple[int, int]]:
        """The sentence word ranges the component scores (see `corpus.sentence_ranges`)."""
        return sentence_ranges(doc, self._sentencizer)

    def plan(
        self, docs: Sequence[Doc], sentences: Optional[Sequence[List[Tuple[int, int]]]] = None
    ) -> List[Pass]:
        """The passes that score every candidate span of the Docs, in the Docs' sentences
        (`sentences`, one list of ranges per Doc) or `self.sentences(doc)`."""
        return list(self._passes(docs, sentences))

    def predict(self, docs: Iterable[Doc]) -> List[DocEntities]:
        """Score the candidate spans of each Doc and decode them, without modifying the Docs.

        Each sentence is decoded as soon as its passes have run, so memory does not grow
        with the length of a Doc. Entities already on a Doc keep their words free unless
        `overwrite_ents` is set.

        docs (Iterable[Doc]): The documents to predict.
        RETURNS (List[DocEntities]): The entities of each Doc.
        """
        docs = list(docs)
        settings = self.settings
        taken = [
            set()
            if settings.overwrite_ents
            else {i for e in doc.ents for i in range(e.start, e.end)}
            for doc in docs
        ]
        found: List[List[Tuple[numpy.ndarray, numpy.ndarray, numpy.ndarray]]] = [[] for _ in docs]
        states: Dict[int, numpy.ndarray] = {}
        for item in self._score(docs, want_words=settings.set_trf_data):
            if isinstance(item, DocStates):
                states[item.doc] = item.states
                continue
            found[item.doc].append(
                decode_sentence(
                    item.spans, item.logits, taken=taken[item.doc], threshold=settings.threshold
                )
            )
        return [
            DocEntities.from_parts(
                parts, self._trf_data(doc, states.get(d)) if settings.set_trf_data else None
            )
            for d, (doc, parts) in enumerate(zip(docs, found))
        ]

    def span_scores(self, docs: Iterable[Doc]) -> List[DocScores]:
        """Every candidate span of each Doc with its logits, in the recipe's order.

        docs (Iterable[Doc]): The documents to score.
        RETURNS (List[DocScores]): The candidate spans and logits of each Doc.
        """
        docs = list(docs)
        parts: List[List[ScoredSentence]] = [[] for _ in docs]
        for item in self._score(docs):
            parts[item.doc].append(item)
        n_labels = len(self._label_names())
        return [DocScores.from_sentences(doc_parts, n_labels) for doc_parts in parts]

    def set_annotations(self, docs: Iterable[Doc], predictions: Sequence[DocEntities]) -> None:
        """Write the predicted entities to `doc.ents` (and `doc.spans[spans_key]`).

        Entities kept from before (`overwrite_ents = false`) keep their scored spans from an
        earlier run of this component, so running it twice loses no scores.

        docs (Iterable[Doc]): The documents to modify.
        predictions (Sequence[DocEntities]): The output of `predict`.
        """
        names = self._label_names()
        key = self.settings.spans_key
        for doc, pred in zip(docs, predictions):
            kept = () if self.settings.overwrite_ents else doc.ents
            new = word_spans(doc, pred.spans, [names[i] for i in pred.labels.tolist()])
            doc.ents = sorted(kept + new, key=lambda span: span.start)
            if key is not None:
                doc.spans[key] = scored_span_group(doc, key, kept, new, pred.scores)
            if pred.trf_data is not None:
                doc._.trf_data = pred.trf_data

    def pipe(self, stream: Iterable[Doc], *, batch_size: int = 128) -> Iterator[Doc]:
        """Process a stream of Docs; forward batches span the Docs of a batch but stay within
        `max_batch_items`. When a batch fails, its Docs are run one by one, so only the Doc
        that fails reaches the error handler (`nlp.set_error_handler`).

        stream (Iterable[Doc]): A stream of documents.
        batch_size (int): The number of documents to buffer.
        YIELDS (Doc): Processed documents in order.
        """
        error_handler = self.get_error_handler()
        for docs in util.minibatch(stream, size=batch_size):
            try:
                self.set_annotations(docs, self.predict(docs))
            except Exception:
                for doc in docs:
                    try:
                        self.set_annotations([doc], self.predict([doc]))
                    except Exception as err:
                        error_handler(self.name, self, [doc], err)
                    else:
                        yield doc
            else:
                yield from docs

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
        passes = self.plan([g.doc for g in golds], [g.sentences for g in golds])
        n_spans = sum(len(p.spans) for p in passes)
        if n_spans == 0:
            return losses
        for indices in batch_by_budget(passes, self.settings.max_batch_items):
            batch = [passes[i] for i in indices]
            logits, backprop = self.runtime.begin_update(batch, drop)
            targets = span_targets(
                [p.spans for p in batch],
                [golds[p.doc].entities for p in batch],
                self._label_ids(),
                logits.shape[1],
            )
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
        n_spans = max(1, sum(len(s.spans) for s in scores))
        label_ids = self._label_ids()
        total, grads = 0.0, []
        for eg, score in zip(examples, scores):
            entities = gold_doc(eg, self.sentences).entities
            targets = span_targets([score.spans.tolist()], [entities], label_ids, len(score.spans))
            loss, grad = span_loss(torch.from_numpy(score.logits)[None], targets, n_spans)
            total += loss
            grads.append(grad[0].numpy())
        return total, grads

    def add_label(self, label: str) -> int:
        raise NotImplementedError(
            "luke_ner takes its labels from the checkpoint's config.id2label, or for "
            "training from the data or [initialize.components.luke_ner] labels."
        )

    def to_bytes(self, *, exclude: Iterable[str] = tuple()) -> bytes:
        """Serialize the component, weights and tokenizer included."""
        serialize = {
            "cfg": lambda: srsly.json_dumps(self._serialized_cfg()),
            "model": self.runtime.to_bytes,
        }
        return util.to_bytes(serialize, exclude)

    def from_bytes(
        self, bytes_data: bytes, *, exclude: Iterable[str] = tuple()
    ) -> "LukeEntityRecognizer":
        """Load the component from bytes; never touches the network."""
        deserialize = {
            "cfg": lambda b: self._restore_cfg(srsly.json_loads(b)),
            "model": self.runtime.from_bytes,
        }
        util.from_bytes(bytes_data, deserialize, exclude)
        return self

    def to_disk(self, path: Union[str, Path], *, exclude: Iterable[str] = tuple()) -> None:
        """Save the component: cfg, and a Hugging Face folder (safetensors, tokenizer)."""
        serialize = {
            "cfg": lambda p: srsly.write_json(p, self._serialized_cfg()),
            "model": self.runtime.save,
        }
        util.to_disk(path, serialize, exclude)

    def from_disk(
        self, path: Union[str, Path], *, exclude: Iterable[str] = tuple()
    ) -> "LukeEntityRecognizer":
        """Load the component from a folder; never touches the network."""
        deserialize = {
            "cfg": lambda p: self._restore_cfg(srsly.read_json(p)),
            "model": self.runtime.load_local,
        }
        check_saved_labels(path)
        util.from_disk(path, deserialize, exclude)
        return self

    def _label_names(self) -> List[str]:
        """All labels in id order (0 is no-entity): the checkpoint's once it is loaded."""
        return self.runtime.labels if self.runtime.is_loaded else self.cfg["labels"]

    def _label_ids(self) -> Dict[str, int]:
        return {label: i for i, label in enumerate(self._label_names())}

    def _serialized_cfg(self) -> Dict[str, Any]:
        self.cfg["labels"] = list(self._label_names())
        return self.cfg

    def _restore_cfg(self, saved: Dict[str, Any]) -> None:
        # Settings come from the pipeline config (so load-time overrides apply); only what
        # initialization learned is restored.
        self.cfg.update({k: v for k, v in saved.items() if k in ("labels", "coverage")})

    def _word_ids(self, doc: Doc) -> List[Tuple[int, ...]]:
        return self.runtime.word_tokenizer([token.text for token in doc])

    def _passes(
        self,
        docs: Sequence[Doc],
        sentences: Optional[Sequence[List[Tuple[int, int]]]] = None,
    ) -> Iterator[Pass]:
        """The Docs' passes, planned lazily Doc by Doc."""
        for d, doc in enumerate(docs):
            yield from plan_doc(
                d,
                self._word_ids(doc),
                self.sentences(doc) if sentences is None else sentences[d],
                self.settings.recipe,
                cover_all=self.settings.set_trf_data,
            )

    def _score(
        self, docs: Sequence[Doc], want_words: bool = False
    ) -> Iterator[Union[ScoredSentence, DocStates]]:
        return score_passes(
            self._passes(docs),
            self.runtime.run,
            max_batch_items=self.settings.max_batch_items,
            want_words=want_words,
            on_batch=self.on_batch,
        )

    def _trf_data(self, doc: Doc, states: Optional[numpy.ndarray]) -> TransformerData:
        runtime = self.runtime
        return trf_data(self._word_ids(doc), states, runtime.tokenizer, runtime.hidden_size)
