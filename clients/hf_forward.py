"""The layer-wise partial forward: recompute an arbitrary set of token positions
inside an assembled KV cache (Cache-Craft's fix-up, CacheBlend's selective recompute).

A stock ``model(...)`` call appends tokens after its cache; it cannot refresh tokens in
the middle of one. Reusing a chunk's KV after a different prefix leaves its tokens
missing the attention they would now pay to that prefix; the planner names the few
tokens whose KV matters most, and this forward recomputes exactly those: at each layer
it takes their hidden states, computes their q/k/v with the layer's own modules, writes
the fresh K/V into the cache at their positions, lets each of them attend causally over
the whole cache (reused tokens and freshly recomputed ones alike), and carries their
hidden states to the next layer. Tokens not selected keep their cached K/V bit for bit.

Only the model's own modules compute (norms, projections, rotary embedding, MLP); the
attention itself is ``torch.nn.functional.scaled_dot_product_attention`` with an
explicit causal mask by absolute position and grouped-query heads.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from transformers import DynamicCache

from semcached.clients.hf_kv import apply_rope, cache_length, decoder, layer_kv

__all__ = ["empty_cache", "recompute", "recompute_logits"]


def empty_cache(model: Any, tokens: int, dtype: torch.dtype | None = None) -> DynamicCache:
    """A ``DynamicCache`` of ``tokens`` zero positions per layer, to be filled by
    :func:`recompute` (every position selected reproduces a plain prefill)."""
    parts = decoder(model)
    dtype = dtype or parts.embed.weight.dtype
    device = parts.embed.weight.device
    cache = DynamicCache(config=model.config)
    shape = (1, parts.kv_heads, tokens, parts.head_dim)
    for i in range(len(parts.layers)):
        zeros = torch.zeros(shape, dtype=dtype, device=device)
        cache.update(zeros, zeros.clone(), i)
    return cache


def _positions(positions: Sequence[int] | torch.Tensor, limit: int) -> torch.Tensor:
    pos = torch.as_tensor(positions, dtype=torch.long).view(-1)
    if pos.numel() == 0:
        raise ValueError("no positions to recompute")
    if bool((pos[1:] <= pos[:-1]).any()):
        raise ValueError("positions must be strictly ascending")
    if int(pos[0]) < 0 or int(pos[-1]) >= limit:
        raise ValueError(f"positions must lie in [0, {limit}) (the cache's length)")
    return pos


@torch.no_grad()
def recompute(
    model: Any,
    cache: DynamicCache,
    token_ids: Sequence[int] | torch.Tensor,
    positions: Sequence[int] | torch.Tensor,
) -> torch.Tensor:
    """Recompute the tokens ``token_ids`` at the absolute ``positions`` (strictly
    ascending, inside the cache) layer by layer, writing their fresh K/V into ``cache``
    in place. Returns their final hidden states ``[1, len(positions), hidden]`` after
    the model's last norm (feed them to ``lm_head`` for logits).

    Each selected token attends to every cache position ≤ its own, so with all
    positions selected over an :func:`empty_cache` the result is the model's own
    prefill. Cost O(layers · |S| · N) attention plus |S| tokens of projections and MLP,
    for |S| selected tokens in an N-position cache.
    """
    parts = decoder(model)
    n = cache_length(cache)
    pos = _positions(positions, n)
    device = parts.embed.weight.device
    ids = torch.as_tensor(token_ids, dtype=torch.long).view(1, -1).to(device)
    if ids.shape[1] != pos.numel():
        raise ValueError(f"{ids.shape[1]} token ids for {pos.numel()} positions")
    pos = pos.to(device)
    if len(cache.layers) != len(parts.layers):
        raise ValueError(f"the cache has {len(cache.layers)} layers, the model {len(parts.layers)}")

    hidden = parts.embed(ids)
    cos, sin = parts.rotary(hidden, pos.view(1, -1))  # [1, S, head_dim]
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)  # broadcast over heads
    # Query i sees cache position j iff j <= positions[i]: causal by absolute position.
    mask = torch.arange(n, device=device).view(1, -1) <= pos.view(-1, 1)
    head_dim = parts.head_dim
    for i, layer in enumerate(parts.layers):
        attn = layer.self_attn
        residual = hidden
        x = layer.input_layernorm(hidden)
        q = attn.q_proj(x).view(1, -1, parts.heads, head_dim)
        k = attn.k_proj(x).view(1, -1, parts.kv_heads, head_dim)
        v = attn.v_proj(x).view(1, -1, parts.kv_heads, head_dim)
        q = apply_rope(q.transpose(1, 2), cos, sin)
        k = apply_rope(k.transpose(1, 2), cos, sin)
        keys, values = layer_kv(cache, i)
        keys.index_copy_(2, pos, k.to(keys.dtype))
        values.index_copy_(2, pos, v.transpose(1, 2).to(values.dtype))
        out = F.scaled_dot_product_attention(
            q,
            keys.to(q.dtype),
            values.to(q.dtype),
            attn_mask=mask,
            scale=float(attn.scaling),
            enable_gqa=True,
        )
        hidden = residual + attn.o_proj(out.transpose(1, 2).reshape(1, pos.numel(), -1))
        hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
    normed: torch.Tensor = parts.norm(hidden)
    return normed


def recompute_logits(
    model: Any,
    cache: DynamicCache,
    token_ids: Sequence[int] | torch.Tensor,
    positions: Sequence[int] | torch.Tensor,
) -> torch.Tensor:
    """:func:`recompute`, then the model's ``lm_head``: logits ``[1, |S|, vocab]``."""
    head = decoder(model).lm_head
    if head is None:
        raise ValueError("the model has no lm_head (pass the *ForCausalLM model)")
    with torch.no_grad():
        logits: torch.Tensor = head(recompute(model, cache, token_ids, positions))
    return logits
