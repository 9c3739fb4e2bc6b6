"""The RAG chunk KV cache engine: variants of chunk KV, tiers, leases and reuse plans.

(About 980 lines with its docstrings, over the house's 400: one lock guards the three
variant indexes and every tier, and every public method is a short critical section
over them; splitting the class would spread that lock's invariant over modules. The
shared tier's own machinery (queue, writer, breaker) is in
:mod:`~semcached.service.kv.sharing`; only its calls from the read, write and plan
paths are here.
Results and records are in :mod:`~semcached.service.kv.types`, leases in
:mod:`~semcached.service.kv.leases`, host and GPU copies and pins in
:mod:`~semcached.service.kv.placement`, the GPU tiers as a whole in
:mod:`~semcached.service.kv.devices`.)

A plain object usable in-process (benchmarks, a co-located inference engine); the
HTTP layer only decodes, calls it and encodes.

Threading (the contract of :mod:`semcached.service.blocking`): every public method
is thread-safe and may block (LMDB commits, copies of megabytes), so the daemon calls
them on its worker threads through ``run_blocking``; ``now``, ``check_shape``,
``stats``, ``live_leases`` and ``variants`` never block and may be called on the
event loop.

Write path (:meth:`KvCache.put`): validate against the model's shape → make room
on disk (evictions by the disk tier's policy) → one durable LMDB transaction with
the blob, its metadata and the evictions → the variant becomes visible → it is
copied into the host tier (demoting host victims). A put is acknowledged only after
its commit, and nothing of it is readable before. A caller that reads the bytes
itself (the HTTP body) may first take room in the host tier (:meth:`KvCache.put_buffer`)
and read them there: LMDB then copies from it, and the host tier needs no copy.

Removals (deletes and evictions) leave memory under the lock but reach LMDB after
it, in their own write; until that write returns, the key is *being removed* and a
put of the same key waits for it, so that the store applies a removal and a later
put in the order memory saw them (else the late delete would erase the new put).

Read paths: :meth:`get` copies the bytes out (from the host tier, else a device
tier, else from disk, promoting them); :meth:`lease` and :meth:`plan` with ``shm``
hand out shared-memory handles pinned by a :class:`Lease` until it is released or
times out, and with ``device`` CUDA IPC handles to the chunks that the promotion
policy calls hot (copied into that GPU's tier first), shared-memory handles to the
others.

Tenants (a :class:`KvTenant` on every call): a chunk key is stored under its
tenant's *scope* (:func:`~semcached.index.kv_meta.scope_key`), so the same client
key of two tenants names two records and neither can read, overwrite, delete or
plan with the other's; replies carry the client's own keys. The unscoped default is
the store as it was before tenants. Each scope may be capped in disk bytes (its
oldest variants go first), and each owner in leases and pinned bytes.

Shared tier (optional, :mod:`~semcached.service.kv.sharing`): Redis below the disk
tier. A put is queued for it after its local commit (the acknowledgement never waits
for Redis); a local miss in :meth:`get`, :meth:`metadata` or :meth:`lease` fetches
the variant from it, verifies it and stores it locally through :meth:`put` (so quotas
and tiers apply) before serving it; :meth:`plan` reports chunks that only Redis holds
as hits in tier ``shared`` (no handle: a GET fetches and promotes them); deletes
remove the shared copy too. Redis I/O never happens under the engine's lock, and an
unreachable Redis is a local miss.
"""

from __future__ import annotations

import collections
import itertools
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import overload

from semcached.cachepolicy.promotion import HitCountPromotion, PromotionPolicy
from semcached.cachepolicy.reuse import (
    ChunkDecision,
    VariantStats,
    context_impact,
    fix_overhead,
    plan_chunks,
)
from semcached.errors import (
    BadRequestError,
    ConflictError,
    InsufficientStorageError,
    NotFoundError,
    PayloadTooLargeError,
    SemcachedError,
    ServiceUnavailableError,
    TooManyRequestsError,
)
from semcached.index.eviction import EvictionPolicy
from semcached.index.kv_disk import BlobWrite, KvDiskStore
from semcached.index.kv_meta import DTYPE_BYTES, ModelSpec, VariantMeta, expected_shape
from semcached.index.kv_tiers import (
    ArenaTier,
    CudaHandle,
    DeviceTier,
    DiskTier,
    HostTier,
    ShmHandle,
    TierStats,
)
from semcached.index.lmdb_env import StoreFullError
from semcached.protocol.codes import ErrorCode
from semcached.protocol.keys import variant_key
from semcached.service.kv.devices import GpuTiers
from semcached.service.kv.leases import LeaseTable
from semcached.service.kv.placement import DevicePlacement, HostPlacement
from semcached.service.kv.sharing import SharedKv
from semcached.service.kv.types import (
    UNSCOPED,
    ChunkPlan,
    KvTenant,
    Lease,
    LeasedBlob,
    Plan,
    PutBuffer,
    PutResult,
    Variant,
)

__all__ = [
    "UNSCOPED",
    "ChunkPlan",
    "KvCache",
    "KvTenant",
    "Lease",
    "LeasedBlob",
    "Plan",
    "PutResult",
]

log = logging.getLogger(__name__)

_FILL_WAIT_S = 1.0  # how long a reader waits at most for another's promotion, per round


