"""The model layer (`runtime.LukeRuntime`) and its backend seam, with a backend that has no
network at all: the component runs on any object with the `backend.Backend` interface."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any, Dict, List

import numpy
import pytest
import spacy
from spacy.tokens import Doc, Span
from spacy.training import Example

from luke_spacy import LukeEntityRecognizer, NerSettings, NotLoadedError
from luke_spacy.runtime import SpanBatch, build_span_model

LABELS = {0: "NIL", 1: "CAP"}


class WordPerSubwordTokenizer:
    """Each word is one subword; ids are given in order of first appearance."""

    cls_token_id, sep_token_id, pad_token_id = 0, 2, 1
    entity_vocab = {"[PAD]": 0, "[UNK]": 1, "[MASK]": 2}

    def __init__(self) -> None:
        self.vocab: Dict[str, int] = {}
        self.words: Dict[int, str] = {}

    def tokenize(self, word: str) -> List[str]:
        return [word]

    def convert_tokens_to_ids(self, tokens: List[str]) -> List[int]:
        for token in tokens:
            if token not in self.vocab:
                self.vocab[token] = len(self.vocab) + 10
                self.words[self.vocab[token]] = token
        return [self.vocab[token] for token in tokens]

    def convert_ids_to_tokens(self, ids: List[int]) -> List[str]:
        return [self.words[i] for i in ids]


class CapitalsBackend:
    """Scores one-word spans of capitalized words as CAP, everything else as NIL; word
    states are (subword id, window position). Records what the runtime hands it."""

    def __init__(self, model: Any, *, max_position_embeddings: int = 514) -> None:
        self.model = model
        self.loaded = False
        self.settings: List[NerSettings] = []
        self.batches: List[Dict[str, numpy.ndarray]] = []
        self.updates: List[Dict[str, Any]] = []
        self._tokenizer = WordPerSubwordTokenizer()
        self._config = SimpleNamespace(
            id2label=LABELS,
            hidden_size=2,
            max_position_embeddings=max_position_embeddings,
            pad_token_id=1,
        )

    @property
    def is_loaded(self) -> bool:
        return self.loaded

    @property
    def tokenizer(self) -> Any:
        self.loaded = True
        return self._tokenizer

    @property
    def config(self) -> Any:
        self.loaded = True
        return self._config

    def configure(self, settings: NerSettings) -> None:
        if settings.device not in (None, "cpu"):
            raise ValueError(f"this backend has no device {settings.device!r}")
        self.settings.append(settings)

    def load(self, labels=None) -> None:
        self.loaded = True

    def load_local(self, path) -> None:
        assert (Path(path) / "weights.txt").read_text() == "capitals"
        self.loaded = True

    def save(self, path) -> None:
        Path(path).mkdir(parents=True, exist_ok=True)
        (Path(path) / "weights.txt").write_text("capitals")

    def to_bytes(self) -> bytes:
        return b"capitals"

    def from_bytes(self, data: bytes) -> None:
        assert data == b"capitals"
        self.loaded = True

    def predict(self, inputs, want_words):
        self.batches.append(inputs)
        ids = inputs["input_ids"]
        starts, ends = inputs["entity_start_positions"], inputs["entity_end_positions"]
        first = numpy.take_along_axis(ids, starts, axis=1)
        capital = numpy.vectorize(lambda i: self._tokenizer.words.get(int(i), "x")[:1].isupper())
        cap = (starts == ends) & capital(first) & (inputs["entity_attention_mask"] == 1)
        logits = numpy.zeros(starts.shape + (2,), "f")
        logits[..., 1] = numpy.where(cap, 2.0, -2.0)
        words = None
        if want_words:
            positions = numpy.broadcast_to(numpy.arange(ids.shape[1]), ids.shape)
            words = numpy.stack([ids, positions], axis=-1).astype("f")
        return logits, words

    def begin_update(self, inputs, drop):
        logits, _ = self.predict(inputs, False)
        update: Dict[str, Any] = {"inputs": inputs, "drop": drop, "logits": logits}
        self.updates.append(update)

        def backprop(d_logits):
            update["d_logits"] = d_logits

        return logits, backprop


def capitals_model(**backend_args) -> Any:
    return build_span_model(
        lambda model: CapitalsBackend(model, **backend_args),
        attrs={"name": "capitals", "revision": "main"},
    )


def component(model=None, **settings) -> LukeEntityRecognizer:
    nlp = spacy.blank("en")
    return LukeEntityRecognizer(
        nlp.vocab, model or capitals_model(), "luke_ner", settings=NerSettings(**settings)
    )


TEXTS = [
    "Peter met Mary in Paris . They went home .",
    "",
    "nothing here at all",
    "Berlin and Rome , Oslo !",
]


def test_the_component_runs_on_any_backend():
    ner = component(max_batch_items=64)
    nlp = spacy.blank("en")
    docs = list(ner.pipe(nlp.make_doc(t) for t in TEXTS))
    capitalized = [[t.text for t in doc if t.text[:1].isupper()] for doc in docs]
    assert [[e.text for e in doc.ents] for doc in docs] == capitalized
    assert {e.label_ for doc in docs for e in doc.ents} == {"CAP"}
    # each entity's score is its label's softmax probability
    scores = numpy.concatenate([doc.spans["luke_ner"].attrs["scores"] for doc in docs])
    numpy.testing.assert_allclose(scores, 1 / (1 + numpy.exp(-2.0)), rtol=1e-6)
    backend = ner.runtime.backend
    assert backend.settings[-1] == ner.settings
    for inputs in backend.batches:
        rows, words = inputs["input_ids"].shape
        assert rows * (words + inputs["entity_ids"].shape[1]) <= 64 or rows == 1
        assert {a.dtype for a in inputs.values()} == {numpy.dtype("int64")}


def test_predict_takes_docs_and_streams_scored_sentences():
    ner = component()
    nlp = spacy.blank("en")
    doc = nlp.make_doc(TEXTS[0])
    items = list(ner.model.predict([doc]))
    assert [(item.doc, item.spans[:, 0].min(), item.spans[:, 1].max()) for item in items] == [
        (0, 0, 6),
        (0, 6, 10),
    ]
    assert ner.runtime.sentences(doc) == [(0, 6), (6, 10)]
    assert sum(len(item.spans) for item in items) == sum(
        len(p.spans) for p in ner.runtime.plan([doc])
    )
    with pytest.raises(ValueError, match="SpanBatch"):
        ner.model.begin_update([doc])


def test_word_states_reach_trf_data():
    ner = component(set_trf_data=True)
    nlp = spacy.blank("en")
    doc = next(ner.pipe([nlp.make_doc(TEXTS[0])]))
    states = doc._.trf_data.model_output.last_hidden_state[0]
    assert states[:, 0].tolist() == [i for ids in ner.runtime.word_ids(doc) for i in ids]
    assert doc._.trf_data.wordpieces.strings == [[t.text for t in doc]]


def test_update_runs_begin_update_and_get_loss_per_forward_batch():
    ner = component(max_batch_items=40, max_entity_length=3)
    nlp = spacy.blank("en")
    examples = []
    for text in TEXTS:
        ref = nlp.make_doc(text)
        ref.ents = [Span(ref, t.i, t.i + 1, label="CAP") for t in ref if t.text.istitle()]
        examples.append(Example(nlp.make_doc(text), ref))
    ner.initialize(lambda: examples)
    assert ner.labels == ("CAP",)
    losses = ner.update(examples, drop=0.3)
    updates = ner.runtime.backend.updates
    assert len(updates) > 1 and {u["drop"] for u in updates} == {0.3}
    assert ner.model.attrs["dropout_rate"] == 0.3
    n_spans = sum(int(u["inputs"]["entity_attention_mask"].sum()) for u in updates)
    total = 0.0
    for u in updates:
        assert u["d_logits"].shape == u["logits"].shape
        # padding gets no gradient; the gradient sums to zero over the labels of a span
        mask = u["inputs"]["entity_attention_mask"] == 0
        assert not u["d_logits"][mask].any()
        numpy.testing.assert_allclose(u["d_logits"].sum(axis=-1), 0, atol=1e-7)
        # the backend agrees with the gold labels, by a margin of 2 on every span
        total -= numpy.log(1 / (1 + numpy.exp(-2.0))) * int((~mask).sum())
    assert losses["luke_ner"] == pytest.approx(total / n_spans, rel=1e-5)
    batches = ner.runtime.update_batches([eg.predicted for eg in examples], [
        ner.runtime.sentences(eg.predicted) for eg in examples
    ])
    assert all(isinstance(b, SpanBatch) and b.n_spans == n_spans for b in batches)


def test_one_method_changes_the_batch_budget():
    ner = component(max_batch_items=4096)
    backend = ner.runtime.backend
    nlp = spacy.blank("en")
    ner.set_max_batch_items(30)
    assert ner.settings.max_batch_items == ner.cfg["max_batch_items"] == 30
    assert backend.settings[-1].max_batch_items == 30
    list(ner.pipe([nlp.make_doc(TEXTS[0] * 3)]))
    for inputs in backend.batches:
        rows, words = inputs["input_ids"].shape
        assert rows * (words + inputs["entity_ids"].shape[1]) <= 30 or rows == 1
    with pytest.raises(ValueError, match="max_batch_items"):
        ner.set_max_batch_items(0)
    assert ner.settings.max_batch_items == 30


def test_the_backend_checks_the_settings_it_runs():
    with pytest.raises(ValueError, match="no device 'cuda:3'"):
        component(device="cuda:3")


def test_max_length_is_checked_against_the_loaded_checkpoint():
    ner = component(capitals_model(max_position_embeddings=40), max_length=40)
    with pytest.raises(ValueError, match="max_position_embeddings = 40 allows at most 36"):
        list(ner.pipe([spacy.blank("en").make_doc("Paris")]))


def test_serialization_goes_through_the_backend(tmp_path):
    ner = component()
    with pytest.raises(NotLoadedError):
        ner.to_disk(tmp_path / "unloaded")
    nlp = spacy.blank("en")
    list(ner.pipe([nlp.make_doc("Paris")]))
    ner.to_disk(tmp_path / "ner")
    assert (tmp_path / "ner" / "model" / "weights.txt").is_file()
    fresh = component()
    fresh.from_disk(tmp_path / "ner")
    assert fresh.runtime.is_loaded and fresh.labels == ("CAP",)
    assert component().from_bytes(ner.to_bytes()).labels == ("CAP",)


def test_predict_accepts_a_doc_list_built_anywhere():
    ner = component()
    doc = Doc(spacy.blank("en").vocab, words=["Paris", "is", "big"])
    (pred,) = ner.predict([doc])
    assert pred.spans.tolist() == [[0, 1]] and pred.labels.tolist() == [1]
