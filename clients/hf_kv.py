"""HuggingFace transformers side of the chunk KV cache: layout, RoPE shifts, and
Cache-Craft statistics for Llama-family causal LMs with rotary position embeddings.

The daemon stores a chunk's KV as one blob ``[layers, 2, kv_heads, tokens, head_dim]``
(keys after RoPE at the positions they were computed at; see
:mod:`semcached.protocol.keys`). A transformers model keeps its KV in a
``DynamicCache`` whose ``layers[i].keys`` / ``.values`` are ``[batch, kv_heads, T,
head_dim]``. This module converts between the two (:func:`cache_slice`,
:func:`to_blob`, :func:`from_blob`, :func:`assemble_cache`), moves cached keys to new
positions (:class:`RopeShifter`), and computes a chunk's KV together with the
statistics the planner needs (:func:`prompt_chunks_kv`, :func:`chunk_kv`).

Version pin: the model is called with the new ``cache=`` argument where its ``forward``
has one (transformers 5.24 renamed ``past_key_values=``, which warns there and is
removed in 5.40), else with ``past_key_values=`` (:func:`cache_kwargs` picks). The
``kv`` extra still pins ``transformers<5.40``: this module reads
``DynamicCache.layers[i].keys/.values`` and the decoder's submodules, internals that
may move in a later release; it was written and tested against 5.24.

Batch size is 1 throughout: a RAG prompt is one sequence.

Why one module of about 470 lines: layout, RoPE shift and statistics are one contract
(a blob's keys are rotated at the positions its statistics were measured at, and
:class:`ChunkKv` carries both), and this module is the adapter's one import surface
(:mod:`~semcached.clients.hf_adapter`, ``bench/rag_reuse.py``, the README). The cut,
when it grows, is the statistics pass (:class:`ChunkKv`, :func:`prompt_chunks_kv`,
:func:`chunk_kv`, the last third) into a module of its own.
"""

from __future__ import annotations

import contextlib
import inspect
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from transformers import DynamicCache

from semcached.clients.kv import ChunkPutMeta, put_meta

__all__ = [
    "KV_DTYPES",
    "SHIFTABLE_ROPE_TYPES",
    "ChunkKv",
    "Decoder",
    "RopeShifter",
    "UnsupportedModelError",
    "apply_rope",
    "assemble_cache",
    "cache_from_kv",
    "cache_kwargs",
    "cache_length",
    "cache_slice",
    "chunk_kv",
    "decoder",
    "from_blob",
    "layer_kv",
    "prompt_chunks_kv",
    "to_blob",
]

KV_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}
"""Blob dtype names (as the daemon spells them) and their torch dtypes."""

SHIFTABLE_ROPE_TYPES = frozenset({"default", "linear", "llama3"})
"""RoPE variants whose rotation angle is a fixed per-dimension frequency times the
position, with no output scaling: only for those is a position shift a pure rotation.
``dynamic`` changes its frequencies with the sequence length, ``yarn``/``longrope``
scale cos/sin, so shifting keys cached under them would be wrong."""


class UnsupportedModelError(ValueError):
    """The model is not a Llama-family decoder this adapter can drive exactly."""


@dataclass(frozen=True, slots=True)
class Decoder:
    """The submodules of a Llama-family causal LM that the adapter drives itself.

    Typed ``Any``: transformers builds them per architecture, and the adapter only
    relies on the Llama contract (embed_tokens, layers[i].self_attn.{q,k,v,o}_proj,
    input/post_attention_layernorm, mlp, norm, rotary_emb, lm_head).
    """

    embed: Any
    layers: Sequence[Any]
    norm: Any
    rotary: Any
    lm_head: Any
    config: Any

    @property
    def heads(self) -> int:
        return int(self.config.num_attention_heads)

    @property
    def kv_heads(self) -> int:
        return int(self.config.num_key_value_heads)

    @property
    def head_dim(self) -> int:
        return int(self.layers[0].self_attn.head_dim)


