"""The `luke_ner` pipeline component: spaCy's TrainablePipe contract over the model layer.

The Thinc model (`luke_spacy.LukeSpanClassifier.v1`) takes Docs: `self.model.predict(docs)`
streams each sentence's scored candidate spans, and training runs `self.model.begin_update`
on the forward batches of an update (see runtime.py). This module decodes and annotates.
"""

import warnings
from collections import Counter
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import (
    Any,
    Callable,
    Dict,
    Iterable,
    Iterator,
    List,
    Optional,
    Sequence,
    Set,
    Tuple,
    Union,
)

import numpy
import srsly
from spacy import util
from spacy.language import Language
from spacy.pipeline import TrainablePipe
from spacy.pipeline.spancat import spancat_score
from spacy.tokens import Doc
from spacy.training import Example, validate_examples
from spacy.util import logger
from spacy.vocab import Vocab
from spacy_transformers.layers import TransformerListener
from spacy_transformers.pipeline_component import install_extensions
from thinc.api import Config, Model, set_dropout_rate

from .annotation import scored_span_group, trf_data, word_spans
from .checkpoint import check_saved_labels
from .decoding import (
    SentenceEntities,
    decode_sentence,
    decode_sentence_nested,
    label_thresholds,
)
from .isolation import run_isolated
from .listening import (
    defer_width,
    is_listener,
    restore_init,
    send_to_listeners,
    set_width,
    unanswered_wildcards,
)
from .packaging import record_requirements
from .runtime import BatchScores, LukeRuntime, get_runtime
from .scheduling import DocEntities, DocScores, ScoredSentence
from .settings import (
    Attention,
    BackendName,
    Context,
    DType,
    NerSettings,
    SettingsError,
    Threshold,
    config_defaults,
)
from .training import (
    Coverage,
    GoldDoc,
    check_labels,
    coverage,
    describe_entity_free,
    describe_unknown_labels,
    gold_doc,
    gold_entities,
    gold_spans,
    span_loss,
    span_targets,
)

# The settings' defaults come from NerSettings; the model's are those of
# `luke_spacy.LukeSpanClassifier.v1` (a test keeps the two equal).
DEFAULT_CONFIG_STR = (
    config_defaults("luke_ner")
    + """
[luke_ner.model]
@architectures = "luke_spacy.LukeSpanClassifier.v1"
name = "studio-ousia/luke-large-finetuned-conll-2003"
revision = "main"
mixed_precision = false

[luke_ner.scorer]
@scorers = "spacy.ner_scorer.v1"
"""
)
DEFAULT_CONFIG = Config().from_str(DEFAULT_CONFIG_STR)


@Language.factory(
    "luke_ner",
    # doc.spans with spans_key set (the default) or nested_spans_key, doc._.trf_data with
    # set_trf_data or listeners.
    assigns=["doc.ents", "token.ent_iob", "token.ent_type", "doc.spans", "doc._.trf_data"],
    default_config=DEFAULT_CONFIG["luke_ner"],
    default_score_weights={"ents_f": 1.0, "ents_p": 0.0, "ents_r": 0.0, "ents_per_type": None},
)
def make_luke_ner(
    nlp: Language,
    name: str,
    # A str only to say what shape is expected instead of a type error (see below).
    model: Union[Model, str],
    max_mention_length: int,
    max_entity_length: int,
    max_length: int,
    context: Context,
    max_batch_items: int,
    device: Optional[str],
    dtype: DType,
    attention: Attention,
    overwrite_ents: bool,
    threshold: Threshold,
    spans_key: Optional[str],
    set_trf_data: bool,
    temperature: float,
    nil_veto: bool,
    nested_spans_key: Optional[str],
    gold_spans_key: Optional[str],
    backend: BackendName,
    onnx_path: Optional[str],
    scorer: Optional[Callable],
) -> "LukeEntityRecognizer":
    """Construct a LUKE span-classification entity recognizer.

    model (Model): A `luke_spacy.LukeSpanClassifier.v1` model (checkpoint name and revision).
    scorer (Optional[Callable]): The scoring method.
    The other arguments are the settings documented on `luke_spacy.settings.NerSettings`.
    """
    if isinstance(model, str):
        raise ValueError(
            f"luke_ner: the model is a config section, not a string: write "
            f"config={{'model': {{'name': {model!r}}}}} (in a config file, "
            f'[components.{name}.model] name = "{model}").'
        )
    # The factory's own arguments, so spaCy validates each setting against its type.
    given = locals()
    values = {key: given[key] for key in NerSettings.__dataclass_fields__}
    try:
        settings = NerSettings(**values)
        return LukeEntityRecognizer(
            nlp.vocab, model, name, settings=settings, scorer=scorer, meta=nlp.meta
        )
    except SettingsError as err:
        # Values out of range are config errors, reported as spaCy reports wrong types.
        raise err.config_error(name, values) from None


