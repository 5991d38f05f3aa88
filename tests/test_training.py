"""Training luke_ner: initialization of the head, the recipe's loss, overfitting, new labels."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy
import pytest
import spacy
import torch
from conftest import make_nlp, shared_path
from spacy.tokens import Doc, Span
from spacy.training import Example
from thinc.api import Adam, PyTorchGradScaler
from transformers import LukeConfig, LukeModel, LukeTokenizer

from luke_spacy import CheckpointError
from luke_spacy.model import get_objects, get_scorer
from luke_spacy.random_model import build_random_checkpoint

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
SMALL = {
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 128,
    "entity_emb_size": 32,
}


def read_iob2(path, n_sentences):
    """The first sentences with at least one entity, as (words, IOB2 tags)."""
    sentences, words, tags = [], [], []
    for line in open(path, encoding="utf8"):
        line = line.strip()
        if line.startswith("-DOCSTART"):
            continue
        if not line:
            if any(t != "O" for t in tags):
                sentences.append((words, tags))
            words, tags = [], []
            if len(sentences) == n_sentences:
                break
            continue
        parts = line.split()
        words.append(parts[0])
        tags.append(parts[-1])
    return sentences


def examples_for(nlp, sentences):
    out = []
    for words, tags in sentences:
        ref = Doc(
            nlp.vocab, words=words, ents=tags, sent_starts=[True] + [False] * (len(words) - 1)
        )
        out.append(Example(Doc(nlp.vocab, words=words), ref))
    return out


@pytest.mark.slow
def test_overfits_50_conll_sentences(tmp_path):
    sentences = read_iob2(shared_path("conll2003", "iob2", "train.txt"), 50)
    assert len(sentences) == 50
    torch.manual_seed(0)
    model_dir = build_random_checkpoint(
        tmp_path / "m", config=SMALL, corpus=[" ".join(w) for w, _ in sentences], vocab_size=800
    )
    nlp = make_nlp(model_dir)
    examples = examples_for(nlp, sentences)
    nlp.initialize(lambda: examples)
    assert set(nlp.get_pipe("luke_ner").labels) == {"PER", "ORG", "LOC", "MISC"}
    optimizer = Adam(2e-3)
    best = 0.0
    for step in range(1, 201):
        nlp.update(examples, sgd=optimizer, drop=0.0)
        if step % 10 == 0:
            best = nlp.evaluate(examples)["ents_f"]
            if best >= 0.95:
                break
    assert best >= 0.95, f"entity F1 on the training sentences only reached {best:.3f}"


def custom_examples(nlp):
    data = [
        ("I ate an apple with my cat", [(3, 4, "FOOD"), (6, 7, "ANIMAL")]),
        ("The dog likes bread", [(1, 2, "ANIMAL"), (3, 4, "FOOD")]),
        ("A horse eats hay and carrots", [(1, 2, "ANIMAL"), (3, 4, "FOOD"), (5, 6, "FOOD")]),
        ("My cat and my dog share rice", [(1, 2, "ANIMAL"), (4, 5, "ANIMAL"), (6, 7, "FOOD")]),
    ]
    examples = []
    for text, ents in data:
        words = text.split()
        ref = Doc(nlp.vocab, words=words)
        ref.ents = [
            ref.char_span(ref[s].idx, ref[e - 1].idx + len(ref[e - 1]), label=lab)
            for s, e, lab in ents
        ]
        examples.append(Example(Doc(nlp.vocab, words=words), ref))
    return examples


def test_new_label_set_trains_end_to_end(tiny_luke, tmp_path):
    nlp = make_nlp(tiny_luke)
    examples = custom_examples(nlp)
    nlp.initialize(lambda: examples)
    ner = nlp.get_pipe("luke_ner")
    assert ner.labels == ("ANIMAL", "FOOD")
    hf = get_objects(ner.model).transformer
    assert hf.classifier.out_features == 3
    assert hf.config.id2label == {0: "NIL", 1: "ANIMAL", 2: "FOOD"}
    optimizer = Adam(5e-3)
    losses = []
    for _ in range(60):
        losses.append(nlp.update(examples, sgd=optimizer, drop=0.0)["luke_ner"])
    assert losses[-1] < losses[0] / 5
    scores = nlp.evaluate(examples)
    assert scores["ents_f"] >= 0.9
    assert set(scores["ents_per_type"]) <= {"ANIMAL", "FOOD"}
    # The trained pipeline saves and reloads offline with its own labels.
    nlp.to_disk(tmp_path / "trained")
    reloaded = spacy.load(tmp_path / "trained")
    assert reloaded.get_pipe("luke_ner").labels == ("ANIMAL", "FOOD")
    for eg in examples:
        text = eg.reference.text
        assert [(e.start, e.end, e.label_) for e in reloaded(text).ents] == [
            (e.start, e.end, e.label_) for e in nlp(text).ents
        ]


def test_matching_labels_keep_the_checkpoint_head(tiny_luke):
    from safetensors.torch import load_file

    nlp = make_nlp(tiny_luke)
    nlp.config["initialize"]["components"]["luke_ner"] = {"labels": ["LOC", "MISC", "ORG", "PER"]}
    nlp.initialize()
    hf = get_objects(nlp.get_pipe("luke_ner").model).transformer
    saved = load_file(str(tiny_luke / "model.safetensors"))
    assert torch.equal(hf.classifier.weight, saved["classifier.weight"])
    assert nlp.get_pipe("luke_ner").labels == ("MISC", "PER", "ORG", "LOC")


def test_pretrained_only_checkpoint(tmp_path, tiny_luke):
    # A LukeModel without span head, like studio-ousia/luke-base.
    tokenizer = LukeTokenizer.from_pretrained(tiny_luke)
    config = LukeConfig(
        vocab_size=len(tokenizer),
        entity_vocab_size=4,
        **{k: v for k, v in SMALL.items()},
        max_position_embeddings=514,
        type_vocab_size=1,
    )
    LukeModel(config).save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    with pytest.raises(CheckpointError, match="not a span classifier"):
        make_nlp(tmp_path / "base")("Paris is nice")
    nlp = make_nlp(tmp_path / "base")
    examples = custom_examples(nlp)
    nlp.initialize(lambda: examples)
    assert nlp.get_pipe("luke_ner").labels == ("ANIMAL", "FOOD")
    loss0 = nlp.update(examples, sgd=Adam(5e-3))["luke_ner"]
    assert loss0 > 0
    assert {ent.label_ for ent in nlp("My dog eats rice and my cat eats bread").ents} <= {
        "ANIMAL",
        "FOOD",
    }
    assert get_objects(nlp.get_pipe("luke_ner").model).transformer.classifier.out_features == 3


def test_update_is_get_loss_of_each_forward_batch(tiny_luke):
    """update runs the model's begin_update on each forward batch and get_loss on its
    scores: the mean cross-entropy over every candidate span of the update, whose gradient
    is torch's for the same loss."""
    nlp = make_nlp(tiny_luke, max_entity_length=4, max_batch_items=64)  # chunks, batches
    examples = custom_examples(nlp)
    nlp.initialize(lambda: examples)
    ner = nlp.get_pipe("luke_ner")
    runtime = ner.runtime
    docs = [eg.predicted for eg in examples]
    batches = runtime.update_batches(docs, [runtime.sentences(doc) for doc in docs])
    assert len(batches) > 1
    n_spans = sum(len(p.spans) for b in batches for p in b.passes)
    assert all(b.n_spans == n_spans for b in batches)
    label_ids = {label: i for i, label in enumerate(("NIL", "ANIMAL", "FOOD"))}
    total = 0.0
    for batch in batches:
        scores = ner.model.predict(batch)
        loss, d_logits = ner.get_loss(examples, scores)
        assert d_logits.shape == scores.logits.shape
        logits = torch.tensor(scores.logits, requires_grad=True)
        rows, targets = [], []
        for row, p in enumerate(batch.passes):
            gold = {(e.start, e.end): label_ids[e.label_] for e in examples[p.doc].reference.ents}
            rows += [(row, k) for k in range(len(p.spans))]
            targets += [gold.get(tuple(span), 0) for span in p.spans]
        picked = logits[[r for r, _ in rows], [k for _, k in rows]]
        expected = torch.nn.functional.cross_entropy(
            picked, torch.tensor(targets), reduction="sum"
        ) / n_spans
        expected.backward()
        assert loss == pytest.approx(expected.item(), rel=1e-5)
        numpy.testing.assert_allclose(d_logits, logits.grad.numpy(), atol=1e-7)
        total += loss
    assert nlp.update(examples, sgd=None, drop=0.0)["luke_ner"] == pytest.approx(total, rel=1e-5)


