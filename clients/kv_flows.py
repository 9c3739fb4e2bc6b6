"""The chunk KV commands that take more than one request, or local work between
requests: staged puts, zero-copy reads under a lease, plans and fetching their hits.

Each is a :data:`~semcached.clients.request.Flow`: a generator that yields the
requests of :mod:`semcached.clients.kv` and receives their results, so the logic
(when to try shared memory, when to fall back to HTTP, what the client learns about
the daemon's host) is written once and both clients drive it with their own I/O. The
first argument is the client's :class:`~semcached.clients.shm.ShmPath`; the client
passes it, so the methods' signatures start after it.
"""

from __future__ import annotations

from collections.abc import Sequence

from semcached.clients import kv
from semcached.clients.kv import Blob, ChunkMeta, ChunkPutMeta, KvChunk, KvPlan, Transfer
from semcached.clients.request import Flow
from semcached.clients.shm import ShmPath, ShmUnavailableError
from semcached.errors import BadRequestError

__all__ = ["fetch", "get_chunk", "plan", "put_chunk"]


def put_chunk(
    shm: ShmPath,
    key: bytes | str,
    data: Blob,
    meta: ChunkPutMeta,
    *,
    transfer: Transfer = "auto",
) -> Flow[ChunkMeta]:
    """Store one variant of a chunk's KV (``data`` in the layout ``[layers, 2,
    kv_heads, tokens, head_dim]``) with its metadata and Cache-Craft statistics
    (``meta``, see :func:`~semcached.clients.kv.put_meta`); returns once durable.

    On the daemon's host (``transfer`` ``auto`` or ``shm``) the bytes are staged in
    a shared-memory file the daemon reads, instead of crossing a socket.
    """
    blob = kv.as_bytes(data)
    if shm.wanted_put(transfer):
        try:
            with shm.staged(blob) as name:
                stored: ChunkMeta = yield kv.put_chunk(key, blob, meta, staged=name)
                return stored
        except BadRequestError as exc:
            if transfer == "shm" or not shm.put_failed(exc):
                raise
        except OSError:
            if transfer == "shm":
                raise
            shm.same_host = False  # no usable shm directory here
    sent: ChunkMeta = yield kv.put_chunk(key, blob, meta)
    return sent


def get_chunk(
    shm: ShmPath,
    key: bytes | str,
    variant: bytes | str | None = None,
    *,
    transfer: Transfer = "auto",
    lease_s: float | None = None,
) -> Flow[KvChunk]:
    """One variant's bytes (the newest variant by default).

    Zero-copy from shared memory when the daemon is on this host (``transfer``
    ``auto`` or ``shm``): the view is pinned by a lease; release it with
    ``release_lease`` when done. Otherwise a copy over HTTP.
    """
    if shm.wanted(transfer):
        meta, ref, lease = yield kv.lease_chunk(key, variant, lease_s=lease_s)
        chunk = shm.view(meta, ref, lease)
        if chunk is not None:
            return chunk
        yield kv.release_lease(lease.id)
        if transfer == "shm":
            raise ShmUnavailableError(f"segment {ref.segment} is not on this host")
    copied: KvChunk = yield kv.get_chunk(key, variant)
    return copied


def fetch(
    shm: ShmPath, planned: kv.PlannedChunk, lease: kv.LeaseInfo | None = None
) -> Flow[KvChunk]:
    """The bytes of a hit of a plan: zero-copy when the plan handed out a handle
    for this host (pinned by the plan's ``lease``), else over HTTP."""
    meta = planned.meta()  # ValueError for a miss
    ref = planned.fetch.shm if planned.fetch is not None else None
    if ref is not None:
        chunk = shm.view(meta, ref, lease)
        if chunk is not None:
            return chunk
    copied: KvChunk = yield kv.get_chunk(planned.key, planned.variant)
    return copied


def plan(
    shm: ShmPath,
    model: str,
    keys: Sequence[bytes | str],
    *,
    chunk_tokens: Sequence[int] | None = None,
    start: int = 0,
    transfer: Transfer = "auto",
    lease_s: float | None = None,
) -> Flow[KvPlan]:
    """The reuse plan for a prompt's chunks (in prompt order); unknown chunks are
    misses. With shared memory the hits are pinned under the plan's lease."""
    request = kv.plan(
        model,
        keys,
        chunk_tokens=chunk_tokens,
        start=start,
        shm=shm.wanted(transfer),
        lease_s=lease_s,
    )
    result: KvPlan = yield request
    return result
