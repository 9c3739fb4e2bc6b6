"""The chunk KV cache's replies: the engine's records as :mod:`semcached.protocol.kv` structs."""

from __future__ import annotations

import base64
from typing import Any

from semcached.index.kv_meta import VariantMeta
from semcached.index.kv_tiers import CudaHandle, ShmHandle
from semcached.protocol.headers import KV_META_HEADER
from semcached.protocol.kv import (
    ChunkMeta,
    KvCudaHandle,
    KvFetch,
    KvLease,
    KvLeasedChunk,
    KvPlan,
    KvPlanChunk,
    KvShmHandle,
)
from semcached.service.http.jsonio import encode
from semcached.service.kv.engine import ChunkPlan, Lease, LeasedBlob, Plan

__all__ = [
    "cuda_handle",
    "lease_reply",
    "leased_reply",
    "meta_fields",
    "meta_header",
    "plan_reply",
    "shm_handle",
]


def meta_fields(meta: VariantMeta) -> dict[str, Any]:
    return {
        "key": meta.chunk.hex(),
        "variant": meta.variant.hex(),
        "model": meta.model,
        "dtype": meta.dtype,
        "shape": meta.shape,
        "tokens": meta.tokens,
        "nbytes": meta.nbytes,
        "prefix": tuple(k.hex() for k in meta.prefix),
        "prefix_tokens": meta.prefix_tokens,
        "rope_base": meta.rope_base,
        "rope": meta.rope,
        "created_at": meta.created_at,
        "hits": meta.hits,
        "last_access": meta.last_access,
    }


def meta_header(meta: VariantMeta) -> dict[str, str]:
    return {KV_META_HEADER: encode(ChunkMeta(**meta_fields(meta))).decode()}


def shm_handle(handle: ShmHandle) -> KvShmHandle:
    return KvShmHandle(handle.segment, handle.offset, handle.length)


def cuda_handle(handle: CudaHandle) -> KvCudaHandle:
    return KvCudaHandle(
        device=handle.device,
        device_index=handle.device_index,
        ipc_handle=base64.b64encode(handle.ipc_handle).decode(),
        offset=handle.offset,
        length=handle.length,
    )


def lease_reply(lease: Lease) -> KvLease:
    return KvLease(lease.id, lease.expires_at, lease.ttl_s)


def leased_reply(leased: LeasedBlob) -> KvLeasedChunk:
    handle = leased.handle
    return KvLeasedChunk(
        **meta_fields(leased.meta),
        lease=lease_reply(leased.lease),
        shm=shm_handle(handle) if isinstance(handle, ShmHandle) else None,
        cuda=cuda_handle(handle) if isinstance(handle, CudaHandle) else None,
    )


def _plan_chunk(c: ChunkPlan) -> KvPlanChunk:
    d, meta = c.decision, c.meta
    fetch = None
    if meta is not None:
        assert c.tier is not None  # a hit was found in a tier
        handle = c.handle
        fetch = KvFetch(
            tier=c.tier,
            http=f"/v1/kv/chunks/{meta.chunk.hex()}?variant={meta.variant.hex()}",
            nbytes=meta.nbytes,
            dtype=meta.dtype,
            shape=meta.shape,
            shm=shm_handle(handle) if isinstance(handle, ShmHandle) else None,
            cuda=cuda_handle(handle) if isinstance(handle, CudaHandle) else None,
        )
    return KvPlanChunk(
        key=d.key.hex(),
        hit=d.hit,
        variant=None if d.variant is None else d.variant.hex(),
        exact_prefix=d.exact_prefix,
        tokens=c.tokens,
        position=c.position,
        rope_base=None if meta is None else meta.rope_base,
        rope_shift=c.rope_shift,
        beta=d.beta,
        gamma=d.gamma,
        beta_prime=d.beta_prime,
        cci=d.cci,
        cfo=d.cfo,
        recompute=d.recompute.tolist(),
        fetch=fetch,
    )


def plan_reply(result: Plan) -> KvPlan:
    chunks = [_plan_chunk(c) for c in result.chunks]
    hits = sum(1 for c in chunks if c.hit)
    return KvPlan(
        model=result.model,
        hits=hits,
        misses=len(chunks) - hits,
        recompute_tokens=result.recompute_tokens,
        lease=None if result.lease is None else lease_reply(result.lease),
        chunks=chunks,
    )
