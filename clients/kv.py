"""Chunk KV cache commands for both clients: put, get, lease, plan, delete, stats.

Like :mod:`semcached.clients.commands`, each function returns a
:class:`~semcached.clients.commands.Request` and does no I/O. Blobs travel as the raw
body of a request or reply; metadata travels as JSON in the ``X-Semcached-KV-Meta``
header. Keys are 16 bytes (see :mod:`semcached.protocol.keys`, which computes them).
"""

from __future__ import annotations

import base64
import contextlib
import os
import secrets
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import orjson
from numpy.typing import NDArray

from semcached.clients.commands import Reply, Request
from semcached.clients.shm import ShmMapper
from semcached.errors import ApiError

__all__ = [
    "META_HEADER",
    "SOURCE_HEADER",
    "STAGED_PREFIX",
    "ChunkMeta",
    "FetchInfo",
    "KvChunk",
    "KvPlan",
    "LeaseInfo",
    "PlannedChunk",
    "ShmPath",
    "ShmRef",
    "TierStats",
    "Transfer",
    "as_bytes",
    "delete_chunk",
    "get_chunk",
    "kv_stats",
    "lease_chunk",
    "plan",
    "put_chunk",
    "release_lease",
]

META_HEADER = "X-Semcached-KV-Meta"
SOURCE_HEADER = "X-Semcached-KV-Source"
STAGED_PREFIX = "semcached-put-"
Transfer = Literal["auto", "shm", "http"]
"""How a client reads blobs: ``shm`` (zero-copy, same host only), ``http``, or ``auto``
(shared memory when the daemon's segments are on this host, else HTTP)."""
_NUMPY_DTYPES: Mapping[str, str] = {"float16": "<f2", "bfloat16": "<u2", "float32": "<f4"}


@dataclass(frozen=True, slots=True)
class ChunkMeta:
    """A stored variant's metadata as the daemon reports it."""

    key: str
    variant: str
    model: str
    dtype: str
    shape: tuple[int, ...]
    tokens: int
    nbytes: int
    prefix: tuple[str, ...]
    prefix_tokens: tuple[int, ...]
    rope_base: int
    rope: Mapping[str, Any]
    created_at: float
    hits: int
    last_access: float

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> ChunkMeta:
        return cls(
            key=str(doc["key"]),
            variant=str(doc["variant"]),
            model=str(doc["model"]),
            dtype=str(doc["dtype"]),
            shape=tuple(int(n) for n in doc["shape"]),
            tokens=int(doc["tokens"]),
            nbytes=int(doc["nbytes"]),
            prefix=tuple(doc["prefix"]),
            prefix_tokens=tuple(doc["prefix_tokens"]),
            rope_base=int(doc["rope_base"]),
            rope=dict(doc["rope"]),
            created_at=float(doc["created_at"]),
            hits=int(doc["hits"]),
            last_access=float(doc["last_access"]),
        )


@dataclass(frozen=True, slots=True)
class ShmRef:
    """Where a blob lies in the daemon's shared memory."""

    segment: str
    offset: int
    length: int


@dataclass(frozen=True, slots=True)
class LeaseInfo:
    """A lease pinning shared-memory blobs. ``deadline`` is this process's monotonic
    clock at which the daemon will end it (computed from ``ttl_s`` on receipt)."""

    id: str
    expires_at: float
    ttl_s: float
    deadline: float

    @property
    def valid(self) -> bool:
        return time.monotonic() < self.deadline


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


@dataclass(frozen=True, slots=True)
class TierStats:
    bytes: int
    entries: int
    budget_bytes: int
    hits: int
    misses: int
    promotions: int
    demotions: int
    evictions: int


def as_bytes(data: bytes | bytearray | memoryview | NDArray[Any]) -> bytes | bytearray | memoryview:
    """A blob as a flat byte buffer, without a copy for contiguous arrays."""
    if isinstance(data, np.ndarray):
        return np.ascontiguousarray(data).data.cast("B")
    return data


def _hex(key: bytes | str) -> str:
    return key.hex() if isinstance(key, bytes) else key


def _floats(values: Sequence[float] | NDArray[Any]) -> str:
    return base64.b64encode(np.ascontiguousarray(values, dtype="<f4").tobytes()).decode()


def _lease(doc: Mapping[str, Any] | None) -> LeaseInfo | None:
    if doc is None:
        return None
    ttl = float(doc["ttl_s"])
    return LeaseInfo(str(doc["id"]), float(doc["expires_at"]), ttl, time.monotonic() + ttl)


def _shm(doc: Mapping[str, Any] | None) -> ShmRef | None:
    if doc is None:
        return None
    return ShmRef(str(doc["segment"]), int(doc["offset"]), int(doc["length"]))


def _variant_params(variant: bytes | str | None, **extra: str) -> dict[str, str]:
    params = {k: v for k, v in extra.items()}
    if variant is not None:
        params["variant"] = _hex(variant)
    return params


