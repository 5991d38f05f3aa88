"""Components listening to luke_ner's word states (spacy-transformers' TransformerListener)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy
import pytest
import spacy
import torch
from conftest import make_nlp
from spacy.tokens import Doc, DocBin
from spacy.training import Example
from thinc.api import Adam

from luke_spacy.listening import WidthOnInit
from luke_spacy.model import get_scorer

TAGGED = [
    ("Alice lives in Paris .", "PROPN VERB ADP PROPN PUNCT", "B-PER O O B-LOC O"),
    ("Bob works at Acme .", "PROPN VERB ADP PROPN PUNCT", "B-PER O O B-ORG O"),
    ("The cat sleeps .", "DET NOUN VERB PUNCT", "O O O O"),
    ("Alice met Bob in Paris .", "PROPN VERB PROPN ADP PROPN PUNCT", "B-PER O B-PER O B-LOC O"),
]


def listening(name: str, grad_factor: float = 1.0, upstream: str = "luke_ner") -> dict:
    """The config of a component whose tok2vec listens to luke_ner."""
    tok2vec = {
        "@architectures": "spacy-transformers.TransformerListener.v1",
        "grad_factor": grad_factor,
        "upstream": upstream,
        "pooling": {"@layers": "reduce_mean.v1"},
    }
    if name == "tagger":
        return {"model": {"@architectures": "spacy.Tagger.v2", "nO": None, "tok2vec": tok2vec}}
    return {
        "model": {
            "@architectures": "spacy.TextCatReduce.v1",
            "exclusive_classes": True,
            "use_reduce_first": False,
            "use_reduce_last": False,
            "use_reduce_max": False,
            "use_reduce_mean": True,
            "nO": None,
            "tok2vec": tok2vec,
        }
    }


def tagged_docs(vocab):
    docs = []
    for text, tags, ents in TAGGED:
        words = text.split()
        starts = [1] + [0] * (len(words) - 1)
        docs.append(
            Doc(vocab, words=words, tags=tags.split(), ents=ents.split(), sent_starts=starts)
        )
    return docs


def tagged_examples(nlp):
    return [Example(nlp.make_doc(doc.text), doc) for doc in tagged_docs(nlp.vocab)]


def tag_accuracy(nlp, docs):
    right = total = 0
    for gold, doc in zip(docs, nlp.pipe(d.text for d in docs)):
        right += sum(a.tag_ == b.tag_ for a, b in zip(gold, doc))
        total += len(doc)
    return right / total


def test_the_component_is_listened_to_as_spacy_transformers_is(tiny_luke):
    """The ListenedToComponent API, so spaCy links listeners to luke_ner."""
    from spacy import ty

    nlp = make_nlp(tiny_luke)
    ner = nlp.get_pipe("luke_ner")
    assert isinstance(ner, ty.ListenedToComponent)
    tagger = nlp.add_pipe("tagger", config=listening("tagger"))
    assert ner.listening_components == ["tagger"]
    [listener] = ner.listeners
    assert listener is tagger.model.get_ref("tok2vec").layers[0]
    # Linking read nothing: the width waits for the listener's initialization.
    assert not ner.runtime.is_loaded and isinstance(listener.init, WidthOnInit)
    assert ner.remove_listener(listener, "tagger") and ner.listeners == []
    assert not isinstance(listener.init, WidthOnInit)
    assert not ner.remove_listener(listener, "tagger")
    nlp._link_components()
    assert ner.listeners == [listener]


def test_a_listener_of_another_width_is_refused(tiny_luke):
    nlp = make_nlp(tiny_luke)
    tagger = nlp.add_pipe("tagger", config=listening("tagger"))
    listener = tagger.model.get_ref("tok2vec").layers[0]
    listener.set_dim("nO", 7)
    with pytest.raises(ValueError, match="a listener of width 7 cannot listen to this checkpoint"):
        nlp.initialize(lambda: tagged_examples(nlp))


def test_a_tagger_trains_on_luke_ner_and_runs_after_loading(tiny_luke, tmp_path):
    """Width set at initialize, outputs and gradients passed in update, doc._.trf_data at
    inference (without set_trf_data), and the same tags from the saved pipeline (#23 item 1)."""
    torch.manual_seed(0)
    nlp = make_nlp(tiny_luke)
    nlp.add_pipe("tagger", config=listening("tagger"))
    examples = tagged_examples(nlp)
    nlp.initialize(lambda: examples)
    width = json.loads((tiny_luke / "config.json").read_text())["hidden_size"]
    [listener] = nlp.get_pipe("luke_ner").listeners
    assert listener.get_dim("nO") == width
    optimizer = Adam(0.01)
    losses = [nlp.update(examples, sgd=optimizer)["tagger"] for _ in range(25)]
    assert losses[-1] < losses[0] / 3
    gold = tagged_docs(nlp.vocab)
    assert tag_accuracy(nlp, gold) >= 0.9
    doc = nlp("Alice lives in Paris .")
    assert doc._.trf_data.model_output.last_hidden_state.shape[-1] == width
    nlp.to_disk(tmp_path / "pipeline")
    loaded = spacy.load(tmp_path / "pipeline")
    texts = [d.text for d in gold] + ["Bob sleeps in Acme ."]
    for a, b in zip(nlp.pipe(texts), loaded.pipe(texts)):
        assert [t.tag_ for t in a] == [t.tag_ for t in b]
        assert [(e.start, e.end, e.label_) for e in a.ents] == [
            (e.start, e.end, e.label_) for e in b.ents
        ]


def test_a_textcat_listens_too(tiny_luke):
    nlp = make_nlp(tiny_luke)
    textcat = nlp.add_pipe("textcat", config=listening("textcat", grad_factor=0.0))
    examples = tagged_examples(nlp)
    for eg in examples:
        eg.reference.cats = {"PEOPLE": float("Alice" in eg.reference.text), "OTHER": 0.0}
        eg.reference.cats["OTHER"] = 1.0 - eg.reference.cats["PEOPLE"]
    nlp.initialize(lambda: examples)
    optimizer = Adam(0.01)
    losses = [nlp.update(examples, sgd=optimizer)["textcat"] for _ in range(15)]
    assert losses[-1] < losses[0]
    assert set(nlp("Alice sleeps .").cats) == set(textcat.labels)


@pytest.mark.parametrize("grad_factor", [0.0, 1.0])
def test_listener_gradients_go_back_into_luke_unless_grad_factor_is_0(
    tiny_luke, monkeypatch, grad_factor
):
    nlp = make_nlp(tiny_luke)
    nlp.add_pipe("tagger", config=listening("tagger", grad_factor=grad_factor))
    examples = tagged_examples(nlp)
    nlp.initialize(lambda: examples)
    runtime = nlp.get_pipe("luke_ner").runtime
    calls = []
    backprop = runtime.backprop_word_states
    monkeypatch.setattr(
        runtime, "backprop_word_states", lambda *a: (calls.append(a), backprop(*a))
    )
    optimizer = Adam(0.01)
    for _ in range(3):  # the tagger's output layer starts at zero: no gradient at first
        nlp.update(examples, sgd=optimizer)
    assert bool(calls) == (grad_factor > 0)


def test_listener_gradient_is_the_word_states_gradient(tiny_luke):
    """`backprop_word_states` gives the exact gradient of the states that `word_states`
    computed, across windows and chunks: a directional derivative in float64."""
    nlp = make_nlp(
        tiny_luke, attention="eager", max_length=12, max_mention_length=4, max_entity_length=6
    )
    nlp.initialize()
    runtime = nlp.get_pipe("luke_ner").runtime
    scorer = get_scorer(nlp.get_pipe("luke_ner").model).double()
    docs = [
        nlp.make_doc("Alice met Bob in Paris and they went to Acme in Berlin ."),
        nlp.make_doc("   "),
        nlp.make_doc("The cat sleeps ."),
    ]
    passes = runtime.plan(docs)
    windows = {(p.doc, p.window) for p in passes}
    assert len({window for doc, window in windows if doc == 0}) > 1  # several windows...
    assert len(passes) > len(windows)  # ...and several chunks of a window
    states = runtime.word_states(docs)
    assert states[1] is None
    rng = numpy.random.default_rng(0)
    weights = [None if s is None else rng.normal(size=s.shape) for s in states]

    def objective() -> float:
        return sum(
            float((s.astype("d") * w).sum())
            for s, w in zip(runtime.word_states(docs), weights)
            if s is not None
        )

    params = [p for p in scorer.parameters() if p.requires_grad]
    for p in params:
        p.grad = None
    runtime.backprop_word_states(docs, [None if w is None else w.astype("f") for w in weights])
    torch.manual_seed(0)
    direction = [torch.randn_like(p) for p in params]
    analytic = sum(
        float((p.grad * v).sum()) for p, v in zip(params, direction) if p.grad is not None
    )
    # Small enough for the central difference to be near linear, large enough for the
    # states' float32 rounding not to matter.
    eps = 1e-4
    with torch.no_grad():
        for p, v in zip(params, direction):
            p.add_(eps * v)
        plus = objective()
        for p, v in zip(params, direction):
            p.sub_(2 * eps * v)
        minus = objective()
        for p, v in zip(params, direction):
            p.add_(eps * v)
    numeric = (plus - minus) / (2 * eps)
    assert abs(analytic) > 1e-3
    assert numeric == pytest.approx(analytic, rel=1e-3)


def test_a_frozen_annotating_luke_ner_feeds_a_tagger(tiny_luke):
    """luke_ner frozen (never initialized, its checkpoint not yet read) and annotating: the
    tagger's listener gets its width when the tagger is initialized, then reads
    doc._.trf_data in training."""
    nlp = make_nlp(tiny_luke)
    nlp.add_pipe("tagger", config=listening("tagger"))
    ner = nlp.get_pipe("luke_ner")
    assert not ner.runtime.is_loaded
    examples = tagged_examples(nlp)
    with nlp.select_pipes(disable=["luke_ner"]):
        nlp.initialize(lambda: examples)
    optimizer = Adam(0.01)
    losses = [
        nlp.update(examples, sgd=optimizer, exclude=["luke_ner"], annotates=["luke_ner"])["tagger"]
        for _ in range(20)
    ]
    assert losses[-1] < losses[0] / 3
    assert "luke_ner" not in losses
    assert tag_accuracy(nlp, tagged_docs(nlp.vocab)) >= 0.9


def test_a_wildcard_listener_is_refused_at_initialize(tiny_luke):
    nlp = make_nlp(tiny_luke)
    nlp.add_pipe("tagger", config=listening("tagger", upstream="*"))
    message = r"'tagger' listen with upstream = \"\*\".*set upstream = \"luke_ner\""
    with pytest.raises(ValueError, match=message):
        nlp.initialize(lambda: tagged_examples(nlp))


def test_replacing_a_listener_with_luke_ner_is_refused(tiny_luke):
    nlp = make_nlp(tiny_luke)
    nlp.add_pipe("tagger", config=listening("tagger"))
    with pytest.raises(ValueError, match="cannot replace a listener"):
        nlp.replace_listeners("luke_ner", "tagger", ["model.tok2vec"])


@pytest.mark.slow
def test_spacy_train_with_a_frozen_annotating_luke_ner_and_a_listening_tagger(tiny_luke, tmp_path):
    """`spacy train` as a user runs it: luke_ner frozen and annotating (built from the
    checkpoint, not initialized), a tagger listening to it; then spacy.load."""
    config = tmp_path / "config.cfg"
    config.write_text(
        f"""
[paths]
train = null
dev = null

[nlp]
lang = "en"
pipeline = ["luke_ner", "tagger"]

[components]

[components.luke_ner]
factory = "luke_ner"

[components.luke_ner.model]
@architectures = "luke_spacy.LukeSpanClassifier.v1"
name = "{tiny_luke}"

[components.tagger]
factory = "tagger"

[components.tagger.model]
@architectures = "spacy.Tagger.v2"
nO = null

[components.tagger.model.tok2vec]
@architectures = "spacy-transformers.TransformerListener.v1"
grad_factor = 1.0
upstream = "luke_ner"

[components.tagger.model.tok2vec.pooling]
@layers = "reduce_mean.v1"

[corpora]

[corpora.train]
@readers = "spacy.Corpus.v1"
path = ${{paths.train}}

[corpora.dev]
@readers = "spacy.Corpus.v1"
path = ${{paths.dev}}

[training]
frozen_components = ["luke_ner"]
annotating_components = ["luke_ner"]
max_steps = 30
eval_frequency = 10

[training.optimizer]
@optimizers = "Adam.v1"
learn_rate = 0.01
"""
    )
    nlp = spacy.blank("en")
    DocBin(docs=tagged_docs(nlp.vocab) * 3).to_disk(tmp_path / "train.spacy")
    filled = tmp_path / "filled.cfg"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    run = [sys.executable, "-m", "spacy"]
    subprocess.run(
        [*run, "init", "fill-config", str(config), str(filled)],
        check=True, capture_output=True, env=env, timeout=300,
    )  # fmt: skip
    result = subprocess.run(
        [
            *run, "train", str(filled), "--output", str(tmp_path / "out"),
            "--paths.train", str(tmp_path / "train.spacy"),
            "--paths.dev", str(tmp_path / "train.spacy"),
        ],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    trained = spacy.load(tmp_path / "out" / "model-last")
    assert tag_accuracy(trained, tagged_docs(trained.vocab)) >= 0.9
