"""Fused entity-aware self-attention for LUKE.

Hugging Face's `LukeSelfAttention` computes entity-aware attention eagerly:
four query projections, four score matmuls, three `torch.cat` calls on the
full [B, heads, T, T] score tensor, then softmax and dropout. This module
swaps in (per instance, reversibly) a forward that computes the same thing
with ONE `scaled_dot_product_attention` (SDPA) call per layer.

The trick: with head dim d and keys k, the four score blocks are

    words    x words:    q_w2w . k_w      words    x entities: q_w2e . k_e
    entities x words:    q_e2w . k_w      entities x entities: q_e2e . k_e

which is exactly one dot product in head dim 2d if we use the queries
`[q_w2w | q_w2e]` (words) / `[q_e2w | q_e2e]` (entities) and the keys
`[k_w | 0]` (words) / `[0 | k_e]` (entities). The zero halves select the
right query half per key block, so a single softmax over all T = words +
entities keys is computed, as in the original. The scale must stay
1/sqrt(d) (not SDPA's default 1/sqrt(2d)). Values only need head dim d, but
are zero-padded to 2d where that lets SDPA pick a fused kernel.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn
from transformers.models.luke.modeling_luke import LukeSelfAttention

# `Optional` rather than `X | None`: this alias is evaluated at runtime on 3.9.
Weights = tuple[torch.Tensor, Optional[torch.Tensor]]


def fuse_entity_aware_attention(model: nn.Module) -> int:
    """Make every `LukeSelfAttention` in `model` use one fused SDPA call.

    Each layer's class is switched to `FusedLukeSelfAttention`, so other models (and the class
    itself) are unaffected, parameters and `state_dict` keys do not change, and
    `unfuse_entity_aware_attention` undoes it. Calls with `output_attentions=True` or a
    `head_mask` use the original forward, because SDPA can return neither the probabilities
    nor mask heads. Calling this twice does not wrap a layer twice.

    model (torch.nn.Module): The model to patch, e.g. a
        `LukeForEntitySpanClassification` or anything containing one.
    RETURNS (int): The number of `LukeSelfAttention` layers that use the
        fused forward after the call (layers fused by an earlier call are
        counted, but not wrapped again).
    """
    n_fused = 0
    for module in model.modules():
        if type(module) is LukeSelfAttention:
            module.__class__ = FusedLukeSelfAttention
        n_fused += isinstance(module, FusedLukeSelfAttention)
    return n_fused


def unfuse_entity_aware_attention(model: nn.Module) -> int:
    """Restore the original forward of every fused `LukeSelfAttention`.

    model (torch.nn.Module): A model previously passed to
        `fuse_entity_aware_attention`.
    RETURNS (int): The number of layers restored (0 if none were fused).
    """
    n_restored = 0
    for module in model.modules():
        if type(module) is FusedLukeSelfAttention:
            module.__class__ = LukeSelfAttention
            n_restored += 1
    return n_restored


def is_entity_aware_attention_fused(model: nn.Module) -> bool:
    """Check whether any `LukeSelfAttention` in `model` is fused.

    model (torch.nn.Module): The model to inspect.
    RETURNS (bool): True if at least one layer uses the fused forward.
    """
    return any(isinstance(m, FusedLukeSelfAttention) for m in model.modules())


def _fused_forward(
    self: LukeSelfAttention,
    word_hidden_states: torch.Tensor,
    entity_hidden_states: torch.Tensor | None,
    attention_mask: torch.Tensor | None = None,
    head_mask: torch.Tensor | None = None,
    output_attentions: bool = False,
) -> tuple[Any, ...]:
    if output_attentions or head_mask is not None:
        # SDPA neither returns the attention probabilities nor lets us scale
        # them per head, so these (debugging / pruning) paths stay eager.
        return LukeSelfAttention.forward(
            self,
            word_hidden_states,
            entity_hidden_states,
            attention_mask,
            head_mask,
            output_attentions,
        )

    n_heads = self.num_attention_heads
    d = self.attention_head_size
    hidden = self.all_head_size
    batch_size, word_size = word_hidden_states.shape[:2]
    dropout_p = self.dropout.p if self.training else 0.0

    if self.use_entity_aware_attention and entity_hidden_states is not None:
        # One matmul per segment: words -> [q_w2w|q_w2e (per head) | k | v],
        # entities -> [q_e2w|q_e2e (per head) | k | v].
        word_weights = _fuse_linears(
            self.query, self.w2e_query, self.key, self.value, n_heads=n_heads
        )
        entity_weights = _fuse_linears(
            self.e2w_query, self.e2e_query, self.key, self.value, n_heads=n_heads
        )
        word_proj = F.linear(word_hidden_states, *word_weights)
        entity_proj = F.linear(entity_hidden_states, *entity_weights)
        entity_size = entity_hidden_states.shape[1]

        def split(proj: torch.Tensor, length: int) -> tuple[torch.Tensor, ...]:
            # The query weights are interleaved per head, so the first 2H
            # columns reshape straight to [B, L, heads, 2d] with no copy.
            q = proj[..., : 2 * hidden].view(batch_size, length, n_heads, 2 * d)
            k = proj[..., 2 * hidden : 3 * hidden].view(batch_size, length, n_heads, d)
            v = proj[..., 3 * hidden :].view(batch_size, length, n_heads, d)
            return q, k, v

        q_word, k_word, v_word = split(word_proj, word_size)
        q_entity, k_entity, v_entity = split(entity_proj, entity_size)
        query = torch.cat([q_word, q_entity], dim=1)
        # Zero halves route word keys to the w2w/e2w query halves and entity
        # keys to the w2e/e2e halves (see module docstring).
        key = torch.cat([F.pad(k_word, (0, d)), F.pad(k_entity, (d, 0))], dim=1)
        value = torch.cat([v_word, v_entity], dim=1)
        if (
            word_hidden_states.device.type != "cpu" or dropout_p == 0.0
        ) and not torch.onnx.is_in_onnx_export():
            # Zero-pad the values to 2d as well: flash attention needs equal
            # q/k/v head dims, else SDPA silently takes the unfused math
            # kernel (~2x slower on CPU). CPU flash has no dropout, so there
            # the padding would only cost, as in an ONNX graph, which has no
            # flash kernel. Extra columns are sliced off below.
            value = F.pad(value, (0, d))
    else:
        # Plain attention: words and entities (if any) share q, k and v.
        if entity_hidden_states is None:
            hidden_states = word_hidden_states
        else:
            hidden_states = torch.cat([word_hidden_states, entity_hidden_states], dim=1)
        proj = F.linear(
            hidden_states, *_fuse_linears(self.query, None, self.key, self.value, n_heads=n_heads)
        )
        length = hidden_states.shape[1]
        query, key, value = (
            t.view(batch_size, length, n_heads, d) for t in proj.split(hidden, dim=-1)
        )

    # SDPA wants [B, heads, T, head_dim].
    query, key, value = (t.transpose(1, 2) for t in (query, key, value))
    context = F.scaled_dot_product_attention(
        query,
        key,
        value,
        attn_mask=_sdpa_mask(attention_mask, query.dtype),
        dropout_p=dropout_p,
        # Explicit: the default would be 1/sqrt(2d) in the entity-aware case.
        scale=1.0 / math.sqrt(d),
    )
    context = context[..., :d].transpose(1, 2).reshape(batch_size, -1, hidden)
    output_word_hidden_states = context[:, :word_size, :]
    if entity_hidden_states is None:
        output_entity_hidden_states = None
    else:
        output_entity_hidden_states = context[:, word_size:, :]
    return (output_word_hidden_states, output_entity_hidden_states)


class FusedLukeSelfAttention(LukeSelfAttention):
    """`LukeSelfAttention` whose forward is one fused SDPA call.

    Layers are switched to this class in place (`fuse_entity_aware_attention`): a class rather
    than a per-instance method, so fused models pickle, deepcopy and spawn like any module.
    """

    forward = _fused_forward


def _sdpa_mask(attention_mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    # LukeModel passes an additive float mask ([B, 1, 1, T], 0 or finfo.min)
    # that already broadcasts the way SDPA expects. SDPA insists that a
    # float mask matches the query dtype, which differs under autocast; the
    # clamp keeps a float32 finfo.min finite when it is cast to float16.
    if attention_mask is None or attention_mask.dtype in (torch.bool, dtype):
        return attention_mask
    return attention_mask.to(dtype).clamp(min=torch.finfo(dtype).min)


def _interleave_heads(a: torch.Tensor, b: torch.Tensor, n_heads: int) -> torch.Tensor:
    # [H_a(, H_in)] and [H_b(, H_in)] -> per head [a_h | b_h], so that the
    # projection output reshapes to [..., heads, 2d] without a copy.
    rest = a.shape[1:]
    stacked = torch.stack([a.reshape(n_heads, -1, *rest), b.reshape(n_heads, -1, *rest)], dim=1)
    return stacked.reshape(-1, *rest)


def _fuse_linears(
    first: nn.Linear, second: nn.Linear | None, *rest: nn.Linear, n_heads: int
) -> Weights:
    # Weight/bias of one linear computing `first` (interleaved with `second`
    # per head when given) followed by each of `rest`. Concatenated on every call, never
    # cached: optimizers such as thinc's update the parameters' memory in place through
    # numpy/cupy views, which bumps neither the version counter nor the data pointer, so no
    # cache key can tell a stale copy from a fresh one. The copy is small next to the matmuls.
    def bias(linear: nn.Linear) -> torch.Tensor:
        if linear.bias is not None:
            return linear.bias
        return linear.weight.new_zeros(linear.out_features)

    linears = [first] + ([second] if second is not None else []) + list(rest)
    has_bias = any(lin.bias is not None for lin in linears)
    if second is None:
        weight_head = first.weight
        bias_head = bias(first) if has_bias else None
    else:
        weight_head = _interleave_heads(first.weight, second.weight, n_heads)
        bias_head = _interleave_heads(bias(first), bias(second), n_heads) if has_bias else None
    weight = torch.cat([weight_head] + [lin.weight for lin in rest], dim=0)
    if bias_head is None:
        return weight, None
    return weight, torch.cat([bias_head] + [bias(lin) for lin in rest], dim=0)