def put_chunk(
    key: bytes | str,
    data: bytes | bytearray | memoryview | NDArray[Any],
    *,
    model: str,
    dtype: str,
    shape: Sequence[int],
    prefix: Sequence[bytes | str] = (),
    prefix_tokens: Sequence[int] = (),
    rope_base: int = 0,
    rope: Mapping[str, Any] | None = None,
    inter: Sequence[float] | NDArray[Any] | None = None,
    intra: float | None = None,
    token_scores: Sequence[float] | NDArray[Any] | None = None,
    staged: str | None = None,
) -> Request[ChunkMeta]:
    """``PUT /v1/kv/chunks/{key}``: store one variant; returns once it is durable.

    ``data`` is the tensor in the layout ``[layers, 2, kv_heads, tokens, head_dim]``
    (a C-contiguous numpy array or its bytes). With ``staged`` (the name of a file in
    the daemon's shm directory holding those bytes, see :meth:`ShmPath.staged`) no body
    is sent. Safe to retry: a repeat stores the same variant again.
    """
    data = as_bytes(data)
    meta: dict[str, Any] = {
        "model": model,
        "dtype": dtype,
        "shape": [int(n) for n in shape],
        "prefix": [_hex(k) for k in prefix],
        "prefix_tokens": [int(n) for n in prefix_tokens],
        "rope_base": int(rope_base),
        "rope": dict(rope or {}),
    }
    stats: dict[str, Any] = {}
    if inter is not None:
        stats["inter"] = _floats(inter)
    if intra is not None:
        stats["intra"] = float(intra)
    if token_scores is not None:
        stats["token_scores"] = _floats(token_scores)
    if stats:
        meta["stats"] = stats
    headers = {META_HEADER: orjson.dumps(meta).decode(),
               "Content-Type": "application/octet-stream"}  # fmt: skip
    if staged is not None:
        headers[SOURCE_HEADER] = f"shm:{staged}"
    return Request(
        "PUT",
        f"/v1/kv/chunks/{_hex(key)}",
        lambda r: ChunkMeta.from_json(r.json()),
        idempotent=True,
        data=b"" if staged is not None else data,
        headers=headers,
        ok_status=frozenset({200, 201}),
    )


def _blob(reply: Reply) -> KvChunk:
    meta = ChunkMeta.from_json(orjson.loads(reply.headers[META_HEADER.lower()]))
    return KvChunk(meta, memoryview(reply.body))


def get_chunk(key: bytes | str, variant: bytes | str | None = None) -> Request[KvChunk]:
    """``GET /v1/kv/chunks/{key}``: the bytes over HTTP (the newest variant by default)."""
    return Request(
        "GET", f"/v1/kv/chunks/{_hex(key)}", _blob, idempotent=True,
        params=_variant_params(variant),
    )  # fmt: skip


def lease_chunk(
    key: bytes | str, variant: bytes | str | None = None, *, lease_s: float | None = None
) -> Request[tuple[ChunkMeta, ShmRef, LeaseInfo]]:
    """``GET /v1/kv/chunks/{key}?transfer=shm``: a pinned shared-memory handle."""
    extra = {"transfer": "shm"}
    if lease_s is not None:
        extra["lease_s"] = repr(float(lease_s))

    def parse(reply: Reply) -> tuple[ChunkMeta, ShmRef, LeaseInfo]:
        doc = reply.json()
        shm, lease = _shm(doc["shm"]), _lease(doc["lease"])
        assert shm is not None
        assert lease is not None
        return ChunkMeta.from_json(doc), shm, lease

    return Request(
        "GET", f"/v1/kv/chunks/{_hex(key)}", parse, idempotent=False,
        params=_variant_params(variant, **extra),
    )  # fmt: skip


def release_lease(lease_id: str) -> Request[bool]:
    """``DELETE /v1/kv/leases/{id}``: False if it had ended already."""
    return Request(
        "DELETE", f"/v1/kv/leases/{lease_id}", lambda r: r.status == 204, idempotent=True,
        ok_status=frozenset({204, 404}),
    )  # fmt: skip


def delete_chunk(key: bytes | str, variant: bytes | str | None = None) -> Request[int]:
    """``DELETE /v1/kv/chunks/{key}``: how many variants were removed (0 if none)."""
    return Request(
        "DELETE", f"/v1/kv/chunks/{_hex(key)}",
        lambda r: int(r.json()["deleted"]) if r.status == 200 else 0,
        idempotent=True, params=_variant_params(variant), ok_status=frozenset({200, 404}),
    )  # fmt: skip