def test_training_trains_only_passes_with_candidates(tiny_luke):
    """With set_trf_data, inference also runs span-less passes (so every subword gets a
    state); an update plans none of them."""
    nlp = make_nlp(tiny_luke, set_trf_data=True)
    examples = custom_examples(nlp)
    # a sentence of one word longer than max_mention_length: no candidate
    url = "https://www.example.com/a/very/long/path/to/some/page.html?query=1"
    words, starts = [url, "My", "cat", "eats", "rice"], [True, True, False, False, False]
    ref = Doc(nlp.vocab, words=words, sent_starts=starts)
    ref.ents = [Span(ref, 2, 3, label="ANIMAL"), Span(ref, 4, 5, label="FOOD")]
    examples.append(Example(Doc(nlp.vocab, words=words, sent_starts=starts), ref))
    nlp.initialize(lambda: examples)
    ner = nlp.get_pipe("luke_ner")
    assert any(not p.spans for p in ner.runtime.plan([examples[-1].predicted]))
    seen = []
    ner.runtime.on_batch = seen.append
    nlp.update(examples, sgd=None, drop=0.1)
    assert seen and all(p.spans for batch in seen for p in batch)


def test_dropout_goes_through_thinc(tiny_luke):
    """update sets the rate with thinc's set_dropout_rate; the backend applies it."""
    nlp = make_nlp(tiny_luke)
    examples = custom_examples(nlp)
    nlp.initialize(lambda: examples)
    ner = nlp.get_pipe("luke_ner")
    nlp.update(examples, sgd=None, drop=0.25)
    assert ner.model.attrs["dropout_rate"] == 0.25
    rates = {m.p for m in get_scorer(ner.model).modules() if isinstance(m, torch.nn.Dropout)}
    assert rates == {0.25}


