"""Chunk KV cache commands (put, get, lease, plan, delete, stats) and their result types.

Like :mod:`semcached.clients.commands`, each function returns a
:class:`~semcached.clients.request.Request` and does no I/O. Blobs travel as raw
bodies; metadata as JSON in the ``X-Semcached-KV-Meta`` header, as the structs of
:mod:`semcached.protocol.kv` (:func:`put_meta` builds a put's from numpy arrays and
byte keys). The commands that combine requests with the same-host shared-memory path
are in :mod:`semcached.clients.kv_flows`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, cast

import msgspec
import numpy as np
from numpy.typing import NDArray

from semcached.clients.request import Reply, Request
from semcached.errors import SemcachedError
from semcached.protocol.headers import KV_META_HEADER, KV_SOURCE_HEADER, OCTET_STREAM
from semcached.protocol.kv import (
    KV_DTYPES,
    CacheCraftStats,
    ChunkMeta,
    ChunkPutMeta,
    KvCudaHandle,
    KvDtype,
    KvStats,
    KvTierStats,
    pack_floats,
)

__all__ = [
    "Blob",
    "ChunkMeta",
    "ChunkPutMeta",
    "FetchInfo",
    "KvChunk",
    "KvCudaHandle",
    "KvPlan",
    "LeaseExpiredError",
    "LeaseInfo",
    "PlannedChunk",
    "ShmRef",
    "TierStats",
    "Transfer",
    "as_bytes",
    "check_lease",
    "delete_chunk",
    "get_chunk",
    "kv_stats",
    "lease_chunk",
    "lease_device",
    "plan",
    "put_chunk",
    "put_meta",
    "release_lease",
]

Transfer = Literal["auto", "shm", "http"]
"""How a client moves blobs: ``shm`` (zero-copy, same host only), ``http``, or ``auto``
(shared memory when the daemon's segments are on this host, else HTTP)."""
Blob = bytes | bytearray | memoryview | NDArray[Any]
"""A KV tensor ``[layers, 2, kv_heads, tokens, head_dim]``: a C-contiguous numpy array
or its bytes."""
_NUMPY_DTYPES: Mapping[str, str] = {"float16": "<f2", "bfloat16": "<u2", "float32": "<f4"}
_PUT_OK = frozenset({200, 201})
_GONE_OK = frozenset({204, 404})
_DELETE_OK = frozenset({200, 404})
_META_DECODER = msgspec.json.Decoder(ChunkMeta)
_META_HEADER = KV_META_HEADER.lower()  # Reply.headers has lower-cased names


@dataclass(frozen=True, slots=True)
class ShmRef:
    """Where a blob lies in the daemon's shared memory."""

    segment: str
    offset: int
    length: int


class LeaseExpiredError(SemcachedError):
    """A handle was about to be opened under a lease that has ended: the daemon may
    have put other bytes there. Plan (or read) again for a fresh lease."""


@dataclass(frozen=True, slots=True)
class LeaseInfo:
    """A lease pinning shared-memory or GPU blobs. ``expires_at`` is the daemon's unix
    time at which it ends; ``deadline`` is this process's monotonic clock for the same
    moment (computed from ``ttl_s`` on receipt)."""

    id: str
    expires_at: float
    ttl_s: float
    deadline: float

    @property
    def valid(self) -> bool:
        """Neither clock says it has ended (the handles it pins are on this host, so
        the daemon's unix time and ours are one clock)."""
        return time.monotonic() < self.deadline and time.time() < self.expires_at


def check_lease(lease: LeaseInfo | None) -> None:
    """LeaseExpiredError when ``lease`` has ended (None: nothing to check)."""
    if lease is not None and not lease.valid:
        late = time.time() - lease.expires_at
        raise LeaseExpiredError(
            f"lease {lease.id} ended {max(late, 0.0):.3f} s ago (expires_at "
            f"{lease.expires_at:.3f}): its handles may show other bytes now; plan again"
        )


@dataclass(slots=True)
class KvChunk:
    """One variant's bytes: a copy (HTTP) or a read-only view of shared memory.

    A shared-memory view stays valid while ``lease`` is live: release it (the client's
    ``release_lease``) when done, or copy (:meth:`copy`) what must outlive it.
    """

    meta: ChunkMeta
    data: memoryview
    lease: LeaseInfo | None = None

    @property
    def zero_copy(self) -> bool:
        return self.lease is not None

    def array(self) -> NDArray[Any]:
        """A numpy view shaped ``[layers, 2, kv_heads, tokens, head_dim]`` (no copy).

        bfloat16 has no numpy dtype: its elements come as ``uint16`` (``torch.frombuffer``
        with ``dtype=torch.bfloat16`` reads the same bytes).
        """
        return np.frombuffer(self.data, dtype=_NUMPY_DTYPES[self.meta.dtype]).reshape(
            self.meta.shape
        )

    def copy(self) -> bytes:
        return bytes(self.data)


@dataclass(frozen=True, slots=True)
class FetchInfo:
    tier: str
    http: str
    nbytes: int
    dtype: str
    shape: tuple[int, ...]
    shm: ShmRef | None
    cuda: KvCudaHandle | None = None


@dataclass(frozen=True, slots=True)
class PlannedChunk:
    """The plan for one chunk (see the daemon's ``KvPlan`` schema)."""

    key: str
    hit: bool
    variant: str | None
    exact_prefix: bool
    tokens: int | None
    position: int | None
    rope_base: int | None
    rope_shift: int | None
    beta: float
    gamma: float
    beta_prime: float
    cci: float
    cfo: float
    recompute: tuple[int, ...]
    fetch: FetchInfo | None

    def meta(self) -> ChunkMeta:
        """What the plan says about a hit, as :class:`ChunkMeta` (for :class:`KvChunk`)."""
        if self.fetch is None or self.variant is None:
            raise ValueError(f"chunk {self.key} is a miss: nothing to fetch")
        return ChunkMeta(
            key=self.key,
            variant=self.variant,
            model="",
            dtype=self.fetch.dtype,
            shape=self.fetch.shape,
            tokens=self.tokens or self.fetch.shape[3],
            nbytes=self.fetch.nbytes,
            prefix=(),
            prefix_tokens=(),
            rope_base=self.rope_base or 0,
            rope={},
            created_at=0.0,
            hits=0,
            last_access=0.0,
        )


@dataclass(frozen=True, slots=True)
class KvPlan:
    model: str
    chunks: tuple[PlannedChunk, ...]
    lease: LeaseInfo | None
    recompute_tokens: int
    raw: Mapping[str, Any] = field(repr=False, default_factory=dict)

    @property
    def hits(self) -> int:
        return sum(1 for c in self.chunks if c.hit)


TierStats = KvTierStats
"""One tier's counters (the wire struct :class:`semcached.protocol.kv.KvTierStats`)."""


def as_bytes(data: Blob) -> bytes | bytearray | memoryview:
    """A blob as a flat byte buffer, without a copy for contiguous arrays."""
    if isinstance(data, np.ndarray):
        return np.ascontiguousarray(data).data.cast("B")
    return data


def _hex(key: bytes | str) -> str:
    return key.hex() if isinstance(key, bytes) else key


def put_meta(
    model: str,
    dtype: str,
    shape: Sequence[int],
    *,
    prefix: Sequence[bytes | str] = (),
    prefix_tokens: Sequence[int] | None = None,
    rope_base: int = 0,
    rope: Mapping[str, Any] | None = None,
    inter: Sequence[float] | NDArray[Any] | None = None,
    intra: float | None = None,
    token_scores: Sequence[float] | NDArray[Any] | None = None,
) -> ChunkPutMeta:
    """A :class:`~semcached.protocol.kv.ChunkPutMeta` from what an engine has at hand:
    prefix keys as bytes or hex, shape and token counts as any integers (numpy's too),
    the Cache-Craft statistics ``inter`` and ``token_scores`` as numpy arrays or
    sequences (packed as base64 of float32, :func:`~semcached.protocol.kv.pack_floats`).

    ``shape`` is ``[layers, 2, kv_heads, tokens, head_dim]``; ``prefix`` the ordered
    keys of the chunks the KV was computed after and ``prefix_tokens`` their lengths;
    ``rope_base`` the position of the chunk's first token. ValueError for a ``dtype``
    other than float16, bfloat16, float32 or a shape of other than five dimensions.
    """
    if dtype not in KV_DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(KV_DTYPES)}, got {dtype!r}")
    stats = None
    if inter is not None or intra is not None or token_scores is not None:
        stats = CacheCraftStats(
            inter=None if inter is None else pack_floats(inter),
            intra=0.0 if intra is None else float(intra),
            token_scores=None if token_scores is None else pack_floats(token_scores),
        )
    dims = tuple(int(n) for n in shape)
    if len(dims) != 5:
        raise ValueError(f"shape is [layers, 2, kv_heads, tokens, head_dim], got {dims}")
    return ChunkPutMeta(
        model=model,
        dtype=cast(KvDtype, dtype),
        shape=(dims[0], dims[1], dims[2], dims[3], dims[4]),
        prefix=[_hex(k) for k in prefix],
        prefix_tokens=None if prefix_tokens is None else [int(n) for n in prefix_tokens],
        rope_base=int(rope_base),
        rope=dict(rope or {}),
        stats=stats,
    )


