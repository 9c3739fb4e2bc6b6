"""Where and when the semantic cache's HNSW indexes are snapshotted.

Layout of ``<data_dir>/snapshots/`` (only names starting ``sem-`` belong here):

- ``sem-<xxh3-128 of (namespace, category)>``: one index's snapshot, written by the
  index's own ``save`` (:mod:`semcached.index.snapshot`: atomic, checksummed);
- ``sem-catalog``: which index snapshot belongs to which (namespace, category), and
  ``next_id``, a bound above every entry id that any listed snapshot may hold.

What a snapshot contains is exactly its index's ``ids()`` at the time of the save (the
ids are saved under the same lock as the graph), so restoring it is a matter of set
differences with LMDB (:mod:`semcached.service.semantic.restore`); no LMDB position
needs to be recorded.

Entry ids must never be reused for a different vector while a snapshot that holds
them exists, or a restore would keep the old vector under the new entry. Ids are
random 63-bit numbers (``SemanticCache._new_id``), so that is a chance of about
n / 2**63 per insert for n such ids, not a guarantee. ``next_id`` is the bound that
data directories of sequential ids relied on (``max(LMDB's highest id, the catalog's
next_id, the highest id of every loaded snapshot)``); it is still computed and
written, and no longer used to allocate.

GIL: hnswlib's ``save_index`` holds the GIL for the whole write, so a background
snapshot stalls the event loop for that long: for one index of 100k 384-d vectors
(168 MB) a save took 0.6-1.1 s here, of which the loop was stalled 76-330 ms at
most (the checksum pass and fsyncs release the GIL). Also, the save holds the
index's shared lock: an insert into that index waits for it, and searches queued
behind that insert wait too (the lock prefers writers).

We accept that pause and bound it: snapshots run on the executor, only for indexes
that changed, one index per executor call, with a pause between indexes so queued
requests run in between; the stall is at most the largest single (namespace,
category) index's save. A fork-based save would avoid it, but forking a process
whose other threads may hold hnswlib's, LMDB's or the allocator's locks risks a
deadlocked child. Operators who cannot afford the pause set
``index.snapshot_interval_s = 0`` (snapshots at shutdown only; after a crash the
start then reconciles an older snapshot, adding more from LMDB).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path

import xxhash

from semcached.index.snapshot import SnapshotError, read_snapshot, write_snapshot
from semcached.index.vector_index import VectorIndex
from semcached.service.blocking import run_blocking

__all__ = [
    "PAUSE_BETWEEN_INDEXES_S",
    "Catalog",
    "IndexKey",
    "IndexLoader",
    "SnapshotDirectory",
    "SnapshotStats",
    "SnapshotTracker",
]

log = logging.getLogger(__name__)

IndexKey = tuple[str, str]  # (namespace, category)
IndexLoader = Callable[[Path, int], VectorIndex]  # (snapshot path, dim) -> index

PAUSE_BETWEEN_INDEXES_S = 0.05
"""Event-loop time given back between two index saves of one round (each save holds
the GIL for up to ~0.3 s per 100k 384-d vectors, measured here)."""

_PREFIX = "sem-"
_CATALOG = "sem-catalog"
_CATALOG_KIND = "semantic-catalog"
_MANIFEST = re.compile(r"sem-[0-9a-f]{32}")


@dataclass(frozen=True, slots=True)
class Catalog:
    """The index snapshots on disk and a bound above the ids they may hold."""

    files: Mapping[IndexKey, str]
    next_id: int = 1


def _file_name(key: IndexKey) -> str:
    hasher = xxhash.xxh3_128(b"semcached.snapshot.v1\x00")
    for part in key:
        data = part.encode("utf-8")
        hasher.update(len(data).to_bytes(8, "little"))
        hasher.update(data)
    return _PREFIX + hasher.hexdigest()


class SnapshotDirectory:
    """The files of the semantic cache's snapshots. Blocking: call from the executor.

    One saver at a time (the tracker serialises rounds); loads only at open.
    """

    def __init__(self, path: Path, loader: IndexLoader) -> None:
        self.path = path
        self._loader = loader

    def path_for(self, key: IndexKey) -> Path:
        return self.path / _file_name(key)

    def read_catalog(self) -> Catalog:
        """The catalog; an empty one (everything rebuilds) if missing or unreadable."""
        try:
            meta, _ = read_snapshot(self.path / _CATALOG, kind=_CATALOG_KIND)
        except SnapshotError as exc:
            if (self.path / _CATALOG).exists():
                log.warning("semantic cache: ignoring the snapshot catalog: %s", exc)
            return Catalog({})
        try:
            files = {
                (str(i["namespace"]), str(i["category"])): str(i["file"]) for i in meta["indexes"]
            }
            return Catalog(files, int(meta["next_id"]))
        except (KeyError, TypeError, ValueError) as exc:
            log.warning("semantic cache: ignoring a malformed snapshot catalog: %s", exc)
            return Catalog({})

    def write_catalog(self, keys: Iterable[IndexKey], next_id: int) -> None:
        """Atomically replace the catalog; list only keys whose snapshot is on disk."""
        indexes = [
            {"namespace": ns, "category": cat, "file": _file_name((ns, cat))} for ns, cat in keys
        ]
        write_snapshot(
            self.path / _CATALOG,
            kind=_CATALOG_KIND,
            meta={"indexes": indexes, "next_id": next_id},
            files={},
        )

    def remove_unlisted(self, catalog: Catalog) -> int:
        """Delete index snapshots the catalog does not name (a crash mid-round); O(files)."""
        if not self.path.is_dir():
            return 0
        keep = set(catalog.files.values())
        removed = 0
        for file in self.path.iterdir():
            manifest = file.name.split(".", 1)[0]
            if _MANIFEST.fullmatch(manifest) and manifest not in keep:
                with contextlib.suppress(FileNotFoundError):
                    file.unlink()
                    removed += 1
        return removed

    def load(self, key: IndexKey, dim: int) -> VectorIndex:
        """Load one index's snapshot; :class:`SnapshotError` if missing or unusable."""
        return self._loader(self.path_for(key), dim)

    def save(self, key: IndexKey, index: VectorIndex) -> None:
        index.save(self.path_for(key))


