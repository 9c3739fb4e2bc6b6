"""Bringing the semantic cache's indexes back at start: load snapshots, reconcile with LMDB.

LMDB is the truth; a snapshot is a head start. :func:`restore` does:

1. read the snapshot catalog and load each listed index snapshot (hnswlib
   ``load_index``; one sequential read, no graph construction);
2. read every entry's fixed-size bookkeeping record from LMDB as one array
   (:meth:`~semcached.index.docstore.DocumentStore.scan_columns`: no document is
   decoded), split off the expired entries, and hand the live ones to the engine's
   bookkeeping a (namespace, category, partition) group at a time;
3. per index, reconcile: ids live in LMDB but absent from the snapshot are added
   with their vectors read from LMDB; ids in the snapshot that LMDB no longer holds,
   or that have expired by now, are removed. An index without a usable snapshot
   (missing, corrupt, truncated, of another dimension: :class:`SnapshotError`) is
   rebuilt from LMDB, logging its progress.

So a start after a clean shutdown reads vectors only for what changed, and a start
after ``kill -9`` reads those written since the last background snapshot.
Cost: O(n) for ~40-byte records, vectorised + O(snapshot bytes) + O(changed entries *
index add); the per-entry Python work is the engine's own bookkeeping.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
from numpy.typing import NDArray

from semcached.index.docstore import DocumentStore
from semcached.index.snapshot import SnapshotError
from semcached.index.vector_index import VectorIndex
from semcached.service.blocking import run_blocking
from semcached.service.semantic.snapshots import IndexKey, SnapshotTracker

__all__ = [
    "PROGRESS_EVERY_N",
    "PROGRESS_EVERY_S",
    "EntryGroup",
    "OpenReport",
    "Restored",
    "restore",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

PROGRESS_EVERY_N = 100_000
"""A rebuild logs its progress every this many entries..."""
PROGRESS_EVERY_S = 5.0
"""...or every this many seconds, whichever comes first."""


@dataclass(frozen=True, slots=True)
class OpenReport:
    """What the last ``open()`` did and how long it took."""

    seconds: float
    entries: int  # live entries restored
    expired: int  # entries found expired in LMDB (not loaded; deleted afterwards)
    indexes_loaded: int  # indexes that started from a snapshot
    indexes_rebuilt: int  # indexes built from LMDB (no usable snapshot)
    entries_from_snapshot: int  # live entries whose vectors came with a snapshot
    entries_added: int  # vectors read from LMDB and added (new since the snapshot, or rebuilt)
    entries_removed: int  # snapshot entries gone from LMDB or expired, removed


@dataclass(frozen=True, slots=True)
class EntryGroup:
    """The live entries of one (namespace, category, partition) found at open.

    ``records`` are :data:`~semcached.index.docstore.META_DTYPE` rows in id order.
    """

    namespace: str
    category: str
    partition: str
    records: NDArray[np.void]


@dataclass(slots=True)
class Restored:
    indexes: dict[IndexKey, VectorIndex]
    expired: list[int]
    next_id: int  # allocate ids from here: above LMDB and every snapshot
    report: OpenReport


class _Progress:
    """Logs a rebuild's progress every ``every_n`` entries or ``every_s`` seconds."""

    def __init__(self, key: IndexKey, total: int, every_n: int, every_s: float) -> None:
        self._key, self._total, self._every_n, self._every_s = key, total, every_n, every_s
        self._started = self._last_at = time.monotonic()
        self._last_n = 0

    def update(self, done: int) -> None:
        now = time.monotonic()
        if done - self._last_n >= self._every_n or now - self._last_at >= self._every_s:
            rate = done / max(now - self._started, 1e-9)
            log.info(
                "semantic cache: rebuilding index %s/%s: %d of %d entries (%.0f/s)",
                *self._key,
                done,
                self._total,
                rate,
            )
            self._last_n, self._last_at = done, now