def _put_reply(reply: Reply) -> ChunkMeta:
    return _META_DECODER.decode(reply.body)


def put_chunk(
    key: bytes | str, data: Blob, meta: ChunkPutMeta, *, staged: str | None = None
) -> Request[ChunkMeta]:
    """``PUT /v1/kv/chunks/{key}``: store one variant; returns once it is durable.

    ``data`` is the tensor in the layout ``[layers, 2, kv_heads, tokens, head_dim]``
    (a C-contiguous numpy array or its bytes). With ``staged`` (the name of a file in
    the daemon's shm directory holding those bytes, see
    :meth:`~semcached.clients.shm.ShmPath.staged`) no body is sent. Safe to retry: a
    repeat stores the same variant again.
    """
    headers = {KV_META_HEADER: msgspec.json.encode(meta).decode(), "Content-Type": OCTET_STREAM}
    if staged is not None:
        headers[KV_SOURCE_HEADER] = f"shm:{staged}"
    return Request(
        "PUT",
        f"/v1/kv/chunks/{_hex(key)}",
        _put_reply,
        idempotent=True,
        data=b"" if staged is not None else as_bytes(data),
        headers=headers,
        ok_status=_PUT_OK,
    )


def _variant_params(variant: bytes | str | None, **extra: str) -> dict[str, str]:
    params = dict(extra)
    if variant is not None:
        params["variant"] = _hex(variant)
    return params


