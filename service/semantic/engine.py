"""The semantic response cache engine, usable in-process without HTTP.

A lookup tries the exact tier first (a hash of the normalised prompt within the
namespace and partition), then embeds the prompt if no vector came with it and
searches the HNSW index of its (namespace, category); candidates from another
partition or past their expiry are dropped, and the best remaining one answers
the lookup if the category's policy says its similarity is high enough.

An insert is acknowledged only after its LMDB transaction has committed; the
in-memory structures (indexes, expiry order, eviction order, quota counts) are
derived from LMDB. The indexes are snapshotted in the background and at close
(:mod:`semcached.service.semantic.snapshots`) and at start loaded from their
snapshots and reconciled with LMDB (:mod:`semcached.service.semantic.restore`).

Threading: every method runs on the event loop, which alone mutates the in-memory
structures; index searches and inserts, embedding and LMDB writes run on the
executor (they release the GIL).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import itertools
import logging
import math
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Literal, NamedTuple, TypeVar

import numpy as np
from numpy.typing import NDArray

from semcached.cachepolicy.categories import CategoryPolicy, CategoryTable
from semcached.cachepolicy.policies import eviction_factory
from semcached.errors import BadRequestError
from semcached.index.docstore import Document, DocumentStore, EntryMeta, exact_key
from semcached.index.eviction import EvictionPolicy
from semcached.index.expiry import ExpiryIndex
from semcached.index.vector_index import VectorIndex
from semcached.service.semantic.embedding.base import Embedder
from semcached.service.semantic.restore import EntryGroup, OpenReport, restore
from semcached.service.semantic.search_batch import SearchBatcher, SearchStats
from semcached.service.semantic.snapshots import SnapshotDirectory, SnapshotStats, SnapshotTracker

__all__ = [
    "CategoryStats",
    "Insert",
    "InsertResult",
    "Lookup",
    "LookupResult",
    "OpenReport",
    "SemanticCache",
    "SnapshotStats",
]

log = logging.getLogger(__name__)

T = TypeVar("T")
Vector = NDArray[np.float32]
IndexFactory = Callable[[int], VectorIndex]  # dim -> a new empty index
Strategy = Literal["exact", "semantic"]


@dataclass(frozen=True, slots=True)
class Lookup:
    """Has a prompt meaning the same thing been answered in this namespace and partition?"""

    namespace: str
    text: str | None = None
    vector: Vector | None = None
    category: str | None = None
    partition: str = ""
    threshold: float | None = None


@dataclass(frozen=True, slots=True)
class LookupResult:
    hit: bool
    category: str
    similarity: float | None = None  # the best candidate's, also on a miss
    entry_id: int | None = None
    age_s: float | None = None
    strategy: Strategy | None = None
    document: Document | None = None


@dataclass(frozen=True, slots=True)
class Insert:
    """A prompt and its response to cache."""

    namespace: str
    prompt: str
    response: bytes
    response_format: Literal["json", "bytes"] = "json"
    category: str | None = None
    partition: str = ""
    model: str = ""
    vector: Vector | None = None
    ttl_s: float | None = None


@dataclass(frozen=True, slots=True)
class InsertResult:
    entry_id: int
    category: str
    expires_at: float


@dataclass(slots=True)
class CategoryStats:
    """Counters of one category since start, and its current size."""

    entries: int = 0
    bytes: int = 0
    hits: int = 0
    misses: int = 0
    inserts: int = 0
    evictions: int = 0
    expirations: int = 0


class _Entry(NamedTuple):
    """What the engine keeps in memory per entry to filter and account without LMDB.

    A named tuple, so that a restart can build a million of them in C
    (``tuple.__new__`` over ``zip``) instead of one Python ``__init__`` call each.
    """

    namespace: str
    category: str
    partition: str
    created_at: float
    expires_at: float
    size: int


_new_entry = functools.partial(tuple.__new__, _Entry)  # _Entry from a 6-tuple, in C


@dataclass
class _CategoryState:
    policy: CategoryPolicy
    eviction: EvictionPolicy
    stats: CategoryStats = field(default_factory=CategoryStats)


class SemanticCache:
    """The engine. Construct, ``await open()``, use, ``await close()``."""

    def __init__(
        self,
        *,
        store: DocumentStore,
        index_factory: IndexFactory,
        embedder: Embedder,
        categories: CategoryTable,
        dim: int,
        executor: Executor,
        search_executor: Executor | None = None,
        search_batches_in_flight: int = 1,
        eviction_factory: Callable[[], EvictionPolicy] | None = None,
        clock: Callable[[], float] = time.time,
        candidates: int = 8,
        sweep_interval_s: float = 1.0,
        sweep_batch: int = 1000,
        hit_flush_interval_s: float = 5.0,
        snapshots: SnapshotDirectory | None = None,
        snapshot_interval_s: float = 0.0,
    ) -> None:
        """``snapshots``: where index snapshots go (None: none, every start rebuilds);
        ``snapshot_interval_s``: how often changed indexes are snapshotted in the
        background (0: only at close); ``search_executor``: where index searches run
        (default ``executor``), batched per index by :class:`SearchBatcher`, with up to
        ``search_batches_in_flight`` batches of one index searching at once."""
        self._store = store
        self._index_factory = index_factory
        self._embedder = embedder
        self._categories = categories
        self.dim = dim
        self._executor = executor
        self._searches = SearchBatcher(
            search_executor or executor, max_in_flight=search_batches_in_flight
        )
        self._eviction_factory = eviction_factory
        self._clock = clock
        self._candidates = candidates
        self._sweep_interval_s = sweep_interval_s
        self._sweep_batch = sweep_batch
        self._hit_flush_interval_s = hit_flush_interval_s

        self._indexes: dict[tuple[str, str], VectorIndex] = {}
        self._entries: dict[int, _Entry] = {}
        self._expiry = ExpiryIndex()
        self._state = {p.name: _CategoryState(p, self._new_eviction(p)) for p in categories}
        self._pending_hits: dict[int, tuple[int, float]] = {}
        self._next_id = 1
        self._maintenance: asyncio.Task[None] | None = None
        self._snapshots = SnapshotTracker(snapshots, executor)
        self._snapshot_interval_s = snapshot_interval_s
        self._snapshotter: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._expired_at_open: list[int] = []
        # Restored entries whose expiry the expiry index does not know yet (see open()).
        # Restored entries that the expiry index and the eviction policies do not know
        # yet (see _restore_group), ascending, and how far _fill_backlog has got.
        self._backlog_parts: list[NDArray[np.uint64]] = []
        self._backlog: list[int] = []
        self._backlog_done = 0
        self._backlog_filler: asyncio.Task[None] | None = None
        self.last_open: OpenReport | None = None

    # -- lifecycle ---------------------------------------------------------------------

    async def open(self) -> None:
        """Restore the indexes (snapshots + LMDB) and bookkeeping; start background tasks."""
        # A restart creates an entry tuple per stored entry; with the cyclic collector
        # on, the collections those allocations trigger cost three times the work
        # itself (1.2 of 1.6 s at 1M entries, measured). Nothing restored is cyclic.
        collecting = gc.isenabled()
        gc.disable()
        try:
            restored = await restore(
                store=self._store,
                tracker=self._snapshots,
                index_factory=self._index_factory,
                dim=self.dim,
                now=self._clock(),
                account=self._restore_group,
                executor=self._executor,
            )
        finally:
            if collecting:
                gc.enable()
        self._indexes = restored.indexes
        self._next_id = restored.next_id
        self._expired_at_open = restored.expired
        report = self.last_open = restored.report
        log.info(
            "semantic cache: %d entries in %d indexes ready in %.2f s (%d indexes from "
            "snapshots, %d rebuilt; %d entries from snapshots, %d added from LMDB, "
            "%d removed; %d expired)",
            report.entries,
            len(self._indexes),
            report.seconds,
            report.indexes_loaded,
            report.indexes_rebuilt,
            report.entries_from_snapshot,
            report.entries_added,
            report.entries_removed,
            report.expired,
        )
        self._stopping.clear()
        parts, self._backlog_parts = self._backlog_parts, []
        self._backlog = np.sort(np.concatenate(parts)).tolist() if parts else []
        self._backlog_done = 0
        self._backlog_filler = asyncio.create_task(self._fill_backlog(), name="semantic-backlog")
        self._maintenance = asyncio.create_task(self._maintain(), name="semantic-maintenance")
        if self._snapshots.directory is not None and self._snapshot_interval_s > 0:
            self._snapshotter = asyncio.create_task(
                self._snapshot_periodically(), name="semantic-snapshots"
            )

    async def close(self) -> None:
        """Stop the background tasks, flush pending hit counts, snapshot changed indexes."""
        self._stopping.set()
        if self._snapshotter is not None:
            await self._snapshotter  # finishes a round under way rather than cut a save
            self._snapshotter = None
        for task in (self._maintenance, self._backlog_filler):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._maintenance = self._backlog_filler = None
        await self._flush_hits()
        await self.snapshot()

    async def snapshot(self) -> int:
        """Snapshot every index changed since its last snapshot; returns how many."""
        return await self._snapshots.save_changed(self._indexes, lambda: self._next_id)

    async def _snapshot_periodically(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self._snapshot_interval_s)
                return
            try:
                await self.snapshot()
            except Exception:
                log.exception("semantic cache snapshot round failed; retrying next round")

    # -- lookups -----------------------------------------------------------------------

    async def lookup(self, request: Lookup) -> LookupResult:
        policy = self._categories.resolve(request.category)
        state = self._state[policy.name]
        if request.text is None and request.vector is None:
            raise BadRequestError("missing_field", "give text, vector or both", field="text")
        now = self._clock()

        if request.text is not None:
            exact = self._exact(request, now)
            if exact is not None:
                self._state[exact.category].stats.hits += 1
                return exact

        vector = await self._query_vector(request.text, request.vector)
        index = self._indexes.get((request.namespace, policy.name))
        best: tuple[int, float] | None = None
        if index is not None and len(index):
            best = await self._best_candidate(index, vector, request, policy.name, now)
        if best is not None and policy.is_hit(best[1], request.threshold):
            document = self._store.get(best[0])
            if document is not None:
                state.stats.hits += 1
                self._record_hit(best[0], policy.name, now)
                return LookupResult(
                    hit=True,
                    category=policy.name,
                    similarity=best[1],
                    entry_id=best[0],
                    age_s=now - document.created_at,
                    strategy="semantic",
                    document=document,
                )
        state.stats.misses += 1
        return LookupResult(
            hit=False, category=policy.name, similarity=None if best is None else best[1]
        )

    async def lookup_many(self, requests: Sequence[Lookup]) -> list[LookupResult]:
        """Several lookups; text-only ones share model calls through the embedder's batching."""
        return list(await asyncio.gather(*(self.lookup(r) for r in requests)))

    def _exact(self, request: Lookup, now: float) -> LookupResult | None:
        assert request.text is not None
        entry_id = self._store.exact_lookup(
            exact_key(request.namespace, request.partition, request.text)
        )
        if entry_id is None:
            return None
        entry = self._entries.get(entry_id)
        if entry is None or CategoryPolicy.is_expired(entry.expires_at, now):
            return None
        document = self._store.get(entry_id)
        if document is None:
            return None
        self._record_hit(entry_id, entry.category, now)
        return LookupResult(
            hit=True,
            category=entry.category,
            similarity=1.0,
            entry_id=entry_id,
            age_s=now - document.created_at,
            strategy="exact",
            document=document,
        )

    async def _best_candidate(
        self, index: VectorIndex, vector: Vector, request: Lookup, category: str, now: float
    ) -> tuple[int, float] | None:
        """The most similar live entry of the request's partition, widening k if needed."""
        k = self._candidates
        while True:
            ids, sims = await self._searches.search(index, vector, k)
            for entry_id, similarity in zip(ids.tolist(), sims.tolist(), strict=True):
                entry = self._entries.get(entry_id)
                if (
                    entry is not None
                    and entry.partition == request.partition
                    and not CategoryPolicy.is_expired(entry.expires_at, now)
                ):
                    return entry_id, float(similarity)
            # Every candidate belonged to another partition or expired: look further,
            # up to the whole index (bounded: k at least doubles each round).
            if len(ids) < k or k >= len(index):
                return None
            k = min(k * 4, len(index))

    # -- inserts -----------------------------------------------------------------------

    async def insert(self, request: Insert) -> InsertResult:
        """Store an entry durably, index it, then evict while its category is over quota."""
        return (await self.insert_many([request]))[0]

    async def insert_many(self, requests: Sequence[Insert]) -> list[InsertResult]:
        policies = [self._categories.resolve(r.category) for r in requests]
        for r in requests:
            if not r.prompt:
                raise BadRequestError("invalid_field", "prompt must not be empty", field="prompt")
            if r.ttl_s is not None and not (math.isfinite(r.ttl_s) and r.ttl_s > 0):
                raise BadRequestError("invalid_field", "ttl_s must be positive", field="ttl_s")
        vectors = await self._vectors_for(requests)
        now = self._clock()
        items: list[tuple[Document, Vector]] = []
        for request, policy, vector in zip(requests, policies, vectors, strict=True):
            entry_id = self._next_id
            self._next_id += 1
            document = Document(
                entry_id=entry_id,
                namespace=request.namespace,
                category=policy.name,
                partition=request.partition,
                model=request.model,
                prompt=request.prompt,
                response=request.response,
                response_format=request.response_format,
                created_at=now,
                expires_at=policy.expires_at(now, request.ttl_s),
                hit_count=0,
                last_hit_at=0.0,
                vector_dim=self.dim,
            )
            items.append((document, vector))
        replaced = [
            old
            for doc, _ in items
            if (
                old := self._store.exact_lookup(exact_key(doc.namespace, doc.partition, doc.prompt))
            )
            is not None
        ]
        await self._run(self._store.put_many, items)  # durable from here on
        await self._add_to_memory(items)
        for doc, _ in items:
            self._state[doc.category].stats.inserts += 1
        # The same prompt inserted again replaces the older entry.
        stale = [i for i in replaced if i in self._entries]
        if stale:
            await self._remove(stale, reason="replaced")
        for category in {doc.category for doc, _ in items}:
            await self._enforce_quota(category)
        return [InsertResult(d.entry_id, d.category, d.expires_at) for d, _ in items]

    async def _vectors_for(self, requests: Sequence[Insert]) -> list[Vector]:
        given = [self._check_vector(r.vector) if r.vector is not None else None for r in requests]
        missing = [i for i, v in enumerate(given) if v is None]
        if missing:
            embedded = await self._embedder.embed([requests[i].prompt for i in missing])
            for row, i in enumerate(missing):
                given[i] = embedded[row]
        return [v for v in given if v is not None]

    async def _query_vector(self, text: str | None, vector: Vector | None) -> Vector:
        if vector is not None:
            return self._check_vector(vector)
        assert text is not None
        if not text.strip():
            raise BadRequestError("invalid_field", "text must not be empty", field="text")
        rows = await self._embedder.embed([text])
        return np.asarray(rows[0], dtype=np.float32)

    def _check_vector(self, vector: Vector) -> Vector:
        v = np.asarray(vector, dtype=np.float32)
        if v.shape != (self.dim,):
            raise BadRequestError(
                "invalid_vector",
                f"vector must have {self.dim} dimensions, got shape {v.shape}",
                field="vector",
            )
        if not np.isfinite(v).all():
            raise BadRequestError("invalid_vector", "vector contains NaN or Inf", field="vector")
        norm = float(np.linalg.norm(v))
        if norm == 0.0:
            raise BadRequestError("invalid_vector", "vector must not be all zeros", field="vector")
        return v / norm

    async def _add_to_memory(self, items: Sequence[tuple[Document, Vector]]) -> None:
        """Index and account entries already committed to LMDB."""
        by_index: dict[tuple[str, str], list[tuple[Document, Vector]]] = {}
        for doc, vec in items:
            by_index.setdefault((doc.namespace, doc.category), []).append((doc, vec))
        for key, group in by_index.items():
            index = self._indexes.get(key)
            if index is None:
                index = self._indexes[key] = self._index_factory(self.dim)
            ids = np.fromiter((d.entry_id for d, _ in group), dtype=np.uint64, count=len(group))
            try:
                await self._run(index.add, ids, np.stack([v for _, v in group]))
            finally:
                self._snapshots.changed(key)
        for doc, _ in items:
            self._account(
                EntryMeta(
                    doc.entry_id,
                    doc.namespace,
                    doc.category,
                    doc.partition,
                    doc.created_at,
                    doc.expires_at,
                    doc.size_bytes,
                )
            )

    def _restore_group(self, group: EntryGroup) -> None:
        """Account the live entries of one group found in LMDB at open. O(entries).

        Only the entry table and the quota counts are filled here. The expiry index
        (~8 us per add) and the eviction policy (a B-skiplist insert) are fed later by
        :meth:`_fill_backlog`, oldest entry first, between requests: lookups check
        expiry on the entry itself, and a policy that has seen only the oldest
        entries still names the right victims.
        """
        state = self._state_of(group.category)
        rows = group.records
        ids: list[int] = rows["id"].tolist()
        fields = zip(
            itertools.repeat(group.namespace),
            itertools.repeat(group.category),
            itertools.repeat(group.partition),
            rows["created_at"].tolist(),
            rows["expires_at"].tolist(),
            rows["size"].tolist(),
        )
        self._entries.update(zip(ids, map(_new_entry, fields), strict=True))
        state.stats.entries += len(ids)
        state.stats.bytes += int(rows["size"].sum())
        self._backlog_parts.append(rows["id"])

    async def _fill_backlog(self, chunk: int = 1024) -> None:
        """Feed the restored entries to the expiry index and their eviction policies,
        ``chunk`` per loop turn, oldest first."""
        while self._backlog_done < len(self._backlog):
            self._fill_backlog_now(chunk)
            await asyncio.sleep(0)

    def _fill_backlog_now(self, limit: int | None = None) -> None:
        """Feed up to ``limit`` (default: all) backlog entries now."""
        start = self._backlog_done
        stop = len(self._backlog) if limit is None else min(len(self._backlog), start + limit)
        for entry_id in self._backlog[start:stop]:
            entry = self._entries.get(entry_id)
            if entry is not None:  # not removed since open
                self._expiry.add(entry_id, entry.expires_at)
                self._state[entry.category].eviction.admit(entry_id, entry.size)
        self._backlog_done = stop
        if stop == len(self._backlog):
            self._backlog, self._backlog_done = [], 0

    def _state_of(self, category: str) -> _CategoryState:
        state = self._state.get(category)
        if state is None:
            # A category removed from the configuration since the entry was written:
            # keep serving it under the default policy rather than dropping data.
            default = self._categories.resolve(None)
            state = self._state[category] = _CategoryState(default, self._new_eviction(default))
        return state

    def _account(self, meta: EntryMeta) -> None:
        """Track an entry in every in-memory structure but its index. O(log n)."""
        state = self._state_of(meta.category)
        size = meta.size_bytes
        self._entries[meta.entry_id] = _Entry(
            meta.namespace, meta.category, meta.partition, meta.created_at, meta.expires_at, size
        )
        if self._backlog:  # restored entries are still being fed: join the queue (ids grow)
            self._backlog.append(meta.entry_id)
        else:
            self._expiry.add(meta.entry_id, meta.expires_at)
            state.eviction.admit(meta.entry_id, size)
        state.stats.entries += 1
        state.stats.bytes += size

    def _new_eviction(self, policy: CategoryPolicy) -> EvictionPolicy:
        """The eviction policy the category configures (``eviction = ...``), unless the
        engine was given a factory for all categories."""
        if self._eviction_factory is not None:
            return self._eviction_factory()
        return eviction_factory(policy.eviction)()

    # -- removal -----------------------------------------------------------------------

    async def _enforce_quota(self, category: str) -> None:
        state = self._state[category]
        victims: list[int] = []
        entries, nbytes = state.stats.entries, state.stats.bytes
        while state.policy.over_quota(entries, nbytes):
            victim = state.eviction.choose_victim()
            if victim is None:
                if not self._backlog:
                    break
                self._fill_backlog_now()  # restored entries the policy has not seen yet
                continue
            state.eviction.forget(victim)
            entry = self._entries.get(victim)
            if entry is not None:
                victims.append(victim)
                entries -= 1
                nbytes -= entry.size
        if victims:
            await self._remove(victims, reason="evicted")

    async def _remove(self, entry_ids: Sequence[int], *, reason: str) -> int:
        """Remove entries from LMDB, then from every in-memory structure."""
        await self._run(self._store.delete_many, list(entry_ids))
        removed = 0
        by_index: dict[tuple[str, str], list[int]] = {}
        for entry_id in entry_ids:
            entry = self._entries.pop(entry_id, None)
            if entry is None:
                continue
            removed += 1
            self._expiry.discard(entry_id)
            self._pending_hits.pop(entry_id, None)
            state = self._state[entry.category]
            state.eviction.forget(entry_id)
            state.stats.entries -= 1
            state.stats.bytes -= entry.size
            if reason == "evicted":
                state.stats.evictions += 1
            elif reason == "expired":
                state.stats.expirations += 1
            by_index.setdefault((entry.namespace, entry.category), []).append(entry_id)
        for key, ids in by_index.items():
            index = self._indexes.get(key)
            if index is not None:
                try:
                    await self._run(index.remove, np.asarray(ids, dtype=np.uint64))
                finally:
                    self._snapshots.changed(key)
        return removed

    async def delete(self, entry_id: int) -> bool:
        """Remove one entry; False when there was none."""
        if entry_id not in self._entries:
            return False
        return await self._remove([entry_id], reason="deleted") == 1

    async def purge(
        self, namespace: str, category: str | None = None, partition: str | None = None
    ) -> int:
        """Remove every entry of a namespace, optionally only one category or partition."""
        if category is not None:
            category = self._categories.resolve(category).name
        ids = [
            entry_id
            for entry_id, e in self._entries.items()
            if e.namespace == namespace
            and (category is None or e.category == category)
            and (partition is None or e.partition == partition)
        ]
        return await self._remove(ids, reason="purged") if ids else 0

    def get(self, entry_id: int) -> Document | None:
        """The stored entry, or None if absent or expired."""
        entry = self._entries.get(entry_id)
        if entry is None or CategoryPolicy.is_expired(entry.expires_at, self._clock()):
            return None
        return self._store.get(entry_id)

    # -- maintenance -------------------------------------------------------------------

    async def sweep_expired(self) -> int:
        """Remove up to one batch of expired entries; returns how many.

        The first call also deletes from LMDB what had expired when the cache opened.
        """
        if self._expired_at_open:
            await self._delete_expired_at_open()
        self._fill_backlog_now()  # the expiry index must know every entry first
        due = self._expiry.pop_expired(self._clock(), self._sweep_batch)
        return await self._remove(due, reason="expired") if due else 0

    async def _delete_expired_at_open(self) -> None:
        """Delete from LMDB what had expired when the cache opened (never loaded)."""
        while self._expired_at_open:
            batch = self._expired_at_open[: self._sweep_batch]
            del self._expired_at_open[: len(batch)]  # before the await: sweeps may overlap
            await self._run(self._store.delete_many, batch)

    def _record_hit(self, entry_id: int, category: str, now: float) -> None:
        count, _ = self._pending_hits.get(entry_id, (0, 0.0))
        self._pending_hits[entry_id] = (count + 1, now)
        self._state[category].eviction.record_access(entry_id)

    async def _flush_hits(self) -> None:
        if not self._pending_hits:
            return
        updates = [(i, c, t) for i, (c, t) in self._pending_hits.items()]
        self._pending_hits = {}
        await self._run(self._store.update_hits, updates)

    async def _maintain(self) -> None:
        last_flush = time.monotonic()
        while True:
            await asyncio.sleep(self._sweep_interval_s)
            try:
                swept = self._sweep_batch
                while swept == self._sweep_batch:  # a backlog: keep going between requests
                    swept = await self.sweep_expired()
                if time.monotonic() - last_flush >= self._hit_flush_interval_s:
                    await self._flush_hits()
                    last_flush = time.monotonic()
            except Exception:
                log.exception("semantic cache maintenance failed; retrying next round")

    # -- introspection -----------------------------------------------------------------

    def stats(self) -> dict[str, CategoryStats]:
        return {name: state.stats for name, state in self._state.items()}

    def search_stats(self) -> SearchStats:
        """Index search calls made and queries sent (their ratio: the mean batch)."""
        return self._searches.stats

    def snapshot_stats(self) -> SnapshotStats:
        """Index snapshots written and failed since start, and time spent on them."""
        return self._snapshots.stats

    def __len__(self) -> int:
        return len(self._entries)

    async def _run(self, fn: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
