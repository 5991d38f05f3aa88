"""Tests for the fused entity-aware attention in `luke_spacy.attention`."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
from transformers import LukeConfig, LukeForEntitySpanClassification
from transformers.models.luke.modeling_luke import LukeSelfAttention

from luke_spacy.attention import (
    fuse_entity_aware_attention,
    is_entity_aware_attention_fused,
    unfuse_entity_aware_attention,
)

NUM_LAYERS = 2
ATOL = 1e-5
RTOL = 1e-4


@pytest.fixture(autouse=True)
def _deterministic() -> Iterator[None]:
    n_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(n_threads)


def make_model(
    use_entity_aware_attention: bool = True, dropout: float = 0.1
) -> LukeForEntitySpanClassification:
    config = LukeConfig(
        vocab_size=100,
        entity_vocab_size=4,
        entity_emb_size=16,
        hidden_size=32,
        num_hidden_layers=NUM_LAYERS,
        num_attention_heads=4,
        intermediate_size=37,
        max_position_embeddings=64,
        type_vocab_size=1,
        num_labels=5,
        use_entity_aware_attention=use_entity_aware_attention,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
    )
    model = LukeForEntitySpanClassification(config)
    model.eval()
    return model


def make_inputs(
    batch_size: int = 3, n_words: int = 11, n_entities: int = 5
) -> dict[str, torch.Tensor]:
    input_ids = torch.randint(1, 100, (batch_size, n_words))
    attention_mask = torch.ones(batch_size, n_words, dtype=torch.long)
    attention_mask[1, 7:] = 0  # word padding on the tail of one row
    input_ids[1, 7:] = 1

    max_mention = 3
    starts = torch.randint(0, 6, (batch_size, n_entities))
    lengths = torch.randint(1, max_mention + 1, (batch_size, n_entities))
    ends = starts + lengths - 1
    positions = starts.unsqueeze(-1) + torch.arange(max_mention)
    # -1 marks padding inside a mention, as the LUKE tokenizer produces it.
    positions = positions.masked_fill(torch.arange(max_mention) >= lengths.unsqueeze(-1), -1)

    entity_attention_mask = torch.ones(batch_size, n_entities, dtype=torch.long)
    entity_attention_mask[0, 3:] = 0
    entity_attention_mask[2, 1:] = 0
    entity_ids = torch.randint(1, 4, (batch_size, n_entities))
    entity_ids = entity_ids.masked_fill(entity_attention_mask == 0, 0)
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "entity_ids": entity_ids,
        "entity_attention_mask": entity_attention_mask,
        "entity_position_ids": positions,
        "entity_start_positions": starts,
        "entity_end_positions": ends,
    }


def logits(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs).logits


def count_sdpa_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls = [0]
    sdpa: Callable[..., Any] = torch.nn.functional.scaled_dot_product_attention

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        return sdpa(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", counting)
    return calls


@pytest.mark.parametrize("entity_aware", [True, False])
def test_fused_logits_match_eager(entity_aware: bool) -> None:
    model = make_model(entity_aware)
    inputs = make_inputs()
    expected = logits(model, inputs)

    assert fuse_entity_aware_attention(model) == NUM_LAYERS
    assert is_entity_aware_attention_fused(model)
    fused = logits(model, inputs)
    max_diff = (fused - expected).abs().max().item()
    print(f"max abs diff (entity_aware={entity_aware}): {max_diff:.3e}")
    torch.testing.assert_close(fused, expected, atol=ATOL, rtol=RTOL)

    # Twice more: the second time the cached fused weights are used.
    torch.testing.assert_close(logits(model, inputs), fused, atol=0, rtol=0)


@pytest.mark.parametrize("entity_aware", [True, False])
def test_fused_matches_eager_with_grad_enabled(entity_aware: bool) -> None:
    # The non-cached path (weights concatenated each call).
    model = make_model(entity_aware)
    inputs = make_inputs()
    expected = model(**inputs).logits
    fuse_entity_aware_attention(model)
    fused = model(**inputs).logits
    torch.testing.assert_close(fused, expected, atol=ATOL, rtol=RTOL)


def test_without_entities_matches_eager() -> None:
    model = make_model(True)
    inputs = make_inputs()
    words_only = {k: inputs[k] for k in ("input_ids", "attention_mask")}
    expected = model.luke(**words_only).last_hidden_state
    fuse_entity_aware_attention(model)
    fused = model.luke(**words_only).last_hidden_state
    torch.testing.assert_close(fused, expected, atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("entity_aware", [True, False])
def test_unfuse_restores_bit_identical_outputs(entity_aware: bool) -> None:
    model = make_model(entity_aware)
    inputs = make_inputs()
    expected = logits(model, inputs)
    state_keys = list(model.state_dict())

    assert fuse_entity_aware_attention(model) == NUM_LAYERS
    assert list(model.state_dict()) == state_keys
    logits(model, inputs)
    assert unfuse_entity_aware_attention(model) == NUM_LAYERS
    assert not is_entity_aware_attention_fused(model)
    assert unfuse_entity_aware_attention(model) == 0
    for module in model.modules():
        if isinstance(module, LukeSelfAttention):
            assert "forward" not in module.__dict__
            assert module.forward.__func__ is LukeSelfAttention.forward
    assert torch.equal(logits(model, inputs), expected)


def test_fuse_is_idempotent(monkeypatch: pytest.MonkeyPatch) -> None:
    model = make_model(True)
    inputs = make_inputs()
    expected = logits(model, inputs)
    assert fuse_entity_aware_attention(model) == NUM_LAYERS
    assert fuse_entity_aware_attention(model) == NUM_LAYERS
    calls = count_sdpa_calls(monkeypatch)
    fused = logits(model, inputs)
    assert calls[0] == NUM_LAYERS
    torch.testing.assert_close(fused, expected, atol=ATOL, rtol=RTOL)
    # One unfuse fully restores the eager path after two fuses.
    assert unfuse_entity_aware_attention(model) == NUM_LAYERS
    assert torch.equal(logits(model, inputs), expected)


@pytest.mark.parametrize("entity_aware", [True, False])
def test_gradients_match_eager(entity_aware: bool) -> None:
    model = make_model(entity_aware, dropout=0.0)
    model.train()
    inputs = make_inputs()
    labels = torch.randint(0, 5, inputs["entity_ids"].shape)

    def grads() -> dict[str, torch.Tensor]:
        model.zero_grad(set_to_none=True)
        model(**inputs, labels=labels).loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    expected = grads()
    fuse_entity_aware_attention(model)
    fused = grads()
    assert fused.keys() == expected.keys()
    if entity_aware:
        assert any("w2e_query" in n for n in fused)
    for name, grad in expected.items():
        torch.testing.assert_close(fused[name], grad, atol=ATOL, rtol=RTOL, msg=name)


@pytest.mark.parametrize("entity_aware", [True, False])
def test_fused_path_calls_sdpa_once_per_layer(
    entity_aware: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = make_model(entity_aware)
    inputs = make_inputs()
    calls = count_sdpa_calls(monkeypatch)
    logits(model, inputs)
    assert calls[0] == 0  # HF's LUKE is eager-only

    fuse_entity_aware_attention(model)
    logits(model, inputs)
    assert calls[0] == NUM_LAYERS

    calls[0] = 0
    model.train()
    model(**inputs).logits.sum().backward()
    assert calls[0] == NUM_LAYERS


def test_output_attentions_and_head_mask_fall_back_to_eager(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model = make_model(True)
    inputs = make_inputs()
    head_mask = torch.ones(NUM_LAYERS, 4)
    head_mask[0, 1] = 0.0
    with torch.no_grad():
        expected_attn = model(**inputs, output_attentions=True)
        expected_head = model(**inputs, head_mask=head_mask).logits
    fuse_entity_aware_attention(model)
    calls = count_sdpa_calls(monkeypatch)
    with torch.no_grad():
        fused_attn = model(**inputs, output_attentions=True)
        fused_head = model(**inputs, head_mask=head_mask).logits
    assert calls[0] == 0
    assert len(fused_attn.attentions) == NUM_LAYERS
    for got, want in zip(fused_attn.attentions, expected_attn.attentions):
        assert torch.equal(got, want)
    assert torch.equal(fused_attn.logits, expected_attn.logits)
    assert torch.equal(fused_head, expected_head)


def test_cache_invalidated_when_parameters_change() -> None:
    model = make_model(True)
    inputs = make_inputs()
    fuse_entity_aware_attention(model)
    logits(model, inputs)  # fills the per-layer weight cache

    layer = model.luke.encoder.layer[0].attention.self
    with torch.no_grad():
        layer.w2e_query.weight.add_(0.5)  # in place: bumps `_version`
        layer.e2e_query.bias.add_(0.5)
    layer.key.weight.data = layer.key.weight.data * 1.5  # new storage
    fused = logits(model, inputs)

    other = make_model(True)
    other.load_state_dict(model.state_dict())
    torch.testing.assert_close(fused, logits(other, inputs), atol=ATOL, rtol=RTOL)

    # load_state_dict copies in place into the cached parameters.
    model.load_state_dict(make_model(True).state_dict())
    unfuse_entity_aware_attention(model)
    expected = logits(model, inputs)
    fuse_entity_aware_attention(model)
    logits(model, inputs)
    model.load_state_dict(other.state_dict())
    torch.testing.assert_close(logits(model, inputs), logits(other, inputs), atol=ATOL, rtol=RTOL)
    assert not torch.allclose(expected, logits(other, inputs))


def test_training_steps_match_eager() -> None:
    # Alternating inference (cached weights) and optimizer steps must never
    # reuse stale weights.
    inputs = make_inputs()
    labels = torch.randint(0, 5, inputs["entity_ids"].shape)
    eager = make_model(True, dropout=0.0)
    fused = copy.deepcopy(eager)
    fuse_entity_aware_attention(fused)
    opt_eager = torch.optim.SGD(eager.parameters(), lr=0.5)
    opt_fused = torch.optim.SGD(fused.parameters(), lr=0.5)
    for _ in range(3):
        for model, opt in ((eager, opt_eager), (fused, opt_fused)):
            model.eval()
            logits(model, inputs)
            model.train()
            opt.zero_grad()
            model(**inputs, labels=labels).loss.backward()
            opt.step()
        eager.eval()
        fused.eval()
        torch.testing.assert_close(
            logits(fused, inputs), logits(eager, inputs), atol=ATOL, rtol=RTOL
        )


def test_deepcopy_of_fused_model() -> None:
    model = make_model(True)
    inputs = make_inputs()
    fuse_entity_aware_attention(model)
    expected = logits(model, inputs)
    clone = copy.deepcopy(model)
    assert is_entity_aware_attention_fused(clone)
    # The bound forward must point at the copy, not the original.
    layer = clone.luke.encoder.layer[0].attention.self
    assert layer.forward.__self__ is layer
    torch.testing.assert_close(logits(clone, inputs), expected, atol=0, rtol=0)
    assert unfuse_entity_aware_attention(clone) == NUM_LAYERS
    assert is_entity_aware_attention_fused(model)


def test_attention_dropout_is_passed_to_sdpa(monkeypatch: pytest.MonkeyPatch) -> None:
    # Dropout is random, so check the plumbing instead: SDPA must get the
    # layer's dropout_p in train mode, and with dropout forced off inside
    # SDPA the result must equal eager attention without dropout. On CPU
    # this also covers the branch that does not zero-pad the values.
    model = make_model(True, dropout=0.0)
    inputs = make_inputs()
    model.train()
    expected = model(**inputs).logits
    for module in model.modules():
        if isinstance(module, LukeSelfAttention):
            module.dropout.p = 0.25
    seen: list[tuple[float, int]] = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def no_dropout(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, **kw: Any) -> Any:
        seen.append((kw.pop("dropout_p"), value.shape[-1]))
        return sdpa(query, key, value, dropout_p=0.0, **kw)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", no_dropout)
    fuse_entity_aware_attention(model)
    fused = model(**inputs).logits
    head_dim = 32 // 4
    assert seen == [(0.25, head_dim)] * NUM_LAYERS
    torch.testing.assert_close(fused, expected, atol=ATOL, rtol=RTOL)

    seen.clear()
    model.eval()
    logits(model, inputs)
    assert [p for p, _ in seen] == [0.0] * NUM_LAYERS