class KvCache:
    """The chunk KV cache. Open with :meth:`open`, close with :meth:`close`.

    ``disk_budget_bytes`` bounds the blobs on disk (the system of record);
    ``host`` (optional) keeps hot blobs in shared memory, ``devices`` (optional) the
    hottest in GPU memory, promoted by ``promotion`` (default: from the second read).
    ``eviction`` makes the disk tier's policy. Leases last ``lease_timeout_s`` unless
    the caller asks for another time up to ``max_lease_s``; at most ``max_leases`` are
    live at once. ``shared`` (optional) is the shared tier in Redis, started by
    :meth:`open` and stopped by :meth:`close`.
    """

    def __init__(
        self,
        *,
        store: KvDiskStore,
        models: Mapping[str, ModelSpec],
        disk_budget_bytes: int,
        host: HostTier | None,
        eviction: Callable[[], EvictionPolicy],
        devices: Sequence[DeviceTier] = (),
        promotion: PromotionPolicy | None = None,
        gpu_off_reason: str | None = None,
        max_blob_bytes: int,
        lease_timeout_s: float = 30.0,
        max_lease_s: float = 300.0,
        max_leases: int = 10_000,
        shared: SharedKv | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.models = dict(models)
        self.disk = DiskTier(disk_budget_bytes, eviction())
        self.host = host
        self.max_blob_bytes = max_blob_bytes
        self.shared = shared
        self._clock = clock
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._by_key: dict[bytes, Variant] = {}  # chunk + variant key -> variant
        self._by_id: dict[int, Variant] = {}
        # scope + chunk -> variant key -> ...
        self._by_chunk: dict[bytes, dict[bytes, Variant]] = {}
        self._in_flight: set[bytes] = set()  # keys being put
        # Keys forgotten in memory whose delete is not yet written (see the docstring).
        self._removing: collections.Counter[bytes] = collections.Counter()
        self._removed = threading.Condition(self._lock)
        # Per scope: disk bytes (puts in flight included) and live variants, oldest first.
        self._scope_bytes: dict[bytes, int] = {}
        self._scope_order: dict[bytes, dict[int, None]] = {}
        self._placement = (
            None
            if host is None
            else HostPlacement(host, store, self._lock, lambda v: self._by_id.get(v.vid) is v)
        )
        self.gpus = GpuTiers(
            devices,
            store,
            self._lock,
            self._by_id.get,
            host=self._placement,
            promotion=promotion or HitCountPromotion(),
            off_reason=gpu_off_reason,
        )
        self._leases = LeaseTable(
            timeout_s=lease_timeout_s,
            max_lease_s=max_lease_s,
            max_leases=max_leases,
            clock=clock,
            monotonic=monotonic,
        )
        self.opened = False
        # True from a put refused for want of space until a write fits again.
        self.storage_full = False

    def now(self) -> float:
        """The engine's wall clock (creation and access times)."""
        return self._clock()

    # -- lifecycle -------------------------------------------------------------------------

    def open(self) -> int:
        """Load every stored variant's metadata (the host tier starts cold); the count.

        Variants beyond the disk budget (it was lowered) are evicted durably.
        """
        metas = sorted(self.store.scan(), key=lambda m: m.created_at)
        with self._lock:
            for meta in metas:
                vid = next(self._ids)
                self.disk.admit(vid, meta.nbytes)
                self._charge(meta.scope, meta.nbytes)
                self._add(meta, vid)
            victims = self.disk.make_room()
            doomed = [self._forget(vid) for vid in victims]
        if doomed:
            self.store.write([BlobWrite(v.meta.key) for v in doomed])
            log.info("evicted %d chunk variants beyond the disk budget", len(doomed))
        if self.shared is not None:
            self.shared.start(self.store.read_blob)
        self.opened = True
        return len(self._by_key)

    def close(self) -> None:
        """Ship what is queued for the shared tier (bounded), persist access counts and
        release the shared memory."""
        if self.shared is not None:
            self.shared.close()
        with self._lock:
            touched = [v.meta for v in self._by_id.values() if v.meta.hits]
            self._leases.clear()
        try:
            self.store.save_access(touched)
        except Exception:
            log.exception("could not save chunk access counts")
        if self.host is not None:
            self.host.close()
        self.gpus.close()
        self.opened = False

    # -- writes ----------------------------------------------------------------------------

    def put_buffer(self, nbytes: int) -> PutBuffer | None:
        """Room in the host tier to read a put's ``nbytes`` straight into, so that the
        tier needs no copy of its own (demoting host blobs to make it); None without a
        host tier or when it has no room. Pass it to :meth:`put` with the bytes read
        into it, or to :meth:`drop_put_buffer` when the put goes no further."""
        if self._placement is None or nbytes <= 0:
            return None
        vid = next(self._ids)
        view = self._placement.reserve_put(vid, nbytes)
        if view is None:
            return None
        host = self._placement.host
        return PutBuffer(vid, view, lambda at, piece: host.write_at(vid, at, piece))

    def drop_put_buffer(self, buffer: PutBuffer) -> None:
        """Give back the room of a put that was not stored (a no-op once it was)."""
        if self._placement is not None:
            self._placement.discard(buffer.vid)

    def put(
        self,
        meta: VariantMeta,
        blob: bytes | bytearray | memoryview,
        *,
        tenant: KvTenant = UNSCOPED,
        share: bool = True,
        into: PutBuffer | None = None,
    ) -> PutResult:
        """Store one variant durably under ``tenant``'s scope; returns after the commit,
        then queues it for the shared tier unless ``share`` is False (a variant fetched
        from there). See the module docstring. ``into``: the :meth:`put_buffer` that
        ``blob`` was read into; it becomes the variant's host copy when the put commits
        and is given back otherwise.

        Raises BadRequestError (unknown model, shape or length mismatch, metadata that
        cannot be stored), PayloadTooLargeError (over ``max_blob_bytes``, the disk budget
        or the tenant's bytes), ConflictError (the same variant is being put
        concurrently) and InsufficientStorageError (the store is full and nothing is
        left to evict).
        """
        if into is None:
            return self._put(meta, blob, tenant, share, None)
        try:
            return self._put(meta, blob, tenant, share, into)
        finally:
            self.drop_put_buffer(into)  # unless published: a failed put leaves no room taken

    def _put(
        self,
        meta: VariantMeta,
        blob: bytes | bytearray | memoryview,
        tenant: KvTenant,
        share: bool,
        into: PutBuffer | None,
    ) -> PutResult:
        write = self._encode_put(meta, blob, tenant)
        key = meta.key
        with self._lock:
            while key in self._removing:  # bounded by one commit
                self._removed.wait()
            if key in self._in_flight:
                raise ConflictError(ErrorCode.PUT_IN_PROGRESS, "this chunk variant is being stored")
            self._in_flight.add(key)
            old = self._by_key.get(key)
            if old is not None:  # replaced: stop serving the old bytes now
                self._forget(old.vid)
            vid = next(self._ids) if into is None else into.vid
            # Admitted (and counted) before it is written, so that the policy treats it
            # as the newcomer and concurrent puts see its bytes.
            self.disk.admit(vid, meta.nbytes, pending=True)
            self._charge(meta.scope, meta.nbytes)
            victims = self._remove(self._over_quota(meta.scope, tenant.max_bytes))
            victims += self._remove(self.disk.make_room())
        committed = False
        try:
            changes = [BlobWrite(v.meta.key) for v in victims]
            changes.append(write)
            extra = self._write_making_room(changes, meta.nbytes)
            committed = True
        finally:
            with self._lock:
                self._removal_written(victims)
                self._in_flight.discard(key)
                if committed:  # visible from here on, and not before
                    self.disk.settle(vid)
                    variant = self._add(meta, vid)
                    if into is not None and self._placement is not None:
                        self._placement.publish_put(variant)  # the bytes are there
                    # Over budget only if concurrent puts were all pending a moment ago.
                    late = self._remove(self.disk.make_room())
                else:
                    self.disk.remove(vid)
                    self._charge(meta.scope, -meta.nbytes)
        if late:
            try:
                self._write_removals(late)
            except StoreFullError as exc:  # the put is durable; these return at a restart
                log.warning("could not delete %d evicted chunk variants: %s", len(late), exc)
        tiers = ["disk"]
        if self._placement is not None and into is not None:
            if self._placement.host.holds(vid):
                tiers.insert(0, "host")
        elif self._place(variant, blob):
            tiers.insert(0, "host")
        if share and self.shared is not None:
            self.shared.share(meta, write.record)
        evicted = len(victims) + len(extra) + len(late)
        return PutResult(old is None, meta.variant, meta.nbytes, tuple(tiers), evicted)

    def _encode_put(
        self, meta: VariantMeta, blob: bytes | bytearray | memoryview, tenant: KvTenant
    ) -> BlobWrite:
        """Validate a put for ``tenant`` (scoping ``meta``) and encode its write."""
        meta.scope = tenant.scope
        self._check_put(meta, blob)
        try:  # encoded here, so that a record that cannot be stored fails only this put
            write = BlobWrite(meta.key, meta, blob)
        except ValueError as exc:
            raise BadRequestError(ErrorCode.INVALID_META, str(exc), field="rope") from None
        if tenant.max_bytes and meta.nbytes > tenant.max_bytes:
            raise PayloadTooLargeError(
                ErrorCode.BLOB_TOO_LARGE,
                f"a blob of {meta.nbytes} bytes exceeds the tenant's KV quota of "
                f"{tenant.max_bytes} bytes",
            )
        return write

    def _write_removals(self, victims: list[Variant]) -> None:
        """Write the deletes of ``victims`` (from :meth:`_remove`), durably; no lock
        held. Raises StoreFullError."""
        try:
            self.store.write([BlobWrite(v.meta.key) for v in victims])
        finally:
            with self._lock:
                self._removal_written(victims)

    def _write_making_room(self, changes: list[BlobWrite], nbytes: int) -> list[Variant]:
        """Commit a put's ``changes``; while the store is full (the map at its cap before
        the budget is reached, or the filesystem), evict about ``nbytes`` more by the
        disk tier's policy and try again. The extra victims; 507 when none are left."""
        evicted: list[Variant] = []
        while True:
            try:
                self.store.write(changes)
                self.storage_full = False
                return evicted
            except StoreFullError as exc:
                full = exc
            more: list[Variant] = []
            if nbytes <= self.store.capacity_bytes:  # else evicting everything would not do
                with self._lock:
                    more = self._remove(self.disk.evict_for(nbytes))
            freed = False
            if more:
                try:
                    self._write_removals(more)
                    freed = True
                except StoreFullError as exc:  # not even a delete fits: the disk is full
                    full = exc
            if not freed:
                self.storage_full = True
                where = "the filesystem is full" if full.disk else "the store is at its size cap"
                log.warning("chunk KV cache refused a put: %s (%s)", where, full)
                raise InsufficientStorageError(
                    ErrorCode.STORE_FULL, f"{where} and nothing is left to evict"
                ) from None
            evicted.extend(more)

    def check_shape(self, model: str, dtype: str, shape: Sequence[int]) -> int:
        """The byte size of a blob of ``shape`` and ``dtype`` for ``model``, once the
        shape is the model's and the size within the limits; else the 4xx. Arithmetic
        only: callers check a declared shape with it before allocating anything of
        its size. Never blocks."""
        spec = self.models.get(model)
        if spec is None:
            raise BadRequestError(
                ErrorCode.UNKNOWN_MODEL, f"unknown model {model!r}", field="model"
            )
        tokens = shape[3] if len(shape) == 5 else 0
        want = expected_shape(spec, tokens)
        if tuple(shape) != want or tokens < 1:
            raise BadRequestError(
                ErrorCode.BAD_SHAPE,
                f"model {spec.name!r} stores KV as [layers, 2, kv_heads, tokens, head_dim] = "
                f"{list(want)}, got {list(shape)}",
                field="shape",
            )
        nbytes = math.prod(shape) * DTYPE_BYTES[dtype]
        limit = min(self.max_blob_bytes, self.disk.budget_bytes)
        if nbytes > limit:
            raise PayloadTooLargeError(
                ErrorCode.BLOB_TOO_LARGE, f"a blob of {nbytes} bytes exceeds the limit of {limit}"
            )
        return nbytes

    def _check_put(self, meta: VariantMeta, blob: bytes | bytearray | memoryview) -> None:
        self.check_shape(meta.model, meta.dtype, meta.shape)
        if meta.variant != variant_key(meta.prefix):
            raise BadRequestError(
                ErrorCode.BAD_VARIANT,
                "the variant key is not the hash of the prefix",
                field="variant",
            )
        if len(blob) != meta.nbytes:
            raise BadRequestError(
                ErrorCode.LENGTH_MISMATCH,
                f"shape {list(meta.shape)} of {meta.dtype} is {meta.nbytes} bytes, "
                f"the body has {len(blob)}",
            )

    def delete(
        self, chunk: bytes, variant: bytes | None = None, *, tenant: KvTenant = UNSCOPED
    ) -> int:
        """Remove one variant, or every variant of ``chunk``, here and in the shared tier;
        durable locally on return. The count (variants either held)."""
        with self._lock:
            variants = self._remove(
                [v.vid for v in self._variants_of(tenant.scope + chunk, variant)]
            )
        removed = {v.meta.variant for v in variants}
        # Redis first, with the removal still pending here: a put of the key racing this
        # delete waits for it, so its write to Redis is queued after the delete.
        if self.shared is not None:
            removed |= self.shared.delete(tenant.scope, chunk, variant)
        if variants:
            try:
                self._write_removals(variants)
            except StoreFullError as exc:  # deletes use the reserve: only a full disk
                self.storage_full = True
                raise InsufficientStorageError(
                    ErrorCode.STORE_FULL, f"no room even to delete: {exc}"
                ) from None
            self.storage_full = False
        return len(removed)

    # -- reads -----------------------------------------------------------------------------

    def get(
        self,
        chunk: bytes,
        variant: bytes | None = None,
        *,
        copy: bool = True,
        tenant: KvTenant = UNSCOPED,
    ) -> tuple[VariantMeta, bytes | memoryview]:
        """One variant's bytes (the newest variant when none is named).

        Reads the host tier, else the disk (and promotes). NotFoundError when absent.
        With ``copy=False`` a host-tier hit comes back as a read-only view of the arena
        that pins its extent until the last reference to the view is gone (for a reply
        body: the server drops it once the bytes are written), so no copy is made.
        """
        with self._lock:
            found = self._find(tenant.scope + chunk, variant, shared=self.shared is not None)
            if found is not None:
                v = found
                self._count_access(v)
                pin = None if self._placement is None else self._placement.pin(v)
        if found is None:
            return self._from_shared(chunk, variant, tenant)
        host = self.host
        if pin is not None and host is not None and self._placement is not None:
            if not copy:
                return v.meta, self._placement.pinned_view(v.vid, pin.offset)
            try:
                return v.meta, bytes(host.read(v.vid))
            finally:
                with self._lock:
                    host.unpin(v.vid, pin.offset)
        from_device = self.gpus.read(v)
        if from_device is not None:
            return v.meta, from_device
        data = self.store.read_blob(v.meta.key)
        if data is None:  # evicted between the lookup and the read
            raise NotFoundError(ErrorCode.NOT_FOUND, "the chunk variant was evicted")
        self._place(v, data, promotion=True)
        return v.meta, data

    def metadata(
        self, chunk: bytes, variant: bytes | None = None, *, tenant: KvTenant = UNSCOPED
    ) -> VariantMeta:
        """One variant's metadata (the newest when none is named); not an access locally
        (a variant only the shared tier holds is fetched and promoted)."""
        with self._lock:
            found = self._find(tenant.scope + chunk, variant, shared=self.shared is not None)
            if found is not None:
                return found.meta
        return self._from_shared(chunk, variant, tenant)[0]

    def lease(
        self,
        chunk: bytes,
        variant: bytes | None = None,
        *,
        ttl_s: float | None = None,
        device: str | None = None,
        tenant: KvTenant = UNSCOPED,
    ) -> LeasedBlob:
        """Pin one variant in shared memory (promoting it) and hand out its handle;
        with ``device`` (a GPU's UUID or the daemon's index of it), in that GPU's tier
        when the variant is hot enough (else in shared memory).

        429 when ``tenant`` holds its most leases or its leases pin its most bytes.
        """
        gpu = None if device is None else self.gpus.resolve(device)
        if self.host is None and gpu is None:
            raise BadRequestError(ErrorCode.SHM_DISABLED, "the shared-memory path is disabled")
        ttl = self._leases.ttl(ttl_s)
        with self._lock:
            found = self._find(tenant.scope + chunk, variant, shared=self.shared is not None)
            if found is not None:
                self._count_access(found)
        if found is None:  # fetched from the shared tier into this one, then leased
            self._from_shared(chunk, variant, tenant)
            with self._lock:
                found = self._find(tenant.scope + chunk, variant)
                self._count_access(found)
        v = found
        with self._lock:
            lease = self._leases.new(ttl, tenant)
            if not self._leases.charge(lease, v.meta.nbytes, tenant.max_pinned_bytes):
                self._leases.release(lease.id)
                raise TooManyRequestsError(
                    ErrorCode.PIN_QUOTA_EXCEEDED,
                    f"the tenant's leases would pin more than {tenant.max_pinned_bytes} "
                    "bytes; release some and retry",
                )
        handle = self._ensure(v, lease, gpu)
        if handle is None:
            self.release(lease.id)
            with self._lock:
                if self._by_id.get(v.vid) is not v:
                    raise NotFoundError(ErrorCode.NOT_FOUND, "the chunk variant was evicted")
            raise ServiceUnavailableError(
                ErrorCode.HOST_TIER_FULL, "no room in the host tier for this blob right now"
            )
        return LeasedBlob(v.meta, handle, lease)

    def release(self, lease_id: str, *, owner: str | None = None) -> bool:
        """End a lease early; False if it had ended already or, with ``owner``, is
        another owner's."""
        with self._lock:
            return self._leases.release(lease_id, owner)

    def sweep(self) -> int:
        """End the leases whose time is up (and release the pins of reply views that
        are gone); the number of leases ended."""
        with self._lock:
            if self._placement is not None:
                self._placement.drain_unpins()
            return self._leases.expire()

    # -- planning --------------------------------------------------------------------------

    def plan(
        self,
        model: str,
        keys: Sequence[bytes],
        *,
        chunk_tokens: Sequence[int] | None = None,
        start: int = 0,
        shm: bool = False,
        device: str | None = None,
        lease_ttl_s: float | None = None,
        tenant: KvTenant = UNSCOPED,
    ) -> Plan:
        """The reuse plan for a prompt whose chunks are ``keys`` in order.

        Unknown chunks are misses. ``start`` is the position of the first chunk (the
        system prompt's length); ``chunk_tokens`` gives each chunk's length, which
        places chunks after a miss (without it, positions after a miss are unknown).
        With ``shm`` the hits are pinned in shared memory under one lease of
        ``tenant``'s; hits past its pinned-bytes cap get no handle (fetch them over HTTP).
        With ``device`` (a GPU's UUID or index; implies a lease) the hot hits are
        pinned in that GPU's tier (promoted there first) and the others in shared memory.
        Chunks with no local variant of ``model`` are looked up in the shared tier (one
        batched round trip, no lock held); its variants are planned like local ones and
        reported in tier ``shared``, without a handle.
        """
        spec = self.models.get(model)
        if spec is None:
            raise BadRequestError(
                ErrorCode.UNKNOWN_MODEL, f"unknown model {model!r}", field="model"
            )
        if chunk_tokens is not None and len(chunk_tokens) != len(keys):
            raise BadRequestError(
                ErrorCode.BAD_CHUNK_TOKENS, "chunk_tokens must give one length per chunk"
            )
        gpu = None if device is None else self.gpus.resolve(device)
        if shm and self.host is None and gpu is None:
            raise BadRequestError(ErrorCode.SHM_DISABLED, "the shared-memory path is disabled")
        leased = shm or gpu is not None
        ttl = self._leases.ttl(lease_ttl_s) if leased else 0.0
        scope = tenant.scope
        remote = self._shared_variants(model, scope, keys)
        with self._lock:
            chosen: dict[bytes, Variant] = {}
            from_shared: dict[bytes, VariantMeta] = {}

            def local(chunk: bytes) -> list[Variant]:
                found = self._by_chunk.get(scope + chunk)
                return [v for v in found.values() if v.meta.model == model] if found else []

            def variants_of(chunk: bytes) -> list[VariantStats]:
                here = local(chunk)
                if here:
                    return [v.stats for v in here]
                return [_planner_stats(m) for m in remote.get(scope + chunk, ())]

            decisions = plan_chunks(keys, variants_of, spec.alpha)
            shared_hits = shared_misses = 0
            for d in decisions:
                held = {v.meta.variant: v for v in local(d.key)}
                if d.hit and d.variant in held:
                    v = held[d.variant]
                    chosen[v.meta.key] = v
                    self._count_access(v)
                    self._value(v, d.cfo)
                    continue
                self.disk.stats.misses += 1
                if self.host is not None:
                    self.host.stats.misses += 1
                if d.hit:  # only the shared tier holds it
                    meta = next(m for m in remote[scope + d.key] if m.variant == d.variant)
                    from_shared[meta.key] = meta
                    shared_hits += 1
                else:
                    shared_misses += 1
            lease = self._leases.new(ttl, tenant) if leased else None
        if self.shared is not None:
            self.shared.count(hits=shared_hits, misses=shared_misses)
        handles: dict[int, ShmHandle | CudaHandle | None] = {}
        tiers: dict[int, str] = {}
        for v in chosen.values():
            if lease is not None:
                handles[v.vid] = self._pin_for_plan(v, lease, tenant, gpu)
            # After the pin: a chunk promoted to the GPU for this plan is found there.
            tiers[v.vid] = self._tier_of(v.vid, gpu)
        # Where each hit is: record key -> (metadata, tier, handle).
        where: dict[bytes, tuple[VariantMeta, str, ShmHandle | CudaHandle | None]] = {
            key: (meta, "shared", None) for key, meta in from_shared.items()
        }
        for v in chosen.values():
            where[v.meta.key] = (v.meta, tiers[v.vid], handles.get(v.vid))
        chunks = _chunk_plans(decisions, chunk_tokens, start, scope, where)
        return Plan(model, chunks, lease)

    def _shared_variants(
        self, model: str, scope: bytes, keys: Sequence[bytes]
    ) -> dict[bytes, list[VariantMeta]]:
        """The shared tier's usable variants of the chunks with no local one of ``model``
        (by scoped chunk key); empty without a shared tier. No lock held during I/O."""
        if self.shared is None:
            return {}
        with self._lock:
            absent = [
                scope + k
                for k in dict.fromkeys(keys)
                if not any(
                    v.meta.model == model for v in self._by_chunk.get(scope + k, {}).values()
                )
            ]
        return self.shared.lookup(absent, lambda m: m.model == model and self._usable_shared(m))

    # -- statistics ------------------------------------------------------------------------

    def stats(self) -> dict[str, TierStats]:
        """A copy of each tier's counters."""
        with self._lock:
            tiers: list[DiskTier | ArenaTier] = [*self.gpus]
            if self.host is not None:
                tiers.append(self.host)
            tiers.append(self.disk)
            rows = {t.name: TierStats(**_fields(t.stats)) for t in tiers}
        if self.shared is not None:
            rows["shared"] = self.shared.tier_stats()
        return rows

    def budgets(self) -> dict[str, int]:
        """Each tier's byte budget, by name."""
        budgets = {device.name: device.budget_bytes for device in self.gpus}
        if self.host is not None:
            budgets["host"] = self.host.budget_bytes
        budgets["disk"] = self.disk.budget_bytes
        if self.shared is not None:  # Redis's own maxmemory bounds it; here, the queue
            budgets["shared"] = self.shared.max_pending_bytes
        return budgets

    @property
    def devices(self) -> list[DeviceTier]:
        """The GPU tiers (empty when the GPU tier is off)."""
        return self.gpus.tiers

    @property
    def gpu_off_reason(self) -> str | None:
        return self.gpus.off_reason

    def device_placement(self, device: str) -> DevicePlacement:
        """The GPU tier named by ``device`` (UUID or index); 400 if none. Never blocks."""
        return self.gpus.resolve(device)

    @property
    def live_leases(self) -> int:
        return len(self._leases)

    def lease_holders(self) -> dict[str, tuple[int, int]]:
        """Per owner holding leases: how many and the bytes they pin."""
        with self._lock:
            return self._leases.owners()

    def scope_bytes(self, scope: bytes) -> int:
        """Disk-tier bytes of a scope (its puts in flight included)."""
        with self._lock:
            return self._scope_bytes.get(scope, 0)

    @property
    def max_leases(self) -> int:
        return self._leases.max_leases

    @property
    def variants(self) -> int:
        return len(self._by_key)

    def _check(self) -> None:
        """Invariants (tests run it after every mutation): the three indexes agree, the
        disk tier counts exactly the live variants within budget, the host tier holds
        only live variants (or pinned zombies)."""
        with self._lock:
            assert len(self._by_key) == len(self._by_id)
            assert sum(len(d) for d in self._by_chunk.values()) == len(self._by_id)
            for v in self._by_id.values():
                assert self._by_key[v.meta.key] is v
                assert self._by_chunk[v.meta.stored_chunk][v.meta.variant] is v
                assert v.vid in self._scope_order[v.meta.scope]
                assert self.disk.holds(v.vid)
            assert sum(map(len, self._scope_order.values())) == len(self._by_id)
            # Puts in flight are admitted to the disk tier before they are visible.
            assert self.disk.stats.entries == len(self._by_id) + len(self._in_flight)
            assert len(self.disk.pending) == len(self._in_flight)
            if not self._in_flight:
                assert not self.disk.pending
                live_bytes = sum(v.meta.nbytes for v in self._by_id.values())
                assert self.disk.stats.bytes == live_bytes
                assert sum(self._scope_bytes.values()) == live_bytes
                assert self.disk.stats.bytes <= self.disk.budget_bytes
            if self.host is not None:
                self.host._check(set(self._by_id))
            self.gpus.check(set(self._by_id))

    def _from_shared(
        self, chunk: bytes, variant: bytes | None, tenant: KvTenant
    ) -> tuple[VariantMeta, bytes]:
        """A local miss: the variant from the shared tier, verified and stored here
        through :meth:`put` (best effort: served even when it cannot be stored), once
        for concurrent reads of it; NotFoundError when the shared tier has none or
        cannot be reached. No lock held."""
        shared = self.shared
        if shared is None:
            raise NotFoundError(ErrorCode.NOT_FOUND, "no such chunk variant")

        def fetch_and_store() -> tuple[VariantMeta, bytes] | None:
            with self._lock:  # a read just before this one may have stored it
                here = self._variants_of(tenant.scope + chunk, variant)
            if here:
                v = max(here, key=lambda v: v.meta.created_at)
                data = self.store.read_blob(v.meta.key)
                if data is not None:
                    return v.meta, data
            found = shared.fetch(tenant.scope, chunk, variant, self._usable_shared)
            if found is not None:
                try:
                    self.put(found[0], found[1], tenant=tenant, share=False)
                    shared.count(promotions=1)
                except SemcachedError as exc:  # e.g. no room: served all the same
                    log.debug(
                        "a chunk variant fetched from the shared tier was not stored: %s", exc
                    )
            return found

        flight = tenant.scope + chunk + (variant or b"")
        found = shared.once(flight, fetch_and_store)
        if found is None:
            raise NotFoundError(ErrorCode.NOT_FOUND, "no such chunk variant")
        return found

    def _usable_shared(self, meta: VariantMeta) -> bool:
        """Whether a record from the shared tier may be stored here (a model and shape
        this daemon accepts, within its limits, the variant key its prefix's hash)."""
        try:
            self.check_shape(meta.model, meta.dtype, meta.shape)
        except SemcachedError:
            return False
        return meta.variant == variant_key(meta.prefix)

    def _place(
        self, v: Variant, data: bytes | bytearray | memoryview, *, promotion: bool = False
    ) -> bool:
        """Copy into the host tier, best effort (takes the lock itself)."""
        return self._placement is not None and self._placement.place(v, data, promotion=promotion)

    # -- internals (lock held unless said otherwise) ----------------------------------------

    def _add(self, meta: VariantMeta, vid: int) -> Variant:
        """Make a variant visible; the disk tier has admitted ``vid`` already."""
        v = Variant(vid, meta, _planner_stats(meta))
        self._by_key[meta.key] = v
        self._by_id[v.vid] = v
        self._by_chunk.setdefault(meta.stored_chunk, {})[meta.variant] = v
        self._scope_order.setdefault(meta.scope, {})[vid] = None
        model = self.models.get(meta.model)
        if model is not None:  # valued as if none of its prefix were shared, until planned
            self._value(v, fix_overhead(model.alpha, context_impact(v.stats), 0.0))
        return v

    def _forget(self, vid: int) -> Variant:
        """Remove a variant from memory and every tier (its disk bytes are the caller's)."""
        v = self._by_id.pop(vid)
        del self._by_key[v.meta.key]
        siblings = self._by_chunk[v.meta.stored_chunk]
        del siblings[v.meta.variant]
        if not siblings:
            del self._by_chunk[v.meta.stored_chunk]
        order = self._scope_order[v.meta.scope]
        del order[vid]
        if not order:
            del self._scope_order[v.meta.scope]
        self._charge(v.meta.scope, -v.meta.nbytes)
        self.disk.remove(vid)
        if self.host is not None:
            self.host.remove(vid)
        self.gpus.remove(vid)
        return v

    def _remove(self, vids: Iterable[int]) -> list[Variant]:
        """Forget ``vids`` whose deletes the caller writes next, then passes to
        :meth:`_removal_written`; puts of their keys wait until then."""
        victims = [self._forget(vid) for vid in vids]
        self._removing.update(v.meta.key for v in victims)
        return victims

    def _removal_written(self, victims: Iterable[Variant]) -> None:
        """The deletes of ``victims`` (from :meth:`_remove`) are written, or failed."""
        self._removing.subtract(v.meta.key for v in victims)
        self._removing = +self._removing  # drops the keys whose count reached zero
        self._removed.notify_all()

    def _charge(self, scope: bytes, nbytes: int) -> None:
        total = self._scope_bytes.get(scope, 0) + nbytes
        if total:
            self._scope_bytes[scope] = total
        else:
            self._scope_bytes.pop(scope, None)

    def _over_quota(self, scope: bytes, max_bytes: int) -> list[int]:
        """The scope's oldest live variants to evict so that it fits ``max_bytes``
        (0: no cap); its puts in flight count but are never chosen."""
        excess = self._scope_bytes.get(scope, 0) - max_bytes if max_bytes else 0
        victims: list[int] = []
        for vid in self._scope_order.get(scope, ()):
            if excess <= 0:
                break
            victims.append(vid)
            excess -= self._by_id[vid].meta.nbytes
        return victims

    def _pin_for_plan(
        self, v: Variant, lease: Lease, tenant: KvTenant, gpu: DevicePlacement | None
    ) -> ShmHandle | CudaHandle | None:
        """A handle to ``v`` under the plan's lease, within the tenant's pinned bytes."""
        nbytes = v.meta.nbytes
        with self._lock:
            if not self._leases.charge(lease, nbytes, tenant.max_pinned_bytes):
                return None
        handle = self._ensure(v, lease, gpu)
        if handle is None:
            with self._lock:
                self._leases.refund(lease, nbytes)
        return handle

    def _ensure(
        self, v: Variant, lease: Lease, gpu: DevicePlacement | None
    ) -> ShmHandle | CudaHandle | None:
        """``v`` pinned under ``lease``: on the GPU when asked and hot, else in shared
        memory; None when neither can hold it (no lock held)."""
        if gpu is not None:
            handle = self.gpus.ensure(gpu, v, lease)
            if handle is not None:
                return handle
        return None if self._placement is None else self._placement.ensure(v, lease)

    def _tier_of(self, vid: int, asked: DevicePlacement | None = None) -> str:
        """The fastest tier holding ``vid``, the asked GPU's first (a hint for the reply)."""
        on_gpu = self.gpus.holder(vid, asked)
        if on_gpu is not None:
            return on_gpu
        return "host" if self.host is not None and self.host.holds(vid) else "disk"

    @overload
    def _find(self, chunk: bytes, variant: bytes | None) -> Variant: ...

    @overload
    def _find(self, chunk: bytes, variant: bytes | None, *, shared: bool) -> Variant | None: ...

    def _find(self, chunk: bytes, variant: bytes | None, *, shared: bool = False) -> Variant | None:
        """The newest local match; a miss raises NotFoundError, or is None with ``shared``
        (the caller asks the shared tier next)."""
        variants = self._variants_of(chunk, variant)
        if not variants:
            if self.host is not None:
                self.host.stats.misses += 1
            self.disk.stats.misses += 1
            if shared:
                return None
            raise NotFoundError(ErrorCode.NOT_FOUND, "no such chunk variant")
        return max(variants, key=lambda v: v.meta.created_at)

    def _variants_of(self, chunk: bytes, variant: bytes | None) -> list[Variant]:
        found = self._by_chunk.get(chunk, {})
        if variant is None:
            return list(found.values())
        v = found.get(variant)
        return [] if v is None else [v]

    def _count_access(self, v: Variant) -> None:
        v.meta.hits += 1
        v.meta.last_access = self._clock()
        self.disk.touch(v.vid)
        self.gpus.touch(v.vid)
        if self.host is not None and self.host.holds(v.vid):
            self.host.touch(v.vid)
            self.host.stats.hits += 1
        else:
            if self.host is not None:
                self.host.stats.misses += 1
            self.disk.stats.hits += 1

    def _value(self, v: Variant, cfo: float) -> None:
        """Tell cost-aware policies how many tokens of prefill this variant saves."""
        v.saved_tokens = v.meta.tokens * (1.0 - cfo)
        self.disk.set_cost(v.vid, v.saved_tokens)
        if self.host is not None:
            self.host.set_cost(v.vid, v.saved_tokens)
        self.gpus.set_cost(v.vid, v.saved_tokens)


def _chunk_plans(
    decisions: Sequence[ChunkDecision],
    chunk_tokens: Sequence[int] | None,
    start: int,
    scope: bytes,
    where: Mapping[bytes, tuple[VariantMeta, str, ShmHandle | CudaHandle | None]],
) -> list[ChunkPlan]:
    """The plan's chunks in prompt order, placed from ``start``."""
    chunks: list[ChunkPlan] = []
    position: int | None = start
    for i, d in enumerate(decisions):
        hit = where.get(scope + d.key + d.variant) if d.hit and d.variant is not None else None
        tokens = chunk_tokens[i] if chunk_tokens is not None else None
        if tokens is None and hit is not None:
            tokens = hit[0].tokens
        chunks.append(
            ChunkPlan(
                decision=d,
                tokens=tokens,
                position=position,
                meta=None if hit is None else hit[0],
                tier=None if hit is None else hit[1],
                handle=None if hit is None else hit[2],
            )
        )
        position = None if position is None or tokens is None else position + tokens
    return chunks


def _planner_stats(meta: VariantMeta) -> VariantStats:
    return VariantStats(
        variant=meta.variant,
        prefix=meta.prefix,
        prefix_tokens=meta.prefix_tokens,
        inter=meta.inter,
        intra=meta.intra,
        token_scores=meta.token_scores,
        tokens=meta.tokens,
    )


def _fields(stats: TierStats) -> dict[str, int]:
    return {name: getattr(stats, name) for name in TierStats.__slots__}