async def restore(
    *,
    store: DocumentStore,
    tracker: SnapshotTracker,
    index_factory: Callable[[int], VectorIndex],
    dim: int,
    now: float,
    account: Callable[[EntryGroup], None],
    executor: Executor,
    batch_size: int = 4096,
    progress_every_n: int | None = None,
    progress_every_s: float | None = None,
) -> Restored:
    """Load snapshots, scan LMDB, reconcile; ``account`` sees every live entry once.

    Groups reach ``account`` in no particular order; within one, entries are in id order.

    Runs on the event loop; LMDB reads and index work go to ``executor`` one batch
    at a time, so the loop keeps answering ``/livez`` meanwhile.
    """
    job = _Restore(
        store=store,
        tracker=tracker,
        index_factory=index_factory,
        dim=dim,
        executor=executor,
        batch_size=batch_size,
    )
    started = time.perf_counter()
    await job.load_snapshots()
    live, expired = await job.scan(now, account)
    for key, ids in live.items():
        in_snapshot = job.snapshot_ids.pop(key, None)
        if in_snapshot is None:
            progress = _Progress(
                key,
                len(ids),
                PROGRESS_EVERY_N if progress_every_n is None else progress_every_n,
                PROGRESS_EVERY_S if progress_every_s is None else progress_every_s,
            )
            await job.rebuild(key, ids, progress)
        else:
            await job.reconcile(key, ids, in_snapshot)
    for key, stale in job.snapshot_ids.items():
        # Every entry of this index is gone since the snapshot: keep it, emptied.
        await job.reconcile(key, np.empty(0, dtype=np.uint64), stale)
    report = OpenReport(
        seconds=time.perf_counter() - started,
        entries=sum(len(ids) for ids in live.values()),
        expired=len(expired),
        indexes_loaded=len(job.indexes) - job.rebuilt,
        indexes_rebuilt=job.rebuilt,
        entries_from_snapshot=job.from_snapshot,
        entries_added=job.added,
        entries_removed=job.removed,
    )
    return Restored(job.indexes, expired, job.next_id, report)


