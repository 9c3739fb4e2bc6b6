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

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from transformers import DynamicCache

from semcached.clients.hf_kv import apply_rope, cache_length, decoder, layer_kv

__all__ = [
    "CHECK_LAYER",
    "Narrow",
    "Selection",
    "empty_cache",
    "kv_deviation",
    "recompute",
    "recompute_logits",
    "select_tokens",
    "top_per_group",
]

CHECK_LAYER = 1
"""The layer at which a selective recompute compares fresh and cached K/V (CacheBlend's
"first layer"). Layer 0's K/V depend on the token and its position only, never on the
context, so a moved chunk's layer-0 K/V deviate by rounding alone; layer 1 is the
earliest whose K/V see the new context (through layer 0's attention)."""

Narrow = Callable[[torch.Tensor], torch.Tensor]
"""Given the K/V deviation ``[S]`` of the positions being recomputed at the selection
layer, the indices (into those S positions, ascending) to carry on to the next layers."""


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


def kv_deviation(
    keys: torch.Tensor,
    values: torch.Tensor,
    fresh_keys: torch.Tensor,
    fresh_values: torch.Tensor,
    positions: torch.Tensor,
) -> torch.Tensor:
    """Per position, the squared L2 distance between the cached K/V (``keys``/``values``
    ``[1, kv_heads, N, head_dim]`` at ``positions``) and the fresh ones
    (``[1, kv_heads, S, head_dim]``), summed over heads, dimensions, keys and values:
    ``[S]`` float32. Keys are compared post-RoPE at the same position, so a correctly
    shifted key that the new context leaves unchanged deviates by rounding only.
    O(S·kv_heads·head_dim)."""
    old_k = keys.index_select(2, positions).to(torch.float32)
    old_v = values.index_select(2, positions).to(torch.float32)
    dk = (fresh_keys.to(torch.float32) - old_k).square().sum(dim=(0, 1, 3))
    dv = (fresh_values.to(torch.float32) - old_v).square().sum(dim=(0, 1, 3))
    return dk + dv


def top_per_group(groups: Sequence[tuple[int, int, int]]) -> Narrow:
    """A :data:`Narrow` that keeps, in each group ``(start, end, count)`` of the
    recomputed positions (indices ``start..end-1`` into them, groups disjoint), the
    ``count`` with the largest deviation (ties: the earlier one); indices not in any
    group (e.g. tokens of chunks that missed, which must be computed whole) are all
    kept. CacheBlend's per-chunk selection. O(S log S)."""

    def narrow(deviation: torch.Tensor) -> torch.Tensor:
        size = int(deviation.numel())
        keep = torch.ones(size, dtype=torch.bool)
        dev = deviation.detach().to("cpu", torch.float64)
        for start, end, count in groups:
            if not 0 <= start <= end <= size:
                raise ValueError(f"group [{start}, {end}) outside the {size} positions")
            keep[start:end] = False
            if count <= 0:
                continue
            # Stable descending sort: equal deviations keep the earlier position.
            order = torch.sort(-dev[start:end], stable=True).indices[:count]
            keep[start + order] = True
        return torch.nonzero(keep).view(-1)

    return narrow


