"""A RAG prefill that reuses chunk KV through the daemon: store what is missing, plan,
fetch, shift, assemble, recompute what the planner names, then run the question.

This ties :mod:`semcached.clients.hf_kv` (layout, RoPE, statistics) and
:mod:`semcached.clients.hf_forward` (the partial forward) to a
:class:`~semcached.clients.SemcachedClient`. A prompt is given as parts: system prompt,
retrieved chunks in prompt order (token ids), question.

Missing chunks are computed as Cache-Craft stores them: after the prefix they are
served with in this prompt. One model pass over system + chunks up to the last miss
yields every missing chunk's KV and statistics at once, and that pass is the exact
prefill of that span, so it is used as is; only the hits after the last miss are
reused (fetched, RoPE-shifted, recomputed where planned). The system prompt is not a
chunk: when every chunk hits it is computed fresh (it is short and shared by all).

On a CUDA model the plan names the model's GPU (``device=``, its UUID), so the
daemon hands the hot chunks over as CUDA IPC handles: they are read where they lie
in the daemon's GPU memory and never cross to the host
(:meth:`~semcached.clients.SemcachedClient.fetch_tensor`); the others are copied
from shared memory or HTTP to the GPU. A daemon without a GPU tier (or without this
GPU in it) answers 400 once, and the adapter then plans without a device. On the
CPU nothing changes: shared-memory views or HTTP copies, as before.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import DynamicCache

from semcached.clients.hf_forward import recompute, select_tokens
from semcached.clients.hf_kv import (
    KV_DTYPES,
    ChunkKv,
    RopeShifter,
    assemble_cache,
    cache_kwargs,
    cache_slice,
    from_blob,
    prompt_chunks_kv,
)
from semcached.clients.kv import KvPlan, LeaseInfo, PlannedChunk
from semcached.clients.sync import SemcachedClient
from semcached.errors import BadRequestError
from semcached.protocol.codes import ErrorCode
from semcached.protocol.keys import chunk_key

log = logging.getLogger("semcached.clients")
_NO_DEVICE_TIER = frozenset({ErrorCode.GPU_TIER_OFF, ErrorCode.UNKNOWN_DEVICE})

__all__ = ["HfKvAdapter", "RagPrefill"]


@dataclass(frozen=True, slots=True, eq=False)
class RagPrefill:
    """What one prefill did. ``logits`` ``[1, question_tokens, vocab]``; ``cache``
    covers the whole prompt (system, chunks, question), ready for decoding;
    ``stored`` the indices of the chunks computed and stored; ``reused`` those taken
    from the daemon; ``recomputed`` the absolute positions the plan named (with
    ``check_deviation``, as many per chunk were recomputed, chosen by the check);
    ``transfers`` how each reused chunk came: ``cuda`` (read in the daemon's GPU
    memory), ``shm`` or ``http``."""

    logits: torch.Tensor
    cache: DynamicCache
    plan: KvPlan
    stored: tuple[int, ...]
    reused: tuple[int, ...]
    recomputed: tuple[int, ...]
    prompt_tokens: int
    transfers: tuple[str, ...] = ()


def _ids(tokens: Sequence[int] | torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(tokens, dtype=torch.long).view(-1)


class HfKvAdapter:
    """Prefill and greedy generation for one transformers model with chunk KV reuse.

    ``model_id`` and ``tokenizer_id`` name the KV in the daemon (they go into every
    chunk key, so they must be what the daemon's ``[kv_models]`` declares and must
    change whenever the weights or the tokenizer do); ``dtype`` is the stored blob
    dtype (float32 reproduces the model's own KV bit for bit; float16/bfloat16 halve
    the bytes at a small quality cost). ``device_handles`` (a CUDA model only): ask
    the daemon for CUDA IPC handles on the model's GPU (False: copy every reused chunk
    from shared memory or HTTP to the GPU, e.g. to compare the two).
    ``check_deviation``: recompute, in each reused chunk, as many tokens as the plan
    names but chosen by CacheBlend's rule (those whose K/V deviate most at
    :data:`~semcached.clients.hf_forward.CHECK_LAYER`, every token of such a chunk
    computed up to it: about 2/30 of the chunk's full cost more on SmolLM2) instead of
    the plan's own ranking by stored attention.
    """

    def __init__(
        self,
        client: SemcachedClient,
        model: Any,
        *,
        model_id: str,
        tokenizer_id: str,
        dtype: str = "float32",
        lease_s: float | None = None,
        device_handles: bool = True,
        check_deviation: bool = False,
    ) -> None:
        if dtype not in KV_DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(KV_DTYPES)}, got {dtype!r}")
        self.client = client
        self.model = model
        self.model_id = model_id
        self.tokenizer_id = tokenizer_id
        self.dtype = dtype
        self.lease_s = lease_s
        self.shifter = RopeShifter(model)
        first = next(model.parameters())
        self._model_dtype: torch.dtype = first.dtype
        self.device: torch.device = first.device
        self._on_gpu = self.device.type == "cuda"
        self.device_handles = device_handles and self._on_gpu
        self.check_deviation = check_deviation

    def key(self, chunk: Sequence[int] | torch.Tensor) -> bytes:
        """The chunk key of ``chunk``'s token ids under this model, tokenizer and dtype."""
        return chunk_key(self.model_id, self.tokenizer_id, self.dtype, _ids(chunk).numpy())

    def _forward(self, ids: torch.Tensor, cache: DynamicCache) -> torch.Tensor:
        kwargs = cache_kwargs(self.model, cache)
        out = self.model(input_ids=ids.view(1, -1).to(self.device), use_cache=True, **kwargs)
        logits: torch.Tensor = out.logits
        return logits

    def _plan(self, keys: Sequence[bytes], lengths: Sequence[int], start: int) -> KvPlan:
        if self.device_handles:
            try:
                return self.client.plan(
                    self.model_id,
                    keys,
                    chunk_tokens=lengths,
                    start=start,
                    lease_s=self.lease_s,
                    device=self.device,
                )
            except BadRequestError as exc:
                if exc.code not in _NO_DEVICE_TIER:
                    raise
                log.warning("no GPU handles from the daemon (%s); copying chunks to the GPU", exc)
                self.device_handles = False
        return self.client.plan(
            self.model_id, keys, chunk_tokens=lengths, start=start, lease_s=self.lease_s
        )

    def _fetch(self, planned: PlannedChunk, lease: LeaseInfo | None) -> tuple[torch.Tensor, str]:
        """A hit's KV on the model's device, and how it came."""
        if self._on_gpu:
            got = self.client.fetch_tensor(planned, lease, device=self.device)
            return got.tensor, got.transfer
        blob = self.client.fetch(planned, lease)
        return from_blob(blob.array(), blob.meta.dtype), "shm" if blob.zero_copy else "http"

    @torch.no_grad()
    def prefill(
        self,
        system_ids: Sequence[int] | torch.Tensor,
        chunks: Sequence[Sequence[int] | torch.Tensor],
        question_ids: Sequence[int] | torch.Tensor,
    ) -> RagPrefill:
        """Prefill system + chunks + question, reusing stored chunk KV per the plan."""
        system, pieces, question = _ids(system_ids), [_ids(c) for c in chunks], _ids(question_ids)
        if not pieces or any(p.numel() == 0 for p in pieces):
            raise ValueError("need at least one chunk, and no empty chunk")
        if question.numel() == 0:
            raise ValueError("the question is empty")
        keys = [self.key(p) for p in pieces]
        lengths = [int(p.numel()) for p in pieces]
        bounds = [int(system.numel())]
        for n in lengths:
            bounds.append(bounds[-1] + n)
        plan = self._plan(keys, lengths, bounds[0])
        misses = [i for i, c in enumerate(plan.chunks) if not c.hit]
        last_miss = misses[-1] if misses else -1
        stored: list[int] = []
        parts: list[torch.Tensor] = []
        reused: list[int] = []
        recomputed: list[int] = []
        picks: list[tuple[int, int, list[int]]] = []
        transfers: list[str] = []
        try:
            if last_miss >= 0:
                computed, exact = prompt_chunks_kv(self.model, system, pieces[: last_miss + 1])
                for i in misses:
                    self._store(keys[i], keys[:i], computed[i])
                    stored.append(i)
                parts.append(cache_slice(exact))
            elif system.numel():
                parts.append(cache_slice(self._prefill_only(system)))
            for i in range(last_miss + 1, len(pieces)):
                planned = plan.chunks[i]
                if planned.position is not None and planned.position != bounds[i]:
                    raise ValueError(f"plan puts chunk {i} at {planned.position}, not {bounds[i]}")
                kv, how = self._fetch(planned, plan.lease)
                transfers.append(how)
                base = int(planned.rope_base or 0)
                parts.append(self.shifter.shift_kv(kv, base, bounds[i]))
                reused.append(i)
                recomputed.extend(bounds[i] + int(r) for r in planned.recompute)
                picks.append((bounds[i], bounds[i + 1], [int(r) for r in planned.recompute]))
            # Copies: the chunks' handles may end with the lease below.
            cache = assemble_cache(parts, self.model.config, self._model_dtype)
        finally:
            if plan.lease is not None:
                self.client.release_lease(plan.lease.id)
        if recomputed and self.check_deviation:
            selection = select_tokens(picks, by_deviation=True)
            selection.run(self.model, cache, torch.cat([system, *pieces]).to(self.device))
        elif recomputed:
            prompt = torch.cat([system, *pieces])
            recompute(self.model, cache, prompt[recomputed], recomputed)
        logits = self._forward(question, cache)
        return RagPrefill(
            logits=logits,
            cache=cache,
            plan=plan,
            stored=tuple(stored),
            reused=tuple(reused),
            recomputed=tuple(recomputed),
            prompt_tokens=bounds[-1] + int(question.numel()),
            transfers=tuple(transfers),
        )

    def _prefill_only(self, ids: torch.Tensor) -> DynamicCache:
        cache = DynamicCache(config=self.model.config)
        kwargs = cache_kwargs(self.model, cache)
        self.model(
            input_ids=ids.view(1, -1).to(self.device), use_cache=True, logits_to_keep=1, **kwargs
        )
        return cache

    def _store(self, key: bytes, prefix: Sequence[bytes], chunk: ChunkKv) -> None:
        meta = chunk.put_meta(self.model_id, self.dtype, prefix, self.shifter.params)
        self.client.put_chunk(key, chunk.blob(self.dtype), meta)

    @torch.no_grad()
    def generate(
        self,
        system_ids: Sequence[int] | torch.Tensor,
        chunks: Sequence[Sequence[int] | torch.Tensor],
        question_ids: Sequence[int] | torch.Tensor,
        max_new_tokens: int,
        eos_token_id: int | None = None,
    ) -> list[int]:
        """Greedy continuation of the prompt (at most ``max_new_tokens``, stopping after
        ``eos_token_id``), decoding on the prefilled cache one token at a time."""
        result = self.prefill(system_ids, chunks, question_ids)
        out: list[int] = []
        logits = result.logits
        while len(out) < max_new_tokens:
            token = int(logits[0, -1].argmax())
            out.append(token)
            if token == eos_token_id or len(out) == max_new_tokens:
                break
            logits = self._forward(torch.tensor([token]), result.cache)
        return out