class _Restore:
    """The state of one :func:`restore`; each step runs its blocking work on the executor."""

    def __init__(
        self,
        *,
        store: DocumentStore,
        tracker: SnapshotTracker,
        index_factory: Callable[[int], VectorIndex],
        dim: int,
        executor: Executor,
        batch_size: int,
    ) -> None:
        self.store, self.tracker, self.dim = store, tracker, dim
        self.index_factory, self.executor, self.batch_size = index_factory, executor, batch_size
        self.indexes: dict[IndexKey, VectorIndex] = {}
        self.snapshot_ids: dict[IndexKey, NDArray[np.uint64]] = {}  # sorted; until reconciled
        self.next_id = 1
        self.rebuilt = self.added = self.removed = self.from_snapshot = 0

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        return await run_blocking(self.executor, fn, *args)

    async def load_snapshots(self) -> None:
        self.next_id = await self.run(self.store.max_id) + 1
        directory = self.tracker.directory
        if directory is None:
            return
        catalog = await self.run(directory.read_catalog)
        self.next_id = max(self.next_id, catalog.next_id)
        if removed := await self.run(directory.remove_unlisted, catalog):
            log.info("semantic cache: removed %d unlisted snapshot files", removed)
        for key in catalog.files:
            started = time.perf_counter()
            try:
                index = await self.run(directory.load, key, self.dim)
            except SnapshotError as exc:
                log.warning("semantic cache: index %s/%s will be rebuilt: %s", *key, exc)
                continue
            ids = np.sort(await self.run(index.ids))
            if ids.size:  # ids in a snapshot must never be handed out again (see the catalog)
                self.next_id = max(self.next_id, int(ids[-1]) + 1)
            self.indexes[key], self.snapshot_ids[key] = index, ids
            log.info(
                "semantic cache: loaded index %s/%s from its snapshot (%d entries) in %.3f s",
                *key,
                len(ids),
                time.perf_counter() - started,
            )

    async def scan(
        self, now: float, account: Callable[[EntryGroup], None]
    ) -> tuple[dict[IndexKey, NDArray[np.uint64]], list[int]]:
        """One pass over the records: live ids per index (sorted), and expired ids."""
        records, groups = await self.run(_read_records, self.store)
        dead = records["expires_at"] <= now  # as CategoryPolicy.is_expired
        expired: list[int] = records["id"][dead].tolist()
        records = records[~dead]
        live: dict[IndexKey, list[NDArray[np.uint64]]] = {}
        codes, starts = np.unique(records["group"], return_index=True)
        if codes.size > 1:  # one stable sort puts each group's rows together, in id order
            order = np.argsort(records["group"], kind="stable")
            records = records[order]
            codes, starts = np.unique(records["group"], return_index=True)
        bounds = [*starts.tolist(), len(records)]
        for i, code in enumerate(codes.tolist()):
            rows = records[bounds[i] : bounds[i + 1]]
            try:
                namespace, category, partition = groups[code]
            except KeyError:  # written in one transaction with its record: a bug if absent
                raise RuntimeError(f"LMDB has entries of an unknown group {code:#x}") from None
            account(EntryGroup(namespace, category, partition, rows))
            live.setdefault((namespace, category), []).append(rows["id"])
        merged = {
            key: parts[0] if len(parts) == 1 else np.sort(np.concatenate(parts))
            for key, parts in live.items()
        }
        return merged, expired

    async def rebuild(self, key: IndexKey, ids: NDArray[np.uint64], progress: _Progress) -> None:
        index = self.indexes[key] = self.index_factory(self.dim)
        self.tracker.changed(key)
        self.rebuilt += 1
        log.info("semantic cache: rebuilding index %s/%s from LMDB (%d entries)", *key, len(ids))
        started = time.perf_counter()
        for start in range(0, len(ids), self.batch_size):
            chunk = ids[start : start + self.batch_size].tolist()
            self.added += await self.run(_add_batch, self.store, index, chunk)
            progress.update(start + len(chunk))
        log.info(
            "semantic cache: rebuilt index %s/%s: %d entries in %.2f s",
            *key,
            len(ids),
            time.perf_counter() - started,
        )

    async def reconcile(
        self, key: IndexKey, ids: NDArray[np.uint64], in_snapshot: NDArray[np.uint64]
    ) -> None:
        """Add what LMDB has and the snapshot lacks; remove what LMDB no longer has.

        Both id arrays are sorted and unique. O(n) in numpy.
        """
        index = self.indexes[key]
        missing = np.setdiff1d(ids, in_snapshot, assume_unique=True)
        stale = np.setdiff1d(in_snapshot, ids, assume_unique=True)
        self.from_snapshot += len(ids) - len(missing)
        for start in range(0, len(missing), self.batch_size):
            chunk = missing[start : start + self.batch_size].tolist()
            self.added += await self.run(_add_batch, self.store, index, chunk)
        if stale.size:
            self.removed += await self.run(index.remove, stale)
        changed = bool(missing.size or stale.size)
        self.tracker.loaded(key, current=not changed)
        if changed:
            log.info(
                "semantic cache: index %s/%s brought up to date: %d added, %d removed",
                *key,
                len(missing),
                len(stale),
            )


def _read_records(
    store: DocumentStore,
) -> tuple[NDArray[np.void], dict[int, tuple[str, str, str]]]:
    """Every entry's bookkeeping record and the groups they name; blocking (executor)."""
    if written := store.ensure_meta():
        log.info("semantic cache: wrote the bookkeeping records of %d entries", written)
    return store.scan_columns()


def _add_batch(store: DocumentStore, index: VectorIndex, ids: Sequence[int]) -> int:
    """Read one batch of vectors and add them; blocking (executor)."""
    vectors = store.vectors(ids)
    found = [(i, v) for i, v in zip(ids, vectors, strict=True) if v is not None]
    if not found:  # written with their documents; only a concurrent delete could part them
        return 0
    index.add(
        np.fromiter((i for i, _ in found), dtype=np.uint64, count=len(found)),
        np.stack([v for _, v in found]),
    )
    return len(found)