def _planned(doc: Mapping[str, Any]) -> PlannedChunk:
    fetch = doc.get("fetch")
    return PlannedChunk(
        key=doc["key"],
        hit=bool(doc["hit"]),
        variant=doc.get("variant"),
        exact_prefix=bool(doc["exact_prefix"]),
        tokens=doc.get("tokens"),
        position=doc.get("position"),
        rope_base=doc.get("rope_base"),
        rope_shift=doc.get("rope_shift"),
        beta=float(doc["beta"]),
        gamma=float(doc["gamma"]),
        beta_prime=float(doc["beta_prime"]),
        cci=float(doc["cci"]),
        cfo=float(doc["cfo"]),
        recompute=tuple(doc["recompute"]),
        fetch=None
        if fetch is None
        else FetchInfo(
            tier=fetch["tier"],
            http=fetch["http"],
            nbytes=int(fetch["nbytes"]),
            dtype=fetch["dtype"],
            shape=tuple(fetch["shape"]),
            shm=_shm(fetch.get("shm")),
        ),
    )


def plan(
    model: str,
    keys: Sequence[bytes | str],
    *,
    chunk_tokens: Sequence[int] | None = None,
    start: int = 0,
    shm: bool = False,
    lease_s: float | None = None,
) -> Request[KvPlan]:
    """``POST /v1/kv/plan``: the reuse plan for a prompt's chunks, in prompt order."""
    body: dict[str, Any] = {"model": model, "chunks": [_hex(k) for k in keys], "start": start}
    if chunk_tokens is not None:
        body["chunk_tokens"] = [int(n) for n in chunk_tokens]
    if shm:
        body["shm"] = True
    if lease_s is not None:
        body["lease_s"] = float(lease_s)

    def parse(reply: Reply) -> KvPlan:
        doc = reply.json()
        return KvPlan(
            model=doc["model"],
            chunks=tuple(_planned(c) for c in doc["chunks"]),
            lease=_lease(doc.get("lease")),
            recompute_tokens=int(doc["recompute_tokens"]),
            raw=doc,
        )

    # With shm the plan takes a lease: not repeated blindly.
    return Request("POST", "/v1/kv/plan", parse, idempotent=not shm, json=body)


def kv_stats() -> Request[dict[str, TierStats]]:
    """``GET /v1/kv/stats``: counters per tier."""
    return Request(
        "GET", "/v1/kv/stats",
        lambda r: {n: TierStats(**s) for n, s in r.json()["tiers"].items()},
        idempotent=True,
    )  # fmt: skip


class ShmPath:
    """The client's side of the same-host path: maps handed-out segments, and learns
    whether the daemon is on this host (its segments exist here) or not."""

    def __init__(self, enabled: bool, directory: Path) -> None:
        self.enabled = enabled
        self.mapper = ShmMapper(directory)
        self.same_host: bool | None = None  # unknown until the first handle

    def wanted(self, transfer: Transfer) -> bool:
        if transfer == "http":
            return False
        if transfer == "shm":
            return True
        return self.enabled and self.same_host is not False

    def wanted_put(self, transfer: Transfer) -> bool:
        return transfer == "shm" or (
            transfer == "auto" and self.enabled and self.same_host is not False
        )

    @contextlib.contextmanager
    def staged(self, data: bytes | bytearray | memoryview) -> Iterator[str]:
        """Write ``data`` to a fresh file in the shm directory for the daemon to read;
        the file's name inside, removed on leaving. One copy, into page cache."""
        name = f"{STAGED_PREFIX}{os.getpid()}-{secrets.token_hex(8)}"
        path = self.mapper.directory / name
        view = memoryview(data).cast("B")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            written = 0
            while written < len(view):
                written += os.write(fd, view[written:])
            os.close(fd)
            fd = -1
            yield name
        finally:
            if fd >= 0:
                os.close(fd)
            path.unlink(missing_ok=True)

    def put_failed(self, error: ApiError) -> bool:
        """Whether a staged put failed because the daemon cannot see this host's shm
        (then the caller sends the body instead, and later puts do so at once)."""
        if error.code in ("shm_source_unavailable", "bad_source"):
            self.same_host = False
            return True
        return False

    def view(self, meta: ChunkMeta, ref: ShmRef, lease: LeaseInfo | None) -> KvChunk | None:
        """The blob as a zero-copy view, or None when the segment is not on this host."""
        if not self.mapper.available(ref.segment):
            self.same_host = False
            return None
        self.same_host = True
        return KvChunk(meta, self.mapper.view(ref.segment, ref.offset, ref.length), lease)

    def planned_meta(self, chunk: PlannedChunk) -> ChunkMeta:
        """What a plan says about a hit, as :class:`ChunkMeta` (for :class:`KvChunk`)."""
        assert chunk.fetch is not None
        assert chunk.variant is not None
        return ChunkMeta(
            key=chunk.key, variant=chunk.variant, model="", dtype=chunk.fetch.dtype,
            shape=chunk.fetch.shape, tokens=chunk.tokens or chunk.fetch.shape[3],
            nbytes=chunk.fetch.nbytes, prefix=(), prefix_tokens=(),
            rope_base=chunk.rope_base or 0, rope={}, created_at=0.0, hits=0, last_access=0.0,
        )  # fmt: skip

    def close(self) -> None:
        self.mapper.close()