@torch.no_grad()
def recompute(
    model: Any,
    cache: DynamicCache,
    token_ids: Sequence[int] | torch.Tensor,
    positions: Sequence[int] | torch.Tensor,
    *,
    narrow: Narrow | None = None,
    narrow_layer: int = 0,
) -> torch.Tensor:
    """Recompute the tokens ``token_ids`` at the absolute ``positions`` (strictly
    ascending, inside the cache) layer by layer, writing their fresh K/V into ``cache``
    in place. Returns their final hidden states ``[1, len(positions), hidden]`` after
    the model's last norm (feed them to ``lm_head`` for logits).

    Each selected token attends to every cache position ≤ its own, so with all
    positions selected over an :func:`empty_cache` the result is the model's own
    prefill. Cost O(layers · |S| · N) attention plus |S| tokens of projections and MLP,
    for |S| selected tokens in an N-position cache.

    With ``narrow`` (CacheBlend's selective recompute): at layer ``narrow_layer`` the
    fresh K/V of all S positions are compared with what the cache held there
    (:func:`kv_deviation`), written into the cache, and ``narrow(deviation)`` names
    the positions that go on through the later layers; the others keep their cached
    K/V there. The result then covers only the kept positions. Cost: S tokens through
    layers 0..narrow_layer, the kept ones through the rest.
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
        v = v.transpose(1, 2)
        keep: torch.Tensor | None = None
        if narrow is not None and i == narrow_layer:
            keep = narrow(kv_deviation(keys, values, k, v, pos))
        keys.index_copy_(2, pos, k.to(keys.dtype))
        values.index_copy_(2, pos, v.to(values.dtype))
        if keep is not None:
            keep = keep.to(device=device, dtype=torch.long)
            pos, q, residual, mask = pos[keep], q[:, :, keep], residual[:, keep], mask[keep]
            cos, sin = cos[:, :, keep], sin[:, :, keep]
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


@dataclass(frozen=True, slots=True)
class Selection:
    """What a selective recompute runs: ``positions`` (absolute, ascending) go through
    the model, and, when ``groups`` is not empty, each group ``(start, end, count)`` of
    them (indices into ``positions``) is narrowed to its ``count`` most deviating
    tokens at :data:`CHECK_LAYER` (:func:`top_per_group`)."""

    positions: list[int] = field(default_factory=list)
    groups: list[tuple[int, int, int]] = field(default_factory=list)

    def token_layers(self, layers: int) -> float:
        """Token-layers through the model: a narrowed group's tokens all pass layers
        0..CHECK_LAYER and its kept ones the rest; other positions pass every layer."""
        grouped = sum(end - start for start, end, _ in self.groups)
        kept = sum(count for _, _, count in self.groups)
        early = min(CHECK_LAYER + 1, layers)
        whole = len(self.positions) - grouped
        return float(whole * layers + grouped * early + kept * (layers - early))

    def run(self, model: Any, cache: DynamicCache, prompt_ids: torch.Tensor) -> None:
        """Recompute the selection inside ``cache`` (``prompt_ids``: every token id of
        the cached span, indexed by absolute position). Nothing to do when empty."""
        if not self.positions:
            return
        narrow = top_per_group(self.groups) if self.groups else None
        ids = prompt_ids[self.positions]
        recompute(model, cache, ids, self.positions, narrow=narrow, narrow_layer=CHECK_LAYER)


def select_tokens(
    chunks: Sequence[tuple[int, int, Sequence[int] | None]], *, by_deviation: bool = False
) -> Selection:
    """The :class:`Selection` for a prompt's chunks, each ``(start, end, picked)`` with
    absolute bounds, in prompt order: ``picked`` None for a chunk computed whole (a
    miss), else the positions within the chunk to recompute (a planner's choice; empty
    for an exact reuse).

    ``by_deviation`` (CacheBlend's rule applied to a planner's budget): a chunk with k
    picked positions has all its tokens checked at :data:`CHECK_LAYER` and the k whose
    K/V deviate most from the cache there recomputed, instead of the k picked: the
    planner's statistics decide how many, the measured deviation which. It costs every
    such token CHECK_LAYER + 1 layers, about 2/30 of a full recompute on SmolLM2.
    O(total positions)."""
    out = Selection()
    for start, end, picked in chunks:
        if picked is None:
            out.positions.extend(range(start, end))
        elif by_deviation and len(picked):
            first = len(out.positions)
            out.groups.append((first, first + end - start, len(picked)))
            out.positions.extend(range(start, end))
        else:
            out.positions.extend(start + int(t) for t in sorted(picked))
    if any(b <= a for a, b in zip(out.positions, out.positions[1:], strict=False)):
        raise ValueError("chunks must be in prompt order, disjoint, picks inside their chunk")
    return out
