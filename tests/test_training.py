"""Training luke_ner: initialization of the head, the recipe's loss, overfitting, new labels."""

from __future__ import annotations

import numpy
import pytest
import spacy
import torch
from conftest import shared_path
from spacy.tokens import Doc, Span
from spacy.training import Example
from thinc.api import Adam
from transformers import LukeConfig, LukeModel, LukeTokenizer

from luke_spacy import CheckpointError
from luke_spacy.model import get_objects
from luke_spacy.random_model import build_random_checkpoint

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


def make_nlp(model_dir, **cfg):
    nlp = spacy.blank("en")
    nlp.add_pipe("luke_ner", config={"model": {"name": str(model_dir)}, **cfg})
    return nlp


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


def test_get_loss_equals_update_loss(tiny_luke):
    nlp = make_nlp(tiny_luke, max_entity_length=4)  # several chunks per sentence
    examples = custom_examples(nlp)
    nlp.initialize(lambda: examples)
    ner = nlp.get_pipe("luke_ner")
    scores = ner.predict([eg.predicted for eg in examples])
    loss, grads = ner.get_loss(examples, scores)
    # Independent cross-entropy over all candidate spans.
    label_ids = {label: i for i, label in enumerate(("NIL", "ANIMAL", "FOOD"))}
    total, n = 0.0, 0
    for eg, score in zip(examples, scores):
        gold = {(e.start, e.end): label_ids[e.label_] for e in eg.reference.ents}
        for (s, e), row in zip(score.spans.tolist(), score.logits):
            log_z = numpy.log(numpy.exp(row - row.max()).sum()) + row.max()
            total += log_z - row[gold.get((s, e), 0)]
            n += 1
    assert loss == pytest.approx(total / n, rel=1e-5)
    assert [g.shape for g in grads] == [s.logits.shape for s in scores]
    update_loss = nlp.update(examples, sgd=None, drop=0.0)["luke_ner"]
    assert update_loss == pytest.approx(loss, rel=1e-4)


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


def test_spacy_train_cli_with_custom_labels(tiny_luke, tmp_path):
    """`spacy train configs/luke_ner.cfg` end to end on new labels, then offline reload."""
    import os
    import subprocess
    import sys
    from pathlib import Path

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
    config = Path(__file__).resolve().parents[1] / "configs" / "luke_ner.cfg"
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
    before = ner.predict(docs)
    optimizer = Adam(5e-3)
    for _ in range(3):
        nlp.update(examples, sgd=optimizer)
    fused = ner.predict(docs)
    unfuse_entity_aware_attention(get_objects(ner.model).transformer)
    eager = ner.predict(docs)
    for old, new, ref in zip(before, fused, eager):
        assert not numpy.allclose(old.logits, ref.logits, atol=1e-3)
        numpy.testing.assert_allclose(new.logits, ref.logits, atol=1e-4)