def test_uncoverable_gold_entities_are_reported(tiny_luke):
    nlp = make_nlp(tiny_luke, max_mention_length=3)
    words = ["Alpha", "Beta", "Gamma", "Delta", "Epsilon", ".", "Zeta", "Eta", "."]
    ref = Doc(nlp.vocab, words=words, sent_starts=[1, 0, 0, 0, 0, 0, 1, 0, 0])
    long_span = ref.char_span(0, ref[4].idx + len(ref[4]), label="LONG")  # > 3 subwords
    crossing = ref[5:7]
    crossing.label_ = "CROSS"
    ref.ents = [long_span, Span(ref, 7, 8, label="SHORT")]
    example = Example(Doc(nlp.vocab, words=words), ref)
    ref2 = Doc(nlp.vocab, words=words, sent_starts=[1, 0, 0, 0, 0, 0, 1, 0, 0])
    ref2.ents = [crossing]
    example2 = Example(Doc(nlp.vocab, words=words), ref2)
    with pytest.warns(UserWarning, match=r"2 of 3 gold entities"):
        nlp.initialize(lambda: [example, example2])
    coverage = nlp.get_pipe("luke_ner").cfg["coverage"]
    assert coverage["n_entities"] == 3
    assert coverage["crossing a sentence boundary"] == 1
    assert coverage["longer than max_mention_length (3 subwords)"] == 1