def decoder(model: Any) -> Decoder:
    """The parts of ``model`` (a ``*ForCausalLM`` or its bare ``*Model``), or
    UnsupportedModelError when it lacks the Llama layout or uses what the layer-wise
    forward does not reproduce (per-head q/k norms, sliding windows)."""
    base = getattr(model, "model", model)
    needed = ("embed_tokens", "layers", "norm", "rotary_emb")
    if not all(hasattr(base, name) for name in needed):
        raise UnsupportedModelError(
            f"{type(model).__name__} is not a Llama-family decoder (needs {', '.join(needed)})"
        )
    config = model.config
    attn = base.layers[0].self_attn
    if hasattr(attn, "q_norm") or hasattr(attn, "k_norm"):
        raise UnsupportedModelError(f"{type(model).__name__}: per-head q/k norms are not handled")
    if getattr(config, "sliding_window", None) is not None:
        raise UnsupportedModelError(
            f"{type(model).__name__}: sliding-window attention is not handled"
        )
    return Decoder(
        embed=base.embed_tokens,
        layers=list(base.layers),
        norm=base.norm,
        rotary=base.rotary_emb,
        lm_head=getattr(model, "lm_head", None),
        config=config,
    )


_CACHE_ARG: dict[type, str] = {}


def cache_kwargs(model: Any, cache: DynamicCache) -> dict[str, Any]:
    """The keyword that passes ``cache`` to ``model(...)``: ``cache=`` where the model's
    ``forward`` takes it (no deprecation warning), else ``past_key_values=``."""
    model_type: type = type(model)
    name = _CACHE_ARG.get(model_type)
    if name is None:
        params = inspect.signature(inspect.unwrap(model.forward)).parameters
        name = _CACHE_ARG[model_type] = "cache" if "cache" in params else "past_key_values"
    return {name: cache}


# --- layout ------------------------------------------------------------------------


def cache_length(cache: DynamicCache) -> int:
    """How many positions ``cache`` covers."""
    return int(cache.get_seq_length())


