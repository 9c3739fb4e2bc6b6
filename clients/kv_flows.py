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

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from semcached.clients import cuda, kv
from semcached.clients.cuda import CudaUnavailableError, KvTensor
from semcached.clients.kv import Blob, ChunkMeta, ChunkPutMeta, KvChunk, KvPlan, Transfer
from semcached.clients.request import Flow
from semcached.clients.shm import ShmPath, ShmUnavailableError
from semcached.errors import BadRequestError

if TYPE_CHECKING:
    import torch

__all__ = ["fetch", "fetch_tensor", "get_chunk", "get_tensor", "plan", "put_chunk"]

log = logging.getLogger("semcached.clients")


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
    device: str | int | torch.device | None = None,
) -> Flow[KvPlan]:
    """The reuse plan for a prompt's chunks (in prompt order); unknown chunks are
    misses. With shared memory the hits are pinned under the plan's lease.

    With ``device`` (a local CUDA device: ``cuda:1``, ``torch.device``, an index of
    this process, or a GPU UUID ``GPU-...``), sent as that GPU's UUID, the hot hits
    come as CUDA IPC handles on it (see :meth:`fetch_tensor`), the others in shared
    memory, all under the plan's lease. The daemon answers 400 ``gpu_tier_off`` when
    it has no GPU tier and ``unknown_device`` when that GPU is not in it (another
    host): plan without ``device`` then."""
    request = kv.plan(
        model,
        keys,
        chunk_tokens=chunk_tokens,
        start=start,
        shm=shm.wanted(transfer),
        lease_s=lease_s,
        device=None if device is None else cuda.device_uuid(device),
    )
    result: KvPlan = yield request
    return result


def _on_device(
    shm: ShmPath,
    meta: ChunkMeta,
    handle: kv.KvCudaHandle,
    lease: kv.LeaseInfo | None,
    target: torch.device,
) -> KvTensor | None:
    """The chunk from its CUDA IPC handle, or None when the handle cannot be opened in
    this process. On another GPU than ``target`` (a plan made for another device) it
    is copied there, device to device."""
    try:
        tensor = shm.cuda.tensor(handle, meta.dtype, meta.shape, lease)
    except CudaUnavailableError as exc:
        log.warning("CUDA IPC handle not usable here (%s); reading over HTTP", exc)
        return None
    if tensor.device != target:
        return KvTensor(meta, tensor.to(target), "cuda-copy", lease)
    return KvTensor(meta, tensor, "cuda", lease)


def _from_shm(
    shm: ShmPath,
    meta: ChunkMeta,
    ref: kv.ShmRef,
    lease: kv.LeaseInfo | None,
    target: torch.device,
) -> KvTensor | None:
    kv.check_lease(lease)
    chunk = shm.view(meta, ref, lease)
    if chunk is None:
        return None
    host = cuda.host_tensor(chunk.data, meta.dtype, meta.shape)
    return KvTensor(meta, host.to(target), "shm", lease)


def _from_http(chunk: KvChunk, target: torch.device) -> KvTensor:
    host = cuda.host_tensor(chunk.data, chunk.meta.dtype, chunk.meta.shape)
    return KvTensor(chunk.meta, host.to(target), "http", None)


def fetch_tensor(
    shm: ShmPath,
    planned: kv.PlannedChunk,
    lease: kv.LeaseInfo | None = None,
    *,
    device: str | int | torch.device,
) -> Flow[KvTensor]:
    """A hit of a plan as a torch tensor on ``device`` (``[layers, 2, kv_heads,
    tokens, head_dim]``, the chunk's dtype), by the cheapest path the plan allows:

    1. a CUDA IPC handle (the plan named a device): the daemon's GPU memory itself,
       no copy; valid while the plan's ``lease`` lasts and the client is open;
    2. a shared-memory handle on this host: one host-to-device copy;
    3. otherwise (or when the handle's GPU is not visible here): the bytes over HTTP,
       then one host-to-device copy.

    Raises :class:`~semcached.clients.kv.LeaseExpiredError` when ``lease`` has ended
    before a handle is opened (plan again), TorchUnavailableError without torch.
    Treat the tensor as read-only."""
    meta = planned.meta()  # ValueError for a miss
    assert planned.fetch is not None
    target = cuda.torch_device(device)
    if planned.fetch.cuda is not None:
        got = _on_device(shm, meta, planned.fetch.cuda, lease, target)
        if got is not None:
            return got
    if planned.fetch.shm is not None:
        got = _from_shm(shm, meta, planned.fetch.shm, lease, target)
        if got is not None:
            return got
    copied: KvChunk = yield kv.get_chunk(planned.key, planned.variant)
    return _from_http(copied, target)


def get_tensor(
    shm: ShmPath,
    key: bytes | str,
    variant: bytes | str | None = None,
    *,
    device: str | int | torch.device,
    lease_s: float | None = None,
) -> Flow[KvTensor]:
    """One variant (the newest by default) as a torch tensor on the CUDA ``device``:
    ``GET ?transfer=cuda`` asks for a CUDA IPC handle on that GPU (given when the
    chunk is hot, see ``kv.gpu.promote_after_hits``; the result's ``lease`` pins it:
    release it when done), else the shared-memory handle is copied to the device and
    its lease released at once; a daemon on another host is read over HTTP."""
    target = cuda.torch_device(device)
    uuid = cuda.device_uuid(target)
    meta, ref, handle, lease = yield kv.lease_device(key, variant, device=uuid, lease_s=lease_s)
    got: KvTensor | None = None
    try:
        if handle is not None:
            got = _on_device(shm, meta, handle, lease, target)
        if got is None and ref is not None:
            got = _from_shm(shm, meta, ref, lease, target)
            if got is not None and target.type != "cpu":
                got.lease = None  # copied: the lease is released below
    finally:
        if got is None or got.lease is None:
            yield kv.release_lease(lease.id)
    if got is not None:
        return got
    copied: KvChunk = yield kv.get_chunk(key, variant)
    return _from_http(copied, target)