@pytest.mark.slow
def test_spacy_train_cli_with_custom_labels(tiny_luke, tmp_path):
    """`spacy train configs/luke_ner_custom.cfg` end to end on new labels, with
    `accumulate_gradient = 2` (spaCy's update(sgd=False) per sub-batch, then finish_update),
    then offline reload."""
    import os
    import subprocess
    import sys

    from spacy.tokens import DocBin

    nlp = spacy.blank("en")
    docs = []
    for eg in custom_examples(nlp) * 3:
        doc = eg.reference
        doc[0].is_sent_start = True
        for token in doc[1:]:
            token.is_sent_start = False
        docs.append(doc)
    DocBin(docs=docs).to_disk(tmp_path / "train.spacy")
    config = CONFIGS / "luke_ner_custom.cfg"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    cmd = [
        sys.executable, "-m", "spacy", "train", str(config),
        "--output", str(tmp_path / "out"),
        "--paths.train", str(tmp_path / "train.spacy"),
        "--paths.dev", str(tmp_path / "train.spacy"),
        "--paths.model", str(tiny_luke),
        "--training.max_steps", "30",
        "--training.eval_frequency", "10",
        "--training.optimizer.learn_rate.total_steps", "30",
        "--training.optimizer.learn_rate.warmup_steps", "1",
        "--training.optimizer.learn_rate.initial_rate", "0.005",
        "--training.dropout", "0.0",
        "--training.accumulate_gradient", "2",
    ]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    trained = spacy.load(tmp_path / "out" / "model-last")
    assert trained.get_pipe("luke_ner").labels == ("ANIMAL", "FOOD")
    scores = trained.evaluate(custom_examples(trained))
    assert scores["ents_f"] >= 0.8


def test_fused_attention_sees_optimizer_updates(tiny_luke):
    """thinc's optimizer writes parameters in place; the fused attention must see it."""
    from luke_spacy.attention import unfuse_entity_aware_attention

    nlp = make_nlp(tiny_luke, attention="sdpa")
    examples = custom_examples(nlp)
    nlp.initialize(lambda: examples)
    ner = nlp.get_pipe("luke_ner")
    docs = [eg.predicted for eg in examples]
    before = ner.span_scores(docs)
    optimizer = Adam(5e-3)
    for _ in range(3):
        nlp.update(examples, sgd=optimizer)
    fused = ner.span_scores(docs)
    unfuse_entity_aware_attention(get_objects(ner.model).transformer)
    eager = ner.span_scores(docs)
    for old, new, ref in zip(before, fused, eager):
        assert not numpy.allclose(old.logits, ref.logits, atol=1e-3)
        numpy.testing.assert_allclose(new.logits, ref.logits, atol=1e-4)


def accumulating_nlp(model_dir, **model_cfg):
    """A pipeline on the new labels whose update runs several forward batches."""
    torch.manual_seed(0)  # the fresh head
    nlp = make_nlp(model_dir, max_batch_items=64, model={"name": str(model_dir), **model_cfg})
    examples = custom_examples(nlp)
    nlp.initialize(lambda: examples)
    return nlp, examples


def test_update_accumulates_gradients(tiny_luke):
    """spaCy's accumulate_gradient: update(sgd=False) per sub-batch sums the gradients, and
    finish_update applies them and starts the next step from zero."""
    nlp, examples = accumulating_nlp(tiny_luke)
    ner = nlp.get_pipe("luke_ner")
    params = dict(get_scorer(ner.model).named_parameters())
    a, b = examples[:2], examples[2:]

    def accumulate(*batches, fresh=True):
        if fresh:
            for p in params.values():
                p.grad = None
        for batch in batches:
            nlp.update(batch, sgd=False, drop=0.0)
        return {n: p.grad.clone() for n, p in params.items() if p.grad is not None}

    grad_a, grad_b, grad_ab = accumulate(a), accumulate(b), accumulate(a, b)
    assert grad_ab.keys() == grad_a.keys() == grad_b.keys()
    assert grad_ab["hf.classifier.weight"].abs().sum() > 0
    for name, grad in grad_ab.items():
        torch.testing.assert_close(grad, grad_a[name] + grad_b[name], rtol=1e-4, atol=1e-7)
    before = {n: p.detach().clone() for n, p in params.items()}
    ner.finish_update(Adam(1e-3))
    assert not torch.equal(before["hf.classifier.weight"], params["hf.classifier.weight"])
    assert all(not p.grad.any() for p in params.values() if p.grad is not None)
    # The next step sees its own gradient only.
    after_step = accumulate(a, fresh=False)
    for name, grad in accumulate(a).items():
        torch.testing.assert_close(after_step[name], grad)