def _blob(reply: Reply) -> KvChunk:
    return KvChunk(_META_DECODER.decode(reply.headers[_META_HEADER]), memoryview(reply.body))


def get_chunk(key: bytes | str, variant: bytes | str | None = None) -> Request[KvChunk]:
    """``GET /v1/kv/chunks/{key}``: the bytes over HTTP (the newest variant by default)."""
    path = f"/v1/kv/chunks/{_hex(key)}"
    return Request("GET", path, _blob, idempotent=True, params=_variant_params(variant))


def _lease(doc: Mapping[str, Any] | None) -> LeaseInfo | None:
    if doc is None:
        return None
    ttl = float(doc["ttl_s"])
    return LeaseInfo(str(doc["id"]), float(doc["expires_at"]), ttl, time.monotonic() + ttl)


def _leased(reply: Reply) -> tuple[ChunkMeta, ShmRef, LeaseInfo]:
    doc = reply.json()
    lease = _lease(doc["lease"])
    assert lease is not None
    return _META_DECODER.decode(reply.body), msgspec.convert(doc["shm"], ShmRef), lease


def lease_chunk(
    key: bytes | str, variant: bytes | str | None = None, *, lease_s: float | None = None
) -> Request[tuple[ChunkMeta, ShmRef, LeaseInfo]]:
    """``GET /v1/kv/chunks/{key}?transfer=shm``: a pinned shared-memory handle."""
    extra = {"transfer": "shm"}
    if lease_s is not None:
        extra["lease_s"] = repr(float(lease_s))
    params = _variant_params(variant, **extra)
    path = f"/v1/kv/chunks/{_hex(key)}"
    return Request("GET", path, _leased, idempotent=False, params=params)


