"""The RAG chunk KV cache engine: variants of chunk KV, tiers, leases and reuse plans.

A plain object usable in-process (benchmarks, a co-located inference engine); the
HTTP layer only parses, validates and calls it. All methods block (LMDB commits,
copies of megabytes) and are meant to run on worker threads; they are thread-safe.

Write path (:meth:`KvCache.put`): validate against the model's shape → make room
on disk (evictions by the disk tier's policy) → one durable LMDB transaction with
the blob, its metadata and the evictions → the variant becomes visible → it is
copied into the host tier (demoting host victims). A put is acknowledged only after
its commit, and nothing of it is readable before.

Read paths: :meth:`get` copies the bytes out (from the host tier, else from disk,
promoting them); :meth:`lease` and :meth:`plan` with ``shm`` hand out shared-memory
handles pinned by a :class:`Lease` until it is released or times out.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import secrets
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

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
    NotFoundError,
    PayloadTooLargeError,
    ServiceUnavailableError,
)
from semcached.index.eviction import EvictionPolicy
from semcached.index.kv_disk import BlobWrite, KvDiskStore
from semcached.index.kv_meta import ModelSpec, VariantMeta, expected_shape
from semcached.index.kv_tiers import DiskTier, HostTier, ShmHandle, TierStats
from semcached.index.lmdb_env import StoreFullError
from semcached.protocol.keys import variant_key

__all__ = [
    "ChunkPlan",
    "KvCache",
    "Lease",
    "LeasedBlob",
    "Plan",
    "PutResult",
]

log = logging.getLogger(__name__)

_FILL_WAIT_S = 1.0  # how long a reader waits at most for another's promotion, per round


@dataclass(slots=True)
class _Variant:
    vid: int
    meta: VariantMeta
    stats: VariantStats
    saved_tokens: float = 0.0  # prefill it spares per reuse, as last planned


@dataclass(frozen=True, slots=True)
class PutResult:
    created: bool  # False: an earlier copy of the same variant was replaced
    variant: bytes
    nbytes: int
    tiers: tuple[str, ...]  # where the bytes are now
    evicted: int  # variants evicted from disk to make room


@dataclass(slots=True)
class Lease:
    """Pins shared-memory extents until released or until ``deadline`` (monotonic)."""

    id: str
    deadline: float
    expires_at: float  # the same moment as wall-clock time, for clients
    ttl_s: float
    pins: list[tuple[int, int]] = field(default_factory=list)  # (variant id, offset)


@dataclass(frozen=True, slots=True)
class LeasedBlob:
    meta: VariantMeta
    handle: ShmHandle
    lease: Lease


@dataclass(frozen=True, slots=True)
class ChunkPlan:
    """The plan for one chunk of a prompt (see :class:`ChunkDecision` for the metrics)."""

    decision: ChunkDecision
    tokens: int | None  # the chunk's length: the caller's, else the stored variant's
    position: int | None  # where the chunk starts in the new prompt (None after an
    # unknown-length miss)
    meta: VariantMeta | None
    tier: str | None  # where the bytes were found: "host" or "disk"
    handle: ShmHandle | None  # set when shared memory was asked for and granted

    @property
    def rope_shift(self) -> int | None:
        if self.meta is None or self.position is None:
            return None
        return self.position - self.meta.rope_base


@dataclass(frozen=True, slots=True)
class Plan:
    model: str
    chunks: list[ChunkPlan]
    lease: Lease | None

    @property
    def recompute_tokens(self) -> int:
        return sum(len(c.decision.recompute) for c in self.chunks)


class KvCache:
    """The chunk KV cache. Open with :meth:`open`, close with :meth:`close`.

    ``disk_budget_bytes`` bounds the blobs on disk (the system of record);
    ``host`` (optional) keeps hot blobs in shared memory. ``eviction`` makes each
    tier's policy. Leases last ``lease_timeout_s`` unless the caller asks for another
    time up to ``max_lease_s``; at most ``max_leases`` are live at once.
    """

    def __init__(
        self,
        *,
        store: KvDiskStore,
        models: Mapping[str, ModelSpec],
        disk_budget_bytes: int,
        host: HostTier | None,
        eviction: Callable[[], EvictionPolicy],
        max_blob_bytes: int,
        lease_timeout_s: float = 30.0,
        max_lease_s: float = 300.0,
        max_leases: int = 10_000,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.models = dict(models)
        self.disk = DiskTier(disk_budget_bytes, eviction())
        self.host = host
        self.max_blob_bytes = max_blob_bytes
        self.lease_timeout_s = lease_timeout_s
        self.max_lease_s = max_lease_s
        self.max_leases = max_leases
        self._clock = clock
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._by_key: dict[bytes, _Variant] = {}  # chunk + variant key -> variant
        self._by_id: dict[int, _Variant] = {}
        self._by_chunk: dict[bytes, dict[bytes, _Variant]] = {}  # chunk -> variant key -> ...
        self._in_flight: set[bytes] = set()  # keys being put
        self._filling: dict[int, threading.Event] = {}  # variants being copied to host
        self._unpins: deque[tuple[int, int]] = deque()  # pins of views no longer referenced
        self._leases: dict[str, Lease] = {}
        self._lease_deadlines: list[tuple[float, str]] = []  # heap
        self.opened = False

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
                self._add(meta, vid)
            victims = self.disk.make_room()
            doomed = [self._forget(vid) for vid in victims]
        if doomed:
            self.store.write([BlobWrite(v.meta.key) for v in doomed])
            log.info("evicted %d chunk variants beyond the disk budget", len(doomed))
        self.opened = True
        return len(self._by_key)

    def close(self) -> None:
        """Persist access counts and release the shared memory."""
        with self._lock:
            touched = [v.meta for v in self._by_id.values() if v.meta.hits]
            self._leases.clear()
            self._lease_deadlines.clear()
        try:
            self.store.save_access(touched)
        except Exception:
            log.exception("could not save chunk access counts")
        if self.host is not None:
            self.host.close()
        self.opened = False

    # -- writes ----------------------------------------------------------------------------

    def put(self, meta: VariantMeta, blob: bytes | bytearray | memoryview) -> PutResult:
        """Store one variant durably; returns after the commit. See the module docstring.

        Raises BadRequestError (unknown model, shape or length mismatch),
        PayloadTooLargeError (over ``max_blob_bytes`` or the disk budget) and
        ConflictError (the same variant is being put concurrently).
        """
        self._check_put(meta, blob)
        key = meta.key
        with self._lock:
            if key in self._in_flight:
                raise ConflictError("put_in_progress", "this chunk variant is being stored")
            self._in_flight.add(key)
            old = self._by_key.get(key)
            if old is not None:  # replaced: stop serving the old bytes now
                self._forget(old.vid)
            vid = next(self._ids)
            # Admitted (and counted) before it is written, so that the policy treats it
            # as the newcomer and concurrent puts see its bytes.
            self.disk.admit(vid, meta.nbytes, pending=True)
            victims = [self._forget(victim) for victim in self.disk.make_room()]
        committed = False
        late: list[_Variant] = []
        try:
            changes = [BlobWrite(v.meta.key) for v in victims]
            changes.append(BlobWrite(key, meta, blob))
            try:
                self.store.write(changes)
            except StoreFullError:
                raise ServiceUnavailableError(
                    "store_full", "the KV disk store reached its map size cap; retry later"
                ) from None
            committed = True
        finally:
            with self._lock:
                self._in_flight.discard(key)
                if committed:  # visible from here on, and not before
                    self.disk.settle(vid)
                    variant = self._add(meta, vid)
                    # Over budget only if concurrent puts were all pending a moment ago.
                    late = [self._forget(victim) for victim in self.disk.make_room()]
                else:
                    self.disk.remove(vid)
        if late:
            self.store.write([BlobWrite(v.meta.key) for v in late])
            victims.extend(late)
        tiers = ["disk"]
        if self._place_in_host(variant, blob):
            tiers.insert(0, "host")
        return PutResult(old is None, meta.variant, meta.nbytes, tuple(tiers), len(victims))

    def _check_put(self, meta: VariantMeta, blob: bytes | bytearray | memoryview) -> None:
        model = self.models.get(meta.model)
        if model is None:
            raise BadRequestError("unknown_model", f"unknown model {meta.model!r}", field="model")
        want = expected_shape(model, meta.tokens)
        if tuple(meta.shape) != want:
            raise BadRequestError(
                "bad_shape",
                f"model {model.name!r} stores KV as [layers, 2, kv_heads, tokens, head_dim] = "
                f"{list(want)}, got {list(meta.shape)}",
                field="shape",
            )
        if meta.variant != variant_key(meta.prefix):
            raise BadRequestError(
                "bad_variant", "the variant key is not the hash of the prefix", field="variant"
            )
        limit = min(self.max_blob_bytes, self.disk.budget_bytes)
        if meta.nbytes > limit:
            raise PayloadTooLargeError(
                "blob_too_large", f"a blob of {meta.nbytes} bytes exceeds the limit of {limit}"
            )
        if len(blob) != meta.nbytes:
            raise BadRequestError(
                "length_mismatch",
                f"shape {list(meta.shape)} of {meta.dtype} is {meta.nbytes} bytes, "
                f"the body has {len(blob)}",
            )

    def delete(self, chunk: bytes, variant: bytes | None = None) -> int:
        """Remove one variant, or every variant of ``chunk``; durable on return. The count."""
        with self._lock:
            variants = self._variants_of(chunk, variant)
            for v in variants:
                self._forget(v.vid)
        if variants:
            self.store.write([BlobWrite(v.meta.key) for v in variants])
        return len(variants)

    # -- reads -----------------------------------------------------------------------------

    def get(
        self, chunk: bytes, variant: bytes | None = None, *, copy: bool = True
    ) -> tuple[VariantMeta, bytes | memoryview]:
        """One variant's bytes (the newest variant when none is named).

        Reads the host tier, else the disk (and promotes). NotFoundError when absent.
        With ``copy=False`` a host-tier hit comes back as a read-only view of the arena
        that pins its extent until the last reference to the view is gone (for a reply
        body: the server drops it once the bytes are written), so no copy is made.
        """
        with self._lock:
            v = self._find(chunk, variant)
            self._count_access(v)
            pin = self._pin_host(v)
        host = self.host
        if pin is not None and host is not None:
            if not copy:
                return v.meta, self._pinned_view(host, v.vid, pin.offset)
            try:
                return v.meta, bytes(host.read(v.vid))
            finally:
                with self._lock:
                    host.unpin(v.vid, pin.offset)
        data = self.store.read_blob(v.meta.key)
        if data is None:  # evicted between the lookup and the read
            raise NotFoundError("not_found", "the chunk variant was evicted")
        self._place_in_host(v, data, promotion=True)
        return v.meta, data

    def _pinned_view(self, host: HostTier, vid: int, offset: int) -> memoryview:
        # A numpy array owns the view so that a finaliser can see the last reference go
        # (memoryviews take no weak references); every memoryview of it keeps it alive.
        owner = np.frombuffer(host.read(vid), dtype=np.uint8)
        # The finaliser may run on any thread, even one holding the lock: it only queues.
        weakref.finalize(owner, self._unpins.append, (vid, offset))
        return owner.data.toreadonly()

    def _drain_unpins(self) -> None:
        """Drop the pins of views whose last reference went (lock held)."""
        while self._unpins:
            vid, offset = self._unpins.popleft()
            if self.host is not None:
                self.host.unpin(vid, offset)

    def metadata(self, chunk: bytes, variant: bytes | None = None) -> VariantMeta:
        """One variant's metadata (the newest when none is named); not an access."""
        with self._lock:
            return self._find(chunk, variant).meta

    def lease(
        self, chunk: bytes, variant: bytes | None = None, *, ttl_s: float | None = None
    ) -> LeasedBlob:
        """Pin one variant in shared memory (promoting it) and hand out its handle."""
        if self.host is None:
            raise BadRequestError("shm_disabled", "the shared-memory path is disabled")
        ttl = self._lease_ttl(ttl_s)
        with self._lock:
            v = self._find(chunk, variant)
            self._count_access(v)
        with self._lock:
            lease = self._new_lease(ttl)
        handle = self._ensure_host(v, lease)
        if handle is None:
            self.release(lease.id)
            with self._lock:
                if self._by_id.get(v.vid) is not v:
                    raise NotFoundError("not_found", "the chunk variant was evicted")
            raise ServiceUnavailableError(
                "host_tier_full", "no room in the host tier for this blob right now"
            )
        return LeasedBlob(v.meta, handle, lease)

    def release(self, lease_id: str) -> bool:
        """End a lease early; False if it had ended already."""
        with self._lock:
            lease = self._leases.pop(lease_id, None)
            if lease is None:
                return False
            self._unpin_lease(lease)
            return True

    def sweep(self) -> int:
        """End the leases whose time is up (and release the pins of reply views that
        are gone); the number of leases ended."""
        with self._lock:
            self._drain_unpins()
            return self._expire_leases()

    # -- planning --------------------------------------------------------------------------

    def plan(
        self,
        model: str,
        keys: Sequence[bytes],
        *,
        chunk_tokens: Sequence[int] | None = None,
        start: int = 0,
        shm: bool = False,
        lease_ttl_s: float | None = None,
    ) -> Plan:
        """The reuse plan for a prompt whose chunks are ``keys`` in order.

        Unknown chunks are misses. ``start`` is the position of the first chunk (the
        system prompt's length); ``chunk_tokens`` gives each chunk's length, which
        places chunks after a miss (without it, positions after a miss are unknown).
        With ``shm`` the hits are pinned in shared memory under one lease.
        """
        spec = self.models.get(model)
        if spec is None:
            raise BadRequestError("unknown_model", f"unknown model {model!r}", field="model")
        if chunk_tokens is not None and len(chunk_tokens) != len(keys):
            raise BadRequestError("bad_chunk_tokens", "chunk_tokens must give one length per chunk")
        if shm and self.host is None:
            raise BadRequestError("shm_disabled", "the shared-memory path is disabled")
        ttl = self._lease_ttl(lease_ttl_s) if shm else 0.0
        with self._lock:
            chosen: dict[bytes, _Variant] = {}

            def variants_of(chunk: bytes) -> list[VariantStats]:
                found = self._by_chunk.get(chunk)
                if not found:
                    return []
                return [v.stats for v in found.values() if v.meta.model == model]

            decisions = plan_chunks(keys, variants_of, spec.alpha)
            for d in decisions:
                if d.hit:
                    assert d.variant is not None
                    v = self._by_chunk[d.key][d.variant]
                    chosen[v.meta.key] = v
                    self._count_access(v)
                    self._value(v, d.cfo)
                else:
                    self.disk.stats.misses += 1
                    if self.host is not None:
                        self.host.stats.misses += 1
            lease = self._new_lease(ttl) if shm else None
        handles: dict[int, ShmHandle | None] = {}
        tiers: dict[int, str] = {}
        for v in chosen.values():
            tiers[v.vid] = "host" if self.host is not None and self.host.holds(v.vid) else "disk"
            if lease is not None:
                handles[v.vid] = self._ensure_host(v, lease)
        chunks: list[ChunkPlan] = []
        position: int | None = start
        for i, d in enumerate(decisions):
            hit = chosen[d.key + d.variant] if d.hit and d.variant is not None else None
            tokens = chunk_tokens[i] if chunk_tokens is not None else None
            if tokens is None and hit is not None:
                tokens = hit.meta.tokens
            chunks.append(
                ChunkPlan(
                    decision=d,
                    tokens=tokens,
                    position=position,
                    meta=None if hit is None else hit.meta,
                    tier=None if hit is None else tiers[hit.vid],
                    handle=None if hit is None else handles.get(hit.vid),
                )
            )
            position = None if position is None or tokens is None else position + tokens
        return Plan(model, chunks, lease)

    # -- statistics ------------------------------------------------------------------------

    def stats(self) -> dict[str, TierStats]:
        """A copy of each tier's counters."""
        with self._lock:
            tiers: list[DiskTier | HostTier] = [self.disk]
            if self.host is not None:
                tiers.insert(0, self.host)
            return {t.name: TierStats(**_fields(t.stats)) for t in tiers}

    @property
    def live_leases(self) -> int:
        return len(self._leases)

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
                assert self._by_chunk[v.meta.chunk][v.meta.variant] is v
                assert self.disk.holds(v.vid)
            # Puts in flight are admitted to the disk tier before they are visible.
            assert self.disk.stats.entries == len(self._by_id) + len(self._in_flight)
            assert len(self.disk.pending) == len(self._in_flight)
            if not self._in_flight:
                assert not self.disk.pending
                live_bytes = sum(v.meta.nbytes for v in self._by_id.values())
                assert self.disk.stats.bytes == live_bytes
                assert self.disk.stats.bytes <= self.disk.budget_bytes
            if self.host is not None:
                self.host._check(set(self._by_id))

    # -- internals (lock held unless said otherwise) ----------------------------------------

    def _add(self, meta: VariantMeta, vid: int) -> _Variant:
        """Make a variant visible; the disk tier has admitted ``vid`` already."""
        v = _Variant(vid, meta, _planner_stats(meta))
        self._by_key[meta.key] = v
        self._by_id[v.vid] = v
        self._by_chunk.setdefault(meta.chunk, {})[meta.variant] = v
        model = self.models.get(meta.model)
        if model is not None:  # valued as if none of its prefix were shared, until planned
            self._value(v, fix_overhead(model.alpha, context_impact(v.stats), 0.0))
        return v

    def _forget(self, vid: int) -> _Variant:
        """Remove a variant from memory and every tier (its disk bytes are the caller's)."""
        v = self._by_id.pop(vid)
        del self._by_key[v.meta.key]
        siblings = self._by_chunk[v.meta.chunk]
        del siblings[v.meta.variant]
        if not siblings:
            del self._by_chunk[v.meta.chunk]
        self.disk.remove(vid)
        if self.host is not None:
            self.host.remove(vid)
        return v

    def _find(self, chunk: bytes, variant: bytes | None) -> _Variant:
        variants = self._variants_of(chunk, variant)
        if not variants:
            if self.host is not None:
                self.host.stats.misses += 1
            self.disk.stats.misses += 1
            raise NotFoundError("not_found", "no such chunk variant")
        return max(variants, key=lambda v: v.meta.created_at)

    def _variants_of(self, chunk: bytes, variant: bytes | None) -> list[_Variant]:
        found = self._by_chunk.get(chunk, {})
        if variant is None:
            return list(found.values())
        v = found.get(variant)
        return [] if v is None else [v]

    def _count_access(self, v: _Variant) -> None:
        v.meta.hits += 1
        v.meta.last_access = self._clock()
        self.disk.touch(v.vid)
        if self.host is not None and self.host.holds(v.vid):
            self.host.touch(v.vid)
            self.host.stats.hits += 1
        else:
            if self.host is not None:
                self.host.stats.misses += 1
            self.disk.stats.hits += 1

    def _value(self, v: _Variant, cfo: float) -> None:
        """Tell cost-aware policies how many tokens of prefill this variant saves."""
        v.saved_tokens = v.meta.tokens * (1.0 - cfo)
        self.disk.set_cost(v.vid, v.saved_tokens)
        if self.host is not None:
            self.host.set_cost(v.vid, v.saved_tokens)

    def _pin_host(self, v: _Variant) -> ShmHandle | None:
        if self.host is None or not self.host.holds(v.vid):
            return None
        return self.host.pin(v.vid)

    def _pin_into(self, lease: Lease, v: _Variant) -> ShmHandle:
        assert self.host is not None
        handle = self.host.pin(v.vid)
        lease.pins.append((v.vid, handle.offset))
        return handle

    def _unpin_lease(self, lease: Lease) -> None:
        assert self.host is not None
        for vid, offset in lease.pins:
            self.host.unpin(vid, offset)

    def _lease_ttl(self, ttl_s: float | None) -> float:
        ttl = self.lease_timeout_s if ttl_s is None else ttl_s
        if not (0 < ttl <= self.max_lease_s):
            raise BadRequestError(
                "bad_lease", f"a lease lasts more than 0 and at most {self.max_lease_s:g} s"
            )
        return ttl

    def _new_lease(self, ttl: float) -> Lease:
        self._expire_leases()
        if len(self._leases) >= self.max_leases:
            raise ServiceUnavailableError(
                "too_many_leases", f"{self.max_leases} leases are live; release some and retry"
            )
        lease = Lease(secrets.token_hex(8), self._monotonic() + ttl, self._clock() + ttl, ttl)
        self._leases[lease.id] = lease
        heapq.heappush(self._lease_deadlines, (lease.deadline, lease.id))
        return lease

    def _expire_leases(self) -> int:
        now = self._monotonic()
        ended = 0
        while self._lease_deadlines and self._lease_deadlines[0][0] <= now:
            _, lease_id = heapq.heappop(self._lease_deadlines)
            lease = self._leases.pop(lease_id, None)
            if lease is not None:
                self._unpin_lease(lease)
                ended += 1
        return ended

    # -- host placement (takes the lock itself; copies outside it) -------------------------

    def _place_in_host(
        self, v: _Variant, data: bytes | bytearray | memoryview, *, promotion: bool = False
    ) -> bool:
        """Copy ``data`` into the host tier (best effort: False when it does not fit or
        someone else is copying it in)."""
        if self.host is None:
            return False
        with self._lock:
            if v.vid in self._filling:
                return False
            if not self._reserve_host(v):
                return False
            done = self._filling[v.vid] = threading.Event()
        try:
            self.host.write(v.vid, data)
            return self._publish_host(v, promotion)
        finally:
            with self._lock:
                del self._filling[v.vid]
            done.set()

    def _ensure_host(self, v: _Variant, lease: Lease) -> ShmHandle | None:
        """The variant in the host tier (copied from disk if needed) and pinned under
        ``lease`` in the same step, so no put can demote it in between; None if it
        cannot be placed. Two readers promoting one variant at once: the second waits
        for the first's copy.
        """
        host = self.host
        assert host is not None
        while True:
            with self._lock:
                if host.holds(v.vid):
                    return self._pin_into(lease, v)
                if self._by_id.get(v.vid) is not v:
                    return None
                pending = self._filling.get(v.vid)
                if pending is None:
                    if not self._reserve_host(v):
                        return None
                    done = self._filling[v.vid] = threading.Event()
                    break
            pending.wait(_FILL_WAIT_S)
        try:
            nbytes = v.meta.nbytes

            def copy(blob: memoryview) -> bool:
                if len(blob) != nbytes:  # cannot happen short of a corrupt store
                    raise ValueError(f"stored blob has {len(blob)} bytes, expected {nbytes}")
                host.write(v.vid, blob)
                return True

            copied = self.store.read_with(v.meta.key, copy)
            with self._lock:
                if not copied or self._by_id.get(v.vid) is not v:
                    host.remove(v.vid)
                    return None
                host.publish(v.vid, v.saved_tokens)
                host.stats.promotions += 1
                return self._pin_into(lease, v)
        finally:
            with self._lock:
                del self._filling[v.vid]
            done.set()

    def _reserve_host(self, v: _Variant) -> bool:
        """An invisible host extent for ``v`` (demoting others); False if none (lock held)."""
        assert self.host is not None
        self._drain_unpins()
        if self._by_id.get(v.vid) is not v:
            return False  # deleted or evicted meanwhile
        try:
            return self.host.reserve(v.vid, v.meta.nbytes) is not None
        except Exception:
            log.exception("could not place a chunk in the host tier")
            return False

    def _publish_host(self, v: _Variant, promotion: bool) -> bool:
        assert self.host is not None
        with self._lock:
            if self._by_id.get(v.vid) is not v:
                self.host.remove(v.vid)
                return False
            self.host.publish(v.vid, v.saved_tokens)
            if promotion:
                self.host.stats.promotions += 1
            return True


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