class CPUGradScaler(PyTorchGradScaler):
    """thinc's gradient scaler without its CUDA check, to run the GPU path on a CPU."""

    def _scale_tensor(self, tensor, scale_per_device, inplace):
        return tensor.mul_(self._scale) if inplace else tensor * self._scale


@pytest.mark.filterwarnings("ignore:CUDA is not available")
def test_scaled_gradients_are_unscaled_once(tiny_luke, monkeypatch):
    """Mixed precision (GPU): gradients of several backward passes (forward batches,
    accumulate_gradient) are unscaled once in finish_update, so the step equals fp32's."""

    def step(scaled: bool):
        nlp, examples = accumulating_nlp(tiny_luke)
        ner = nlp.get_pipe("luke_ner")
        if scaled:
            shim = ner.model.shims[0]
            shim.grad_scaler = CPUGradScaler(enabled=True, init_scale=2.0**10)
            monkeypatch.setattr(shim, "_mixed_precision_on", lambda: True)
        for batch in (examples[:2], examples[2:]):
            nlp.update(batch, sgd=False, drop=0.0)
        ner.finish_update(Adam(1e-3))
        return {n: p.detach().clone() for n, p in get_scorer(ner.model).named_parameters()}

    plain, scaled = step(False), step(True)
    for name, value in plain.items():
        torch.testing.assert_close(scaled[name], value, rtol=1e-4, atol=1e-6)


def test_mixed_precision_on_cpu_trains_in_float32(tiny_luke):
    """`model.mixed_precision = true` on a CPU warns and trains exactly as without it."""

    def train(**model_cfg):
        nlp, examples = accumulating_nlp(tiny_luke, **model_cfg)
        optimizer = Adam(5e-3)
        return [nlp.update(examples, sgd=optimizer, drop=0.0)["luke_ner"] for _ in range(4)]

    with pytest.warns(UserWarning, match="mixed_precision needs a CUDA device"):
        mixed = train(mixed_precision=True)
    assert all(math.isfinite(loss) for loss in mixed) and mixed[-1] < mixed[0]
    assert mixed == pytest.approx(train(), rel=1e-5)


def test_custom_label_config_fills_to_the_main_config():
    """configs/luke_ner_custom.cfg only sets what differs: its filled component settings and
    training block are those of configs/luke_ner.cfg, and both training blocks resolve."""
    from spacy.schemas import ConfigSchemaTraining
    from spacy.util import load_config, load_model_from_config, registry

    filled = []
    for name in ("luke_ner.cfg", "luke_ner_custom.cfg"):
        nlp = load_model_from_config(load_config(CONFIGS / name), auto_fill=True)
        config = nlp.config.interpolate()
        registry.resolve(config["training"], schema=ConfigSchemaTraining)
        filled.append(config)
    main, custom = filled
    assert custom["components"]["luke_ner"]["model"].pop("name") == "studio-ousia/luke-base"
    main["components"]["luke_ner"]["model"].pop("name")
    assert custom["components"] == main["components"]
    assert custom["initialize"]["components"]["luke_ner"]["labels"] == ["ANIMAL", "FOOD"]
    for key in ("batcher", "dropout", "accumulate_gradient", "score_weights"):
        assert custom["training"][key] == main["training"][key], key
    # The schedule's length follows max_steps; the rate is the recipe's.
    rates = [config["training"]["optimizer"].pop("learn_rate") for config in filled]
    assert rates[0]["initial_rate"] == rates[1]["initial_rate"]
    assert custom["training"]["optimizer"] == main["training"]["optimizer"]


def o_examples(nlp, n=3):
    """Examples annotated for entities, every token "O"."""
    texts = ["The dog likes bread", "A horse eats hay", "My cat sleeps"][:n]
    return [
        Example(
            Doc(nlp.vocab, words=t.split()),
            Doc(nlp.vocab, words=t.split(), ents=["O"] * len(t.split())),
        )
        for t in texts
    ]


def test_entity_free_training_data_is_refused(tiny_luke):
    """An all-"O" corpus would teach the head to predict nothing (#23 item 3)."""
    nlp = make_nlp(tiny_luke)
    with pytest.raises(ValueError, match=r"no entities: its 3 examples are annotated"):
        nlp.initialize(lambda: o_examples(nlp))