def _check_gold_spans_key(examples: Sequence[Example], key: str) -> None:
    """Refuse training data with entities but none under `gold_spans_key`: a misspelled key
    would train every span as no-entity."""
    if any(key in eg.reference.spans for eg in examples):
        return
    if any(eg.reference.ents for eg in examples):
        groups = sorted({name for eg in examples for name in eg.reference.spans})
        raise ValueError(
            f"luke_ner: gold_spans_key = {key!r}, but no training Doc has doc.spans[{key!r}] "
            f"(their span groups: {groups}); give the key of the nested gold, or null to "
            "train from doc.ents."
        )


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
        meta: Optional[Dict[str, Any]] = None,
    ) -> None:
        """Initialize the component; reads nothing (the checkpoint loads on first use).

        vocab (Vocab): The shared vocabulary.
        model (Model): A `luke_spacy.LukeSpanClassifier.v1` model.
        name (str): The component instance name.
        settings (NerSettings): The component's settings (see `make_luke_ner`).
        scorer (Optional[Callable]): The scoring method.
        meta (Optional[Dict[str, Any]]): The pipeline's meta (`nlp.meta`): while the backend
            is onnxruntime, its requirements ask for luke-spacy[onnx], so that the package of
            a pipeline saved with that backend installs ONNX Runtime.
        """
        self.vocab = vocab
        self.model = model
        self.name = name
        self.scorer = scorer
        get_runtime(model).configure(settings)
        # What initialization or a saved pipeline taught, beyond the checkpoint.
        self._saved_labels: List[str] = []
        self._coverage: Optional[Dict[str, Any]] = None
        # Gold labels the component does not have that were reported (once each).
        self._unknown_labels: Set[str] = set()
        self.listener_map = {}
        if settings.set_trf_data:
            install_extensions()
        self._meta = meta
        self._record_backend_requirement()

    @property
    def runtime(self) -> LukeRuntime:
        """The model layer behind `self.model`: planning, batching, the checkpoint."""
        return get_runtime(self.model)

    @property
    def settings(self) -> NerSettings:
        """The component's settings (held by the runtime)."""
        return self.runtime.settings

    @property
    def cfg(self) -> Dict[str, Any]:
        """The serialized view: the settings, the labels and what initialization learned."""
        cfg: Dict[str, Any] = {**self.settings.to_dict(), "labels": self._label_names()}
        if self._coverage is not None:
            cfg["coverage"] = dict(self._coverage)
        return cfg

    @cfg.setter
    def cfg(self, cfg: Dict[str, Any]) -> None:
        # spaCy's tools write it (`spacy find-threshold`): the settings in it go to their one
        # holder, validated as at construction.
        current = self.settings.to_dict()
        self.runtime.configure(NerSettings(**{key: cfg.get(key, current[key]) for key in current}))
        self._restore_cfg(cfg)
        self._record_backend_requirement()

    def set_max_batch_items(self, max_batch_items: int) -> None:
        """Change the internal batch budget (padded word+span positions per forward batch).

        max_batch_items (int): The new budget, a positive integer.
        """
        self.runtime.configure(replace(self.settings, max_batch_items=max_batch_items))

    @property
    def labels(self) -> Tuple[str, ...]:
        """The entity labels (without the no-entity class): the checkpoint's once it is loaded
        (`initialize`, `from_disk`, or the first Doc), the saved ones before; else empty."""
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
        (also for pretrained-only LUKE checkpoints). Labels that cannot be rows of the head
        (duplicates, empty names, the no-entity class's name) are refused, and so is
        training data that is annotated for entities but has none, unless labels are given.
        Gold entities that can never be candidate spans, and those whose label is not one of
        the labels (they are trained as no entity), are counted and reported.

        get_examples (Optional[Callable[[], Iterable[Example]]]): The training data.
        nlp (Optional[Language]): The current nlp object.
        labels (Optional[Sequence[str]]): Entity labels, e.g. from
            `[initialize.components.luke_ner]`; read from the examples when None.
        """
        examples = list(get_examples()) if get_examples is not None else []
        key = self.settings.gold_spans_key
        if key is not None:
            _check_gold_spans_key(examples, key)
        gold = Counter(span.label_ for eg in examples for span in gold_spans(eg.reference, key))
        # spaCy's placeholder example (when there is no data) has no entity annotation.
        annotated = any(
            eg.reference.has_annotation("ENT_IOB")
            or (key is not None and key in eg.reference.spans)
            for eg in examples
        )
        given = labels is not None
        if labels is None and gold:
            labels = sorted(gold)
        elif labels is None and annotated:
            raise ValueError(describe_entity_free(len(examples)))
        if labels is not None:
            labels = check_labels(labels, gold, given=given)
        runtime = self.runtime
        with self._config_errors():
            runtime.load(labels=labels)
        if nlp is not None:
            # `spacy package` takes the requirements from the meta: mLUKE needs sentencepiece.
            record_requirements(
                nlp.meta,
                [type(runtime.tokenizer).__name__],
                extras=["onnx"] if self.settings.backend == "onnxruntime" else [],
            )
        self._initialize_listeners(nlp)
        self._unknown_labels = set()
        if labels is None or not annotated:
            return
        if not gold:
            warnings.warn(
                f"luke_ner: the training data has no entities, so training on it teaches the "
                f"model to predict none of {labels}.",
                stacklevel=2,
            )
        report = Coverage()
        known = set(self.labels)
        for eg in examples:
            gold_example = gold_doc(eg, runtime.sentences, key)
            lengths = [len(ids) for ids in runtime.word_ids(gold_example.doc)]
            coverage(gold_example, lengths, self.settings.max_mention_length, report, known)
        self._coverage = report.to_dict()
        # Labels reported here are not reported again by `update`.
        self._unknown_labels = set(report.unknown)
        if report.n_lost or report.unknown:
            warnings.warn(f"luke_ner: {report.describe()}", stacklevel=2)
        else:
            logger.info("luke_ner: %s", report.describe())

    def predict(self, docs: Iterable[Doc]) -> List[DocEntities]:
        """Score the candidate spans of each Doc and decode them, without modifying the Docs.

        Each sentence is decoded as soon as its passes have run, so memory does not grow
        with the length of a Doc. Entities already on a Doc keep their words free unless
        `overwrite_ents` is set; in the nested decoding (`nested_spans_key`), they count as
        accepted spans: no entity crosses one or repeats its span, entities inside and
        around them are found.

        docs (Iterable[Doc]): The documents to predict.
        RETURNS (List[DocEntities]): The entities of each Doc (and their nested entities).
        """
        docs = list(docs)
        settings = self.settings
        preset = [() if settings.overwrite_ents else doc.ents for doc in docs]
        taken = [{i for e in ents for i in range(e.start, e.end)} for ents in preset]
        fixed = [[(e.start, e.end) for e in ents] for ents in preset]
        rule: Dict[str, Any] = {}
        nested = settings.nested_spans_key is not None
        found: List[List[SentenceEntities]] = [[] for _ in docs]
        found_nested: List[List[SentenceEntities]] = [[] for _ in docs]
        keep_states = self.runtime.keeps_word_states
        states: Dict[int, numpy.ndarray] = {}
        for item in self.model.predict(docs):
            if not isinstance(item, ScoredSentence):  # DocStates: set_trf_data or listeners
                states[item.doc] = item.states
                continue
            if not rule:  # the checkpoint is loaded now, with its labels
                rule = self._decoding_rule()
            d = item.doc
            found[d].append(decode_sentence(item.spans, item.logits, taken=taken[d], **rule))
            if nested:
                found_nested[d].append(
                    decode_sentence_nested(item.spans, item.logits, fixed=fixed[d], **rule)
                )
        return [
            DocEntities.from_parts(
                parts,
                self._trf_data(doc, states.get(d)) if keep_states else None,
                nested=DocEntities.from_parts(found_nested[d]) if nested else None,
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
        for item in self.model.predict(docs):
            if isinstance(item, ScoredSentence):
                parts[item.doc].append(item)
        n_labels = len(self._label_names())
        return [DocScores.from_sentences(doc_parts, n_labels) for doc_parts in parts]

    def set_annotations(self, docs: Iterable[Doc], predictions: Sequence[DocEntities]) -> None:
        """Write the predicted entities to `doc.ents` (and `doc.spans[spans_key]`), and the
        nested ones to `doc.spans[nested_spans_key]`.

        Entities kept from before (`overwrite_ents = false`) keep their scored spans from an
        earlier run of this component in both groups, so running it twice loses no scores.

        docs (Iterable[Doc]): The documents to modify.
        predictions (Sequence[DocEntities]): The output of `predict`.
        """
        names = self._label_names()
        key = self.settings.spans_key
        nested_key = self.settings.nested_spans_key
        for doc, pred in zip(docs, predictions):
            kept = () if self.settings.overwrite_ents else doc.ents
            new = word_spans(doc, pred.spans, [names[i] for i in pred.labels.tolist()])
            doc.ents = sorted(kept + new, key=lambda span: span.start)
            if key is not None:
                doc.spans[key] = scored_span_group(doc, key, kept, new, pred.scores)
            if nested_key is not None and pred.nested is not None:
                inner = pred.nested
                found = word_spans(doc, inner.spans, [names[i] for i in inner.labels.tolist()])
                doc.spans[nested_key] = scored_span_group(
                    doc, nested_key, kept, found, inner.scores
                )
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

        def annotate(docs: Sequence[Doc]) -> Sequence[Doc]:
            self.set_annotations(docs, self.predict(docs))
            return docs

        def handle(doc: Doc, err: Exception) -> None:
            error_handler(self.name, self, [doc], err)

        for docs in util.minibatch(stream, size=batch_size):
            for doc in run_isolated(docs, annotate, on_error=handle):
                if doc is not None:
                    yield doc

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
        cross-entropy averaged over all candidate spans of the examples. Gold labels the
        component does not have are trained as no entity, with a warning once per label.

        Listening components get each Doc's word states (as inference computes them); their
        gradients come back through `LukeRuntime.backprop_word_states`, and with `sgd` the
        optimizer steps once they are in (as spacy-transformers' `Transformer` does).

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
        set_dropout_rate(self.model, drop)
        listening = bool(self.listeners)
        if listening:
            # The optimizer then steps once the listeners' gradients are in, not here.
            self._send_to_listeners(examples, sgd)
        runtime = self.runtime
        key = self.settings.gold_spans_key
        golds = [gold_doc(eg, runtime.sentences, key) for eg in examples]
        self._report_unknown_labels(golds)
        for batch in runtime.update_batches([g.doc for g in golds], [g.sentences for g in golds]):
            scores, backprop = self.model.begin_update(batch)
            loss, d_scores = self.get_loss(examples, scores)
            backprop(d_scores)
            losses[self.name] += loss
        if sgd not in (None, False) and not listening:
            self.finish_update(sgd)
        return losses

    def get_loss(
        self, examples: Sequence[Example], scores: BatchScores
    ) -> Tuple[float, numpy.ndarray]:
        """The recipe's loss of one forward batch of an update, and its gradient.

        Each candidate span's target is its gold label (from `doc.ents`, or with
        `gold_spans_key` from that span group, nested or not), or the no-entity class when it
        is no gold entity; the loss is the cross-entropy summed over the batch's spans and
        divided by the number of spans in the whole update (`scores.batch.n_spans`).

        examples (Sequence[Example]): The examples of the update (`Pass.doc` indexes them).
        scores (BatchScores): What `self.model.begin_update` returned for the batch.
        RETURNS (Tuple[float, numpy.ndarray]): The loss and d_logits (shaped as the logits).
        """
        passes = scores.batch.passes
        key = self.settings.gold_spans_key
        entities = {d: gold_entities(examples[d], key).entities for d in {p.doc for p in passes}}
        targets = span_targets(
            [p.spans for p in passes],
            [entities[p.doc] for p in passes],
            self._label_ids(),
            scores.logits.shape[1],
        )
        return span_loss(scores.logits, targets, scores.batch.n_spans)

    def score(self, examples: Iterable[Example], **kwargs: Any) -> Dict[str, Any]:
        """Score a batch of examples: the scorer's scores (`ents_*` by default) and, with
        `nested_spans_key`, `spans_<key>_p/r/f` and `spans_<key>_per_type` of the nested
        group against the reference Docs' group of the same key, overlap allowed (spancat's
        scorer).

        examples (Iterable[Example]): The examples to score.
        RETURNS (Dict[str, Any]): The scores.
        """
        examples = list(examples)
        scores = super().score(examples, **kwargs)
        key = self.settings.nested_spans_key
        if key is not None:
            scores.update(spancat_score(examples, spans_key=key))
        return scores

    def add_label(self, label: str) -> int:
        raise NotImplementedError(
            "luke_ner takes its labels from the checkpoint's config.id2label, or for "
            "training from the data or [initialize.components.luke_ner] labels."
        )

    def to_bytes(self, *, exclude: Iterable[str] = tuple()) -> bytes:
        """Serialize the component, weights and tokenizer included."""
        serialize = {
            "cfg": lambda: srsly.json_dumps(self.cfg),
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
        with self._config_errors():
            util.from_bytes(bytes_data, deserialize, exclude)
        self._record_backend_requirement()  # the meta read before the components lacks it
        return self

    def to_disk(self, path: Union[str, Path], *, exclude: Iterable[str] = tuple()) -> None:
        """Save the component: cfg, and a Hugging Face folder (safetensors, tokenizer)."""
        serialize = {
            "cfg": lambda p: srsly.write_json(p, self.cfg),
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
        with self._config_errors():
            util.from_disk(path, deserialize, exclude)
        self._record_backend_requirement()  # the meta read before the components lacks it
        return self

    @contextmanager
    def _config_errors(self) -> Iterator[None]:
        """Settings that the loaded checkpoint's labels refuse (`decoding_problems`), told as
        spaCy's config error, as the factory tells the others."""
        try:
            yield
        except SettingsError as err:
            raise err.config_error(self.name, self.settings.to_dict()) from None

    def _record_backend_requirement(self) -> None:
        """Ask for luke-spacy[onnx] in the pipeline's meta while the backend needs it: saving
        never calls `initialize` (e.g. `spacy.load(..., config=...onnxruntime).to_disk()`)."""
        if self._meta is not None and self.settings.backend == "onnxruntime":
            record_requirements(self._meta, [], extras=["onnx"])

    def _label_names(self) -> List[str]:
        """All labels in id order (0 is no-entity): the checkpoint's once it is loaded."""
        runtime = self.runtime
        return runtime.labels if runtime.is_loaded else list(self._saved_labels)

    def _report_unknown_labels(self, golds: Sequence[GoldDoc]) -> None:
        """Warn once per gold label that the component does not have (`get_loss` trains
        such entities as no entity), with its count in this update."""
        known = set(self.runtime.labels[1:])  # loads the checkpoint on first use
        unknown = Counter(
            label
            for gold in golds
            for label in gold.entities.values()
            if label not in known and label not in self._unknown_labels
        )
        if unknown:
            self._unknown_labels.update(unknown)
            warnings.warn(f"luke_ner: {describe_unknown_labels(unknown)}", stacklevel=3)

    def _label_ids(self) -> Dict[str, int]:
        return {label: i for i, label in enumerate(self._label_names())}

    def _restore_cfg(self, saved: Dict[str, Any]) -> None:
        # Settings come from the pipeline config (so load-time overrides apply); only what
        # initialization learned is restored.
        self._saved_labels = list(saved.get("labels") or [])
        if "coverage" in saved:
            self._coverage = dict(saved["coverage"])

    def _decoding_rule(self) -> Dict[str, Any]:
        """The decoding settings, with a threshold table as one threshold per label id."""
        settings = self.settings
        return {
            "threshold": label_thresholds(settings.threshold, self._label_names()),
            "temperature": settings.temperature,
            "nil_veto": settings.nil_veto,
        }

    def _trf_data(self, doc: Doc, states: Optional[numpy.ndarray]) -> Any:
        runtime = self.runtime
        return trf_data(
            runtime.word_ids(doc),
            states,
            runtime.tokenizer,
            runtime.hidden_size,
            xp=self.model.ops.xp,
        )

    # -- listeners: components whose tok2vec is spacy-transformers' TransformerListener ------

    @property
    def listener_map(self) -> Dict[str, List[TransformerListener]]:
        """The listeners of each listening component (`upstream` naming this component)."""
        return self._listener_map

    @listener_map.setter
    def listener_map(self, listener_map: Dict[str, List[TransformerListener]]) -> None:
        # spaCy resets it before linking the pipeline's components again.
        self._listener_map = listener_map
        self.runtime.listened = bool(listener_map)

    @property
    def listeners(self) -> List[TransformerListener]:
        """The listener layers listening to this component. Usually internals."""
        return [m for c in self.listening_components for m in self.listener_map[c]]

    @property
    def listening_components(self) -> List[str]:
        """The downstream components listening to this component. Usually internals."""
        return list(self.listener_map.keys())

    def add_listener(self, listener: TransformerListener, component_name: str) -> None:
        """Add a listener for a downstream component: it gets LUKE's word states (so from
        now on inference keeps them in `doc._.trf_data`), and their width. Usually internals.
        """
        self.listener_map.setdefault(component_name, [])
        if listener not in self.listener_map[component_name]:
            self.listener_map[component_name].append(listener)
        self.runtime.listened = True
        install_extensions()
        if self.runtime.is_loaded:
            set_width(listener, self.runtime.hidden_size)
        else:
            # Linking reads nothing: the width comes when the listener is initialized.
            defer_width(listener, self.runtime)

    def remove_listener(self, listener: TransformerListener, component_name: str) -> bool:
        """Remove a listener for a downstream component. Usually internals."""
        listeners = self.listener_map.get(component_name, [])
        if listener not in listeners:
            return False
        listeners.remove(listener)
        if not listeners:
            del self.listener_map[component_name]
        restore_init(listener)
        self.runtime.listened = bool(self.listener_map)
        return True

    def find_listeners(self, component: Any) -> None:
        """Add the listeners in a component's model whose `upstream` is this component's
        name (`"*"` is spacy-transformers' wildcard for its `transformer`, not answered here).
        """
        if isinstance(getattr(component, "model", None), Model):
            for node in component.model.walk():
                if is_listener(node, self.name):
                    self.add_listener(node, component.name)

    def _initialize_listeners(self, nlp: Optional[Language]) -> None:
        """Find the listeners of the components after this one and give them their width;
        refuse listeners that nothing would answer (`upstream = "*"` without a spacy-transformers
        `transformer`)."""
        if nlp is not None and self.name in nlp.pipe_names:
            names = nlp.pipe_names
            later = [nlp.get_pipe(n) for n in names[names.index(self.name) + 1 :]]
            for component in later:
                self.find_listeners(component)
            answered = [
                node for _, pipe in nlp.components for node in getattr(pipe, "listeners", [])
            ]
            unanswered = unanswered_wildcards(later, answered)
            if unanswered:
                raise ValueError(
                    f"luke_ner: {', '.join(map(repr, unanswered))} listen with upstream = "
                    f'"*", which answers a spacy-transformers transformer component, and '
                    f"the pipeline has none. To listen to luke_ner, set upstream = "
                    f'"{self.name}" in the listener\'s section (e.g. '
                    f"[components.{unanswered[0]}.model.tok2vec])."
                )
        for listener in self.listeners:
            set_width(listener, self.runtime.hidden_size)

    def _send_to_listeners(self, examples: Sequence[Example], sgd: Any) -> None:
        """Give the listeners each Doc's word states (as inference computes them) and take
        their gradients back into LUKE (see `LukeRuntime.backprop_word_states`); with `sgd`,
        step the optimizer then, as spacy-transformers' Transformer does."""
        docs = [eg.predicted for eg in examples]
        runtime = self.runtime
        states = runtime.word_states(docs)
        outputs = [self._trf_data(doc, doc_states) for doc, doc_states in zip(docs, states)]
        ops = self.model.ops

        def backprop_states(d_states: List[Optional[numpy.ndarray]]) -> None:
            grads = [None if d is None else ops.to_numpy(d) for d in d_states]
            # A listener with grad_factor = 0 sends zeros: nothing to run again.
            if any(d is not None and d.any() for d in grads):
                runtime.backprop_word_states(docs, grads)
            if sgd not in (None, False):
                self.finish_update(sgd)

        has_states = [doc_states is not None for doc_states in states]
        send_to_listeners(self.listeners, docs, outputs, has_states, backprop_states)