def _leased_device(
    reply: Reply,
) -> tuple[ChunkMeta, ShmRef | None, KvCudaHandle | None, LeaseInfo]:
    doc = reply.json()
    lease = _lease(doc["lease"])
    assert lease is not None
    shm = None if doc.get("shm") is None else msgspec.convert(doc["shm"], ShmRef)
    cuda = None if doc.get("cuda") is None else msgspec.convert(doc["cuda"], KvCudaHandle)
    return _META_DECODER.decode(reply.body), shm, cuda, lease


def lease_device(
    key: bytes | str,
    variant: bytes | str | None = None,
    *,
    device: str,
    lease_s: float | None = None,
) -> Request[tuple[ChunkMeta, ShmRef | None, KvCudaHandle | None, LeaseInfo]]:
    """``GET /v1/kv/chunks/{key}?transfer=cuda&device=...``: a pinned handle, a CUDA
    IPC one on ``device`` (the daemon's name for a GPU: its UUID) when the chunk is
    hot enough for that GPU, else a shared-memory one."""
    extra = {"transfer": "cuda", "device": device}
    if lease_s is not None:
        extra["lease_s"] = repr(float(lease_s))
    params = _variant_params(variant, **extra)
    path = f"/v1/kv/chunks/{_hex(key)}"
    return Request("GET", path, _leased_device, idempotent=False, params=params)


def _released(reply: Reply) -> bool:
    return reply.status == 204


def release_lease(lease_id: str) -> Request[bool]:
    """End a lease (``DELETE /v1/kv/leases/{id}``): its views must not be read
    afterwards. False if it had ended already."""
    path = f"/v1/kv/leases/{lease_id}"
    return Request("DELETE", path, _released, idempotent=True, ok_status=_GONE_OK)


def _deleted(reply: Reply) -> int:
    return int(reply.json()["deleted"]) if reply.status == 200 else 0


def delete_chunk(key: bytes | str, variant: bytes | str | None = None) -> Request[int]:
    """Remove one variant, or every variant of a chunk (``DELETE /v1/kv/chunks/{key}``):
    how many were removed (0 if none)."""
    path, params = f"/v1/kv/chunks/{_hex(key)}", _variant_params(variant)
    return Request("DELETE", path, _deleted, idempotent=True, params=params, ok_status=_DELETE_OK)


def _plan(reply: Reply) -> KvPlan:
    doc = reply.json()
    return KvPlan(
        model=doc["model"],
        chunks=msgspec.convert(doc["chunks"], tuple[PlannedChunk, ...]),
        lease=_lease(doc.get("lease")),
        recompute_tokens=int(doc["recompute_tokens"]),
        raw=doc,
    )


def plan(
    model: str,
    keys: Sequence[bytes | str],
    *,
    chunk_tokens: Sequence[int] | None = None,
    start: int = 0,
    shm: bool = False,
    lease_s: float | None = None,
    device: str | None = None,
) -> Request[KvPlan]:
    """``POST /v1/kv/plan``: the reuse plan for a prompt's chunks, in prompt order.
    With ``device`` (a GPU's UUID, ``GPU-...``) hot hits come as CUDA IPC handles on
    it and the others as shared-memory handles, all under the plan's lease."""
    body: dict[str, Any] = {"model": model, "chunks": [_hex(k) for k in keys], "start": start}
    if chunk_tokens is not None:
        body["chunk_tokens"] = [int(n) for n in chunk_tokens]
    if shm:
        body["shm"] = True
    if lease_s is not None:
        body["lease_s"] = float(lease_s)
    if device is not None:
        body["device"] = device
    # With shm or a device the plan takes a lease: not repeated blindly.
    leased = shm or device is not None
    return Request("POST", "/v1/kv/plan", _plan, idempotent=not leased, json=body)


def _tiers(reply: Reply) -> dict[str, TierStats]:
    return msgspec.json.decode(reply.body, type=KvStats).tiers


def kv_stats() -> Request[dict[str, TierStats]]:
    """Counters per tier (host, disk): ``GET /v1/kv/stats``."""
    return Request("GET", "/v1/kv/stats", _tiers, idempotent=True)