def test_entity_free_training_data_with_given_labels_warns(tiny_luke):
    nlp = make_nlp(tiny_luke)
    nlp.config["initialize"]["components"]["luke_ner"] = {"labels": ["PER"]}
    with pytest.warns(UserWarning, match=r"no entities, so training on it teaches the model"):
        nlp.initialize(lambda: o_examples(nlp))


def test_an_empty_label_list_names_the_real_cause(tiny_luke):
    nlp = make_nlp(tiny_luke)
    nlp.config["initialize"]["components"]["luke_ner"] = {"labels": []}
    with pytest.raises(ValueError) as info:
        nlp.initialize(lambda: custom_examples(nlp))
    message = str(info.value)
    assert "[initialize.components.luke_ner] labels is an empty list" in message
    assert "the training data has 10 gold entities (ANIMAL, FOOD)" in message


def test_inference_initialization_needs_no_entities(tiny_luke):
    """spaCy's placeholder example (no data) is no entity-free training set."""
    nlp = make_nlp(tiny_luke)
    nlp.initialize()
    assert nlp.get_pipe("luke_ner").labels == ("MISC", "PER", "ORG", "LOC")


def test_labels_left_out_at_initialize_are_counted_per_label(tiny_luke):
    """Gold entities whose label is not among the labels are trained as no entity: counted
    and reported by label (#23 item 4), and not reported again by update (#17 item 12)."""
    nlp = make_nlp(tiny_luke)
    nlp.config["initialize"]["components"]["luke_ner"] = {"labels": ["ANIMAL"]}
    examples = custom_examples(nlp)
    with pytest.warns(UserWarning, match=r"5 of 10 gold entities have labels .* 'FOOD' \(5\)"):
        nlp.initialize(lambda: examples)
    ner = nlp.get_pipe("luke_ner")
    assert ner.labels == ("ANIMAL",)
    assert ner.cfg["coverage"]["n_entities"] == 10
    assert ner.cfg["coverage"]["unknown_labels"] == {"FOOD": 5}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        nlp.update(examples)


def test_update_warns_once_per_unknown_gold_label(tiny_luke):
    """A pipeline initialized for inference (the checkpoint's labels) and updated on other
    labels: each unknown label is reported once, with its count (#17 item 12)."""
    nlp = make_nlp(tiny_luke)
    nlp.initialize()
    examples = custom_examples(nlp)
    with pytest.warns(UserWarning) as record:
        nlp.update(examples)
    messages = [str(w.message) for w in record if "does not have" in str(w.message)]
    assert len(messages) == 1
    assert "10 gold entities have labels that luke_ner does not have" in messages[0]
    assert "'ANIMAL' (5), 'FOOD' (5)" in messages[0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        nlp.update(examples)  # said once per label


@pytest.mark.parametrize(
    "labels,message",
    [
        (["PER", "PER", "LOC", ""], r"empty label names: ''; repeated labels: 'PER'"),
        (["PER", "NIL"], r"'NIL' is the name of the no-entity class"),
        (["O", "LOC"], r"'O' is the name of the no-entity class"),
        (["LOC", "  "], r"empty label names: '  '"),
    ],
)
def test_bad_label_lists_are_refused(tiny_luke, labels, message):
    """Each label is a row of the head, and label 0 is no-entity (#23 item 5)."""
    nlp = make_nlp(tiny_luke)
    nlp.config["initialize"]["components"]["luke_ner"] = {"labels": labels}
    with pytest.raises(ValueError, match=r"luke_ner\] labels cannot be trained: " + message):
        nlp.initialize(lambda: custom_examples(nlp))


def test_a_gold_label_named_like_the_no_entity_class_is_refused(tiny_luke):
    nlp = make_nlp(tiny_luke)
    examples = custom_examples(nlp)
    ref = examples[0].reference
    ref.ents = [Span(ref, 3, 4, label="NIL"), *ref.ents[1:]]
    with pytest.raises(ValueError, match=r"entities cannot be trained: 'NIL' \(1 entities\)"):
        nlp.initialize(lambda: examples)