@dataclass(slots=True)
class SnapshotStats:
    """Counters of index snapshots since start (one per index saved)."""

    written: int = 0
    failed: int = 0
    seconds: float = 0.0  # total time spent saving
    last_round_seconds: float = 0.0
    last_success_at: float = 0.0  # unix time; 0 before the first


class SnapshotTracker:
    """Which indexes changed since their last snapshot, and the rounds that save them.

    The engine calls :meth:`changed` after each index mutation completes (so a save
    that began before the mutation leaves the index dirty) and :meth:`save_changed`
    from its background task and at close. Event-loop only.
    """

    def __init__(self, directory: SnapshotDirectory | None, executor: Executor) -> None:
        self.directory = directory
        self.stats = SnapshotStats()
        self._executor = executor
        self._version: dict[IndexKey, int] = {}
        self._saved: dict[IndexKey, int] = {}  # the version of each key's snapshot on disk
        self._catalog_stale = False
        self._round = asyncio.Lock()

    def changed(self, key: IndexKey) -> None:
        self._version[key] = self._version.get(key, 0) + 1

    def loaded(self, key: IndexKey, *, current: bool) -> None:
        """``key`` has a snapshot on disk; ``current``: its index is still as loaded."""
        version = self._version.setdefault(key, 0)
        self._saved[key] = version if current else -1

    @property
    def dirty(self) -> list[IndexKey]:
        return [k for k, v in self._version.items() if self._saved.get(k) != v]

    async def save_changed(
        self,
        indexes: Mapping[IndexKey, VectorIndex],
        next_id: Callable[[], int],
        *,
        pause_s: float = PAUSE_BETWEEN_INDEXES_S,
    ) -> int:
        """Snapshot every index that changed, then the catalog. Returns indexes saved.

        A failed save is logged and counted; the index's previous snapshot (if any)
        stays valid, to be reconciled at the next start, and the next round retries.
        O(size of the changed indexes).
        """
        if self.directory is None:
            return 0
        directory = self.directory
        async with self._round:
            dirty = [k for k in self.dirty if k in indexes]
            if not dirty and not self._catalog_stale:
                return 0
            started = time.perf_counter()
            saved = 0
            for n, key in enumerate(dirty):
                if n:
                    await asyncio.sleep(pause_s)  # each save holds the GIL: let requests run
                version = self._version[key]  # mutations completing after this re-dirty it
                t0 = time.perf_counter()
                try:
                    await run_blocking(self._executor, directory.save, key, indexes[key])
                except Exception:
                    self.stats.failed += 1
                    log.exception("semantic cache: snapshot of index %s/%s failed", *key)
                    continue
                finally:
                    self.stats.seconds += time.perf_counter() - t0
                self._saved[key] = version
                self.stats.written += 1
                self._catalog_stale = True
                saved += 1
            if self._catalog_stale:
                # After the saves: every id they hold was allocated below next_id().
                listed = [k for k in self._saved if k in indexes]
                try:
                    await run_blocking(self._executor, directory.write_catalog, listed, next_id())
                except Exception:
                    # Index snapshots keep their names, so the old catalog still lists
                    # the ones it had; new indexes stay unlisted until the next round.
                    self.stats.failed += 1
                    log.exception("semantic cache: writing the snapshot catalog failed")
                else:
                    self._catalog_stale = False
                    self.stats.last_success_at = time.time()
            self.stats.last_round_seconds = time.perf_counter() - started
            log.info(
                "semantic cache: snapshotted %d of %d changed indexes in %.3f s",
                saved,
                len(dirty),
                self.stats.last_round_seconds,
            )
            return saved