def layer_kv(cache: DynamicCache, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The keys and values tensors ``[1, kv_heads, T, head_dim]`` of one layer of
    ``cache`` (the tensors themselves: writes go into the cache)."""
    stored: Any = cache.layers[layer]
    keys, values = getattr(stored, "keys", None), getattr(stored, "values", None)
    if not isinstance(keys, torch.Tensor) or not isinstance(values, torch.Tensor):
        raise ValueError(f"layer {layer} of the cache holds no key/value tensors")
    if keys.dim() != 4 or keys.shape[0] != 1:
        raise ValueError(f"expected batch size 1, got keys shaped {tuple(keys.shape)}")
    return keys, values


def cache_slice(cache: DynamicCache, start: int = 0, end: int | None = None) -> torch.Tensor:
    """Positions ``[start, end)`` of ``cache`` as one tensor ``[layers, 2, kv_heads,
    tokens, head_dim]`` (a copy, in the cache's dtype). Batch 1 only."""
    per_layer = []
    for i in range(len(cache.layers)):
        keys, values = layer_kv(cache, i)
        per_layer.append(torch.stack((keys[0, :, start:end], values[0, :, start:end])))
    return torch.stack(per_layer)


def to_blob(kv: torch.Tensor, dtype: str = "float32") -> NDArray[Any]:
    """``kv`` ``[layers, 2, kv_heads, tokens, head_dim]`` as the C-contiguous numpy array
    the daemon stores, in ``dtype``. bfloat16 has no numpy dtype: it comes as ``uint16``
    holding the same bits (what :meth:`semcached.clients.kv.KvChunk.array` returns)."""
    if kv.dim() != 5 or kv.shape[1] != 2:
        raise ValueError(f"expected [layers, 2, kv_heads, tokens, head_dim], got {tuple(kv.shape)}")
    t = kv.detach().to(device="cpu", dtype=KV_DTYPES[dtype]).contiguous()
    if dtype == "bfloat16":
        t = t.view(torch.int16)
        return t.numpy().view(np.uint16)
    return t.numpy()


def from_blob(blob: NDArray[Any], dtype: str = "float32") -> torch.Tensor:
    """A stored blob (numpy ``[layers, 2, kv_heads, tokens, head_dim]``, possibly a
    read-only shared-memory view) as a torch tensor sharing its memory: no copy.

    The result must be treated as read-only (torch has no read-only tensors; the callers
    here only read it, then copy by rotation or concatenation)."""
    array = np.asarray(blob)
    if dtype == "bfloat16":
        array = array.view(np.int16)
    with warnings.catch_warnings():
        # torch warns that it cannot mark the tensor read-only; it is only read.
        warnings.filterwarnings("ignore", message=".*not writable.*")
        tensor = torch.from_numpy(array)
    if dtype == "bfloat16":
        tensor = tensor.view(torch.bfloat16)
    elif tensor.dtype != KV_DTYPES[dtype]:
        raise ValueError(f"blob holds {tensor.dtype}, not {dtype}")
    return tensor


def cache_from_kv(kv: torch.Tensor, config: Any, dtype: torch.dtype | None = None) -> DynamicCache:
    """A ``DynamicCache`` holding ``kv`` ``[layers, 2, kv_heads, tokens, head_dim]``
    (copied, cast to ``dtype`` when given). Its tensors are fresh and writable, so the
    layer-wise forward can overwrite positions in place."""
    return assemble_cache([kv], config, dtype)


def assemble_cache(
    parts: Sequence[torch.Tensor], config: Any, dtype: torch.dtype | None = None
) -> DynamicCache:
    """One ``DynamicCache`` covering the ``parts`` (each ``[layers, 2, kv_heads, T_i,
    head_dim]``, already at their final positions) back to back: one copy per layer."""
    if not parts:
        raise ValueError("nothing to assemble")
    dtype = dtype or parts[0].dtype
    cache = DynamicCache(config=config)
    for i in range(parts[0].shape[0]):
        # DynamicLayer.update copies (it concatenates onto an empty tensor), so views
        # suffice for one part; several are joined per layer first.
        keys = torch.cat([p[i, 0].to(dtype) for p in parts], dim=1)
        values = torch.cat([p[i, 1].to(dtype) for p in parts], dim=1)
        cache.update(keys.unsqueeze(0), values.unsqueeze(0), i)
    return cache


# --- RoPE ----------------------------------------------------------------------------


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` ``[..., T, head_dim]`` by the model's ``cos``/``sin`` (``[..., T,
    head_dim]``, broadcast over heads): the half-split rotation Llama uses."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


class RopeShifter:
    """Moves cached keys from the positions they were computed at to new ones.

    RoPE rotates each key pair by position times frequency, so a key at ``old`` becomes the
    key at ``new`` by undoing the rotation at ``old`` and applying the one at ``new``.
    Both rotations use cos/sin from the model's own rotary embedding (float32, as the
    model computes them), so a shifted key matches the key the model computes at the
    new position up to float rounding. Values carry no position and are left alone.

    Raises UnsupportedModelError for RoPE variants where a shift is not a pure rotation
    (see :data:`SHIFTABLE_ROPE_TYPES`) or partial rotary dimensions.
    """

    def __init__(self, model: Any) -> None:
        self._rotary = decoder(model).rotary
        rope_type = str(getattr(self._rotary, "rope_type", "default"))
        self.rope_type = rope_type
        if rope_type not in SHIFTABLE_ROPE_TYPES:
            raise UnsupportedModelError(
                f"RoPE type {rope_type!r} cannot be shifted exactly "
                f"(supported: {', '.join(sorted(SHIFTABLE_ROPE_TYPES))})"
            )
        if float(getattr(self._rotary, "attention_scaling", 1.0)) != 1.0:
            raise UnsupportedModelError("RoPE with attention scaling cannot be shifted exactly")
        head_dim = decoder(model).head_dim
        if 2 * int(self._rotary.inv_freq.numel()) != head_dim:
            raise UnsupportedModelError("partial rotary embeddings are not handled")

    @property
    def params(self) -> dict[str, Any]:
        """The RoPE parameters as stored with a chunk (``rope`` metadata): a reader can
        tell whether cached keys were rotated the way its model rotates."""
        rope = dict(getattr(getattr(self._rotary, "config", None), "rope_parameters", None) or {})
        return {"type": self.rope_type, **{k: v for k, v in rope.items() if k != "rope_type"}}

    def cos_sin(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The model's float32 cos/sin ``[T, head_dim]`` at ``positions`` ``[T]``."""
        probe = torch.empty(0, dtype=torch.float32, device=self._rotary.inv_freq.device)
        cos, sin = self._rotary(probe, positions.view(1, -1))
        return cos[0], sin[0]

    def shift_keys(self, keys: torch.Tensor, old_base: int, new_base: int) -> torch.Tensor:
        """``keys`` ``[..., T, head_dim]`` computed at ``old_base + t`` moved to
        ``new_base + t`` (a new tensor, same dtype; rotated in float32)."""
        if old_base == new_base:
            return keys
        t = keys.shape[-2]
        steps = torch.arange(t, device=keys.device)
        cos_old, sin_old = self.cos_sin(steps + old_base)
        cos_new, sin_new = self.cos_sin(steps + new_base)
        k = keys.to(torch.float32)
        raw = apply_rope(k, cos_old, -sin_old)  # the inverse rotation
        return apply_rope(raw, cos_new, sin_new).to(keys.dtype)

    def shift_kv(self, kv: torch.Tensor, old_base: int, new_base: int) -> torch.Tensor:
        """A blob-shaped ``kv`` ``[layers, 2, kv_heads, T, head_dim]`` with its keys moved
        from ``old_base`` to ``new_base``; values shared, not copied, when unshifted."""
        if old_base == new_base:
            return kv
        keys = self.shift_keys(kv[:, 0], old_base, new_base)
        return torch.stack((keys, kv[:, 1].to(keys.dtype)), dim=1)


# --- chunk KV with Cache-Craft statistics ------------------------------------------------


@dataclass(frozen=True, slots=True, eq=False)
class ChunkKv:
    """One chunk's KV as computed after its prefix, with the statistics
    :meth:`semcached.clients.SemcachedClient.put_chunk` stores for the planner.

    ``kv`` is ``[layers, 2, kv_heads, tokens, head_dim]`` (keys post-RoPE at
    ``rope_base + t``). All statistics are averaged over layers and heads: ``inter[j]``
    is the summed attention from the chunk's tokens to prefix chunk j's tokens,
    ``intra`` the summed causal attention among the chunk's own tokens,
    ``token_scores[t]`` token t's total attention to all prefix chunks (not to the
    system prompt, which every variant shares).
    """

    kv: torch.Tensor
    rope_base: int
    prefix_tokens: tuple[int, ...]
    inter: NDArray[np.float32]
    intra: float
    token_scores: NDArray[np.float32]

    @property
    def tokens(self) -> int:
        return int(self.kv.shape[3])

    def blob(self, dtype: str = "float32") -> NDArray[Any]:
        """The bytes to store, as :func:`to_blob` lays them out."""
        return to_blob(self.kv, dtype)

    def put_meta(
        self, model: str, dtype: str, prefix: Sequence[bytes], rope: Mapping[str, Any]
    ) -> ChunkPutMeta:
        """What ``put_chunk`` stores with :meth:`blob` ``(dtype)``: the shape, positions
        and statistics, with ``prefix`` (the prefix chunks' keys, which only the caller
        knows), the ``model`` id it is stored under and the ``rope`` parameters
        (:attr:`RopeShifter.params`)."""
        return put_meta(
            model,
            dtype,
            self.kv.shape,
            prefix=prefix,
            prefix_tokens=self.prefix_tokens,
            rope_base=self.rope_base,
            rope=rope,
            inter=self.inter,
            intra=self.intra,
            token_scores=self.token_scores,
        )


@contextlib.contextmanager
def _eager_attention(model: Any) -> Iterator[None]:
    """Eager attention for the duration: only it materialises attention weights
    (SDPA and flash kernels return none)."""
    before = getattr(model.config, "_attn_implementation", "eager")
    if before == "eager":
        yield
        return
    model.set_attn_implementation("eager")
    try:
        yield
    finally:
        model.set_attn_implementation(before)


def _as_ids(ids: Sequence[int] | torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(ids, dtype=torch.long).view(-1)


@torch.no_grad()
def prompt_chunks_kv(
    model: Any,
    system_ids: Sequence[int] | torch.Tensor,
    chunks: Sequence[Sequence[int] | torch.Tensor],
) -> tuple[list[ChunkKv], DynamicCache]:
    """Run ``model`` once over system + chunks (in order) and return every chunk's
    :class:`ChunkKv` (chunk i computed after chunks[:i]) and the full-prefill cache.

    One pass serves all chunks: chunk i's rows of the causal attention see exactly
    system + chunks[:i]. Attention weights are taken per layer by a hook on each
    attention module and reduced at once to a layer- and head-averaged ``[T, T]``
    matrix, so memory stays O(heads·T²) instead of the O(layers·heads·T²) that
    ``output_attentions=True`` would hold. Needs eager attention; switched to it for
    the call when the model uses another implementation.
    """
    parts = decoder(model)
    system = _as_ids(system_ids)
    pieces = [_as_ids(c) for c in chunks]
    if not pieces or any(p.numel() == 0 for p in pieces):
        raise ValueError("need at least one chunk, and no empty chunk")
    ids = torch.cat([system, *pieces]).view(1, -1)
    total = ids.shape[1]
    device = parts.embed.weight.device
    summed = torch.zeros(total, total, dtype=torch.float64, device=device)
    seen = 0

    def hook(_module: Any, _args: Any, output: Any) -> None:
        nonlocal summed, seen
        weights = output[1] if isinstance(output, tuple) and len(output) > 1 else None
        if weights is None:
            raise UnsupportedModelError("the attention module returned no weights (eager needed)")
        summed += weights[0].to(torch.float64).mean(dim=0)
        seen += 1

    handles = [layer.self_attn.register_forward_hook(hook) for layer in parts.layers]
    try:
        with _eager_attention(model):
            cache = DynamicCache(config=model.config)
            kwargs = cache_kwargs(model, cache)
            model(input_ids=ids.to(device), use_cache=True, logits_to_keep=1, **kwargs)
    finally:
        for handle in handles:
            handle.remove()
    if seen != len(parts.layers):
        raise UnsupportedModelError(
            f"saw attention weights of {seen} of {len(parts.layers)} layers"
        )
    attention = (summed / seen).cpu().numpy()

    bounds = [int(system.numel())]
    for p in pieces:
        bounds.append(bounds[-1] + int(p.numel()))
    out: list[ChunkKv] = []
    for i in range(len(pieces)):
        start, end = bounds[i], bounds[i + 1]
        rows = attention[start:end]
        inter = np.array(
            [rows[:, bounds[j] : bounds[j + 1]].sum() for j in range(i)], dtype=np.float32
        )
        intra = float(rows[:, start:end].sum())
        scores = rows[:, bounds[0] : start].sum(axis=1).astype(np.float32)
        out.append(
            ChunkKv(
                kv=cache_slice(cache, start, end),
                rope_base=start,
                prefix_tokens=tuple(int(pieces[j].numel()) for j in range(i)),
                inter=inter,
                intra=intra,
                token_scores=scores,
            )
        )
    return out, cache


def chunk_kv(
    model: Any,
    system_ids: Sequence[int] | torch.Tensor,
    prefix_chunks: Sequence[Sequence[int] | torch.Tensor],
    chunk_ids: Sequence[int] | torch.Tensor,
) -> ChunkKv:
    """The KV and statistics of ``chunk_ids`` computed after system + ``prefix_chunks``
    (the chunks it is served after, in order): what Cache-Craft stores as one variant."""
    computed, _ = prompt_chunks_kv(model, system_ids, [*prefix_chunks, chunk_ids])
    return computed[-1]
