"""An HNSW vector index on hnswlib: cosine similarity, 64-bit labels, growth, slot reuse.

(About 450 lines, over the house's 400: one wrapper around hnswlib's index.)

Vectors are L2-normalised here (validating them) and stored in hnswlib's ``cosine``
space; hnswlib's labels are ``size_t``, so the semantic cache's 64-bit entry ids are
the labels. Removal marks the element deleted; the next additions reuse deleted slots
(``allow_replace_deleted``), so a churning cache does not grow. The index doubles its
capacity with ``resize_index`` before an add that would not fit, up to
``max_capacity`` (then :class:`IndexFullError`).

Thread-safety, from hnswlib 0.8.0's source, its issue tracker and measurement here:

- ``knn_query`` takes no locks inside hnswlib (for speed, by design) and releases the
  GIL; concurrent searches are safe, but a search concurrent with ``add_items``,
  ``mark_deleted``, ``resize_index`` or ``set_ef`` is not (the maintainer, issues #29,
  #562, #590): it may read half-written link lists.
- ``add_items`` calls are safe with each other (per-label and per-node locks, stress
  tested upstream since 0.7) and release the GIL; ``mark_deleted`` locks its label.
  But replacing a deleted slot "assumes no concurrent operations on the deleted
  element", and with ``allow_replace_deleted`` an add of a label that is marked
  deleted raises, so our bookkeeping of which labels are live must change atomically
  with the calls. Mutations are therefore serialised here; one batch still uses
  ``num_threads`` hnswlib threads.
- ``resize_index`` reallocates everything and ``save_index`` / ``load_index`` hold
  the GIL for the whole write/read (280 ms / 370 ms for 200k 128-d vectors, about
  130 MB, measured here), so snapshots of large indexes stall other Python threads.

Hence one :class:`SharedExclusiveLock`: searches, ``ids()`` and ``save`` share it;
add, remove, resize and ``set_ef_search`` take it exclusively.

Two hnswlib traps this wrapper steps around:

- ``add_items(replace_deleted=True)`` does not check whether the label already has a
  slot: re-adding a deleted label that way leaves a second slot carrying the label,
  and reusing that stale slot later erases the live label's lookup entry (seen
  here). A previously deleted label is therefore revived with ``unmark_deleted`` and
  updated in place; only labels hnswlib does not hold take the replacing path.
- ``knn_query`` raises when a row finds fewer than ``k`` live neighbours (possible when
  deletions leave parts of the graph reachable only through deleted nodes); such
  rows are answered again with a smaller ``k``.

A property of HNSW itself, not fixed here: among many exact duplicate vectors, the
neighbour-selection heuristic keeps one of a set of equally distant candidates, so a
vector whose every in-edge loses to a duplicate becomes unreachable (found by the
property tests: 17 identical vectors and one opposite one, M=8). Generic data is not
affected; a cache that stores one prompt in many partitions of one index could be.

Memory: hnswlib's ``(4*dim + 8*M + 12)`` bytes per slot plus the live ids here (a
:class:`~semcached.index.live_ids.LiveIds`: about 8 bytes per entry), which answer
``len``, ``in`` and ``ids()`` without hnswlib.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Self

import hnswlib
import numpy as np
from numpy.typing import ArrayLike, NDArray

from semcached.index.live_ids import LiveIds
from semcached.index.rwlock import SharedExclusiveLock
from semcached.index.snapshot import SnapshotError, open_snapshot, write_snapshot
from semcached.index.vector_index import (
    IdArray,
    IndexFullError,
    SearchResult,
    VectorArray,
    as_ids,
    dedupe_last,
    normalise,
)

__all__ = ["SNAPSHOT_KIND", "HnswlibIndex"]

SNAPSHOT_KIND = "hnswlib-cosine"  # the manifest kind of an index snapshot


def _empty_result() -> SearchResult:
    return np.empty(0, dtype=np.uint64), np.empty(0, dtype=np.float32)


class HnswlibIndex:
    """An HNSW index of unit vectors under 64-bit ids (implements ``VectorIndex``).

    Search is O(ef * M * log n) expected; add is O(ef_construction * M * log n) per
    vector; remove is O(1) per id; growth is O(n) and doubles the capacity, so adds
    are amortised. Safe to call from any number of threads (see the module notes).
    """

    def __init__(
        self,
        dim: int,
        *,
        m: int,
        ef_construction: int,
        ef_search: int,
        initial_capacity: int = 1024,
        max_capacity: int | None = None,
        num_threads: int = 1,
        random_seed: int = 100,
    ) -> None:
        if dim < 1:
            raise ValueError("dim must be at least 1")
        if m < 2 or ef_construction < 1 or ef_search < 1:
            raise ValueError("m must be at least 2 and ef_construction, ef_search at least 1")
        if initial_capacity < 1:
            raise ValueError("initial_capacity must be at least 1")
        if max_capacity is not None and max_capacity < initial_capacity:
            raise ValueError("max_capacity is below initial_capacity")
        index = hnswlib.Index(space="cosine", dim=dim)
        index.init_index(
            max_elements=initial_capacity,
            M=m,
            ef_construction=ef_construction,
            random_seed=random_seed,
            allow_replace_deleted=True,
        )
        self._setup(
            index,
            dim=dim,
            m=m,
            ef_construction=ef_construction,
            ef_search=ef_search,
            max_capacity=max_capacity,
            num_threads=num_threads,
        )
        self._live = LiveIds()
        self._max_label = -1  # every label hnswlib holds (live or deleted) is <= this

    def _setup(
        self,
        index: Any,
        *,
        dim: int,
        m: int,
        ef_construction: int,
        ef_search: int,
        max_capacity: int | None,
        num_threads: int,
    ) -> None:
        if num_threads < 1:
            raise ValueError("num_threads must be at least 1")
        self._index = index
        self._dim = dim
        self._m = m
        self._ef_construction = ef_construction
        self._ef_search = ef_search
        self._max_capacity = max_capacity
        self._num_threads = num_threads
        self._lock = SharedExclusiveLock()
        self._save_lock = threading.Lock()
        index.set_ef(ef_search)
        index.set_num_threads(num_threads)

    # -- properties -----------------------------------------------------------------

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def m(self) -> int:
        return self._m

    @property
    def ef_construction(self) -> int:
        return self._ef_construction

    @property
    def ef_search(self) -> int:
        return self._ef_search

    @property
    def capacity(self) -> int:
        """Slots allocated now (live + deleted-awaiting-reuse + free)."""
        return int(self._index.get_max_elements())

    @property
    def max_capacity(self) -> int | None:
        return self._max_capacity

    def set_ef_search(self, ef: int) -> None:
        """Change the search candidate list size (recall vs latency)."""
        if ef < 1:
            raise ValueError("ef must be at least 1")
        with self._lock.exclusive():
            self._index.set_ef(ef)
            self._ef_search = ef

    def __len__(self) -> int:
        return len(self._live)

    def __contains__(self, entry_id: object) -> bool:
        return isinstance(entry_id, int | np.integer) and int(entry_id) in self._live

    def ids(self) -> IdArray:
        with self._lock.shared():
            return self._live.to_array()

    # -- mutation -------------------------------------------------------------------

    def add(self, ids: ArrayLike, vectors: ArrayLike) -> None:
        labels = as_ids(ids)
        unit = normalise(vectors, self._dim)
        if unit.shape[0] != labels.size:
            raise ValueError(f"{labels.size} ids for {unit.shape[0]} vectors")
        if labels.size == 0:
            return
        labels, unit = dedupe_last(labels, unit)
        with self._lock.exclusive():
            self._add_locked(labels, unit)

    def _add_locked(self, labels: IdArray, unit: VectorArray) -> None:
        index = self._index
        live = self._live
        as_int = labels.tolist()
        update = live.contains_many(labels)
        revived: list[int] = []
        for row, label in enumerate(as_int):
            # A label at or below the highest ever added may still sit in a deleted
            # slot; revive that slot rather than let hnswlib duplicate the label.
            if not update[row] and label <= self._max_label:
                try:
                    index.unmark_deleted(label)
                except RuntimeError:  # "Label not found": its slot was reused
                    continue
                update[row] = True
                revived.append(label)
        fresh = ~update
        try:
            self._reserve(int(fresh.sum()), revived=len(revived))
        except BaseException:
            for label in revived:
                index.mark_deleted(label)
            raise
        if fresh.any():
            index.add_items(
                unit[fresh], labels[fresh], num_threads=self._num_threads, replace_deleted=True
            )
        if update.any():
            index.add_items(unit[update], labels[update], num_threads=self._num_threads)
        live.add_many(as_int)
        self._max_label = max(self._max_label, int(labels.max()))

    def _reserve(self, fresh: int, *, revived: int) -> None:
        """Grow, if needed, so that ``fresh`` new labels fit. Caller holds the lock."""
        slots = int(self._index.get_current_count())
        vacant = slots - len(self._live) - revived  # deleted slots awaiting reuse
        needed = slots + max(0, fresh - vacant)
        capacity = self.capacity
        if needed <= capacity:
            return
        limit = self._max_capacity
        if limit is not None and needed > limit:
            raise IndexFullError(
                f"index needs {needed} slots but max_capacity is {limit} "
                f"({len(self._live)} live entries)"
            )
        new = capacity
        while new < needed:
            new *= 2
        if limit is not None:
            new = min(new, limit)
        self._index.resize_index(new)

    def remove(self, ids: ArrayLike) -> int:
        labels = as_ids(ids)
        removed = 0
        with self._lock.exclusive():
            for label in set(labels.tolist()):
                if label in self._live:
                    self._index.mark_deleted(label)
                    self._live.discard(label)
                    removed += 1
        return removed

    # -- search ---------------------------------------------------------------------

    def search(self, queries: ArrayLike, k: int) -> list[SearchResult]:
        unit = self._checked_queries(queries, k)
        with self._lock.shared():
            return self._search_locked(unit, k)

    def search_nowait(self, queries: ArrayLike, k: int) -> list[SearchResult] | None:
        unit = self._checked_queries(queries, k)
        with self._lock.shared_nowait() as acquired:
            return self._search_locked(unit, k) if acquired else None

    def _checked_queries(self, queries: ArrayLike, k: int) -> VectorArray:
        if k < 1:
            raise ValueError("k must be at least 1")
        return _queries(queries, self._dim)

    def _search_locked(self, unit: VectorArray, k: int) -> list[SearchResult]:
        live = len(self._live)
        if live == 0 or unit.shape[0] == 0:
            return [_empty_result() for _ in range(unit.shape[0])]
        k = min(k, live)
        try:
            # One thread: hnswlib starts fresh OS threads on every call with more
            # than 4 rows per thread, which costs more than it saves on a busy
            # machine; callers search several batches at once instead.
            labels, distances = self._index.knn_query(unit, k=k, num_threads=1)
        except RuntimeError:
            return [self._search_row(row, k) for row in unit]
        similarities = _similarity(distances)
        return [(labels[i], similarities[i]) for i in range(unit.shape[0])]

    def _search_row(self, row: VectorArray, k: int) -> SearchResult:
        """One query, lowering ``k`` until hnswlib can fill it. Caller holds the lock."""
        for k_try in range(k, 0, -1):
            try:
                labels, distances = self._index.knn_query(row[None, :], k=k_try, num_threads=1)
            except RuntimeError:
                continue
            return labels[0], _similarity(distances[0])
        return _empty_result()

    # -- snapshots ------------------------------------------------------------------

    def save(self, path: Path) -> None:
        """Snapshot atomically; searches continue meanwhile, mutations wait. O(n)."""
        with self._save_lock, self._lock.shared():
            live = self._live.to_array().astype("<u8", copy=False)  # sorted: a fast load
            meta = {
                "dim": self._dim,
                "m": self._m,
                "ef_construction": self._ef_construction,
                "ef_search": self._ef_search,
                "capacity": self.capacity,
                "slots": int(self._index.get_current_count()),
                "count": int(live.size),
                "max_label": self._max_label,
            }
            write_snapshot(
                path,
                kind=SNAPSHOT_KIND,
                meta=meta,
                files={
                    "hnsw": lambda target: self._index.save_index(str(target)),
                    "ids": live.tofile,
                },
            )

    @classmethod
    def load(
        cls,
        path: Path,
        *,
        dim: int,
        ef_search: int | None = None,
        max_capacity: int | None = None,
        num_threads: int = 1,
    ) -> Self:
        """Load the snapshot at ``path``, verifying it; ``ef_search`` overrides the saved one.

        Raises :class:`SnapshotError` when it is missing, corrupt, of another ``dim``,
        or larger than ``max_capacity``. O(n).
        """
        # The graph file's checksum is computed while hnswlib parses it (in parallel:
        # xxh3 releases the GIL), and checked before the index is returned.
        meta, parts, pending = open_snapshot(path, kind=SNAPSHOT_KIND, background=("hnsw",))
        try:
            loaded = cls._load_checked(
                path,
                meta,
                parts,
                dim=dim,
                ef_search=ef_search,
                max_capacity=max_capacity,
                num_threads=num_threads,
            )
        except BaseException:
            pending.wait()  # a corrupt file explains the failure best: its error first
            raise
        pending.wait()
        return loaded

    @classmethod
    def _load_checked(
        cls,
        path: Path,
        meta: dict[str, Any],
        parts: dict[str, Path],
        *,
        dim: int,
        ef_search: int | None,
        max_capacity: int | None,
        num_threads: int,
    ) -> Self:
        try:
            saved_dim, m, ef_c = int(meta["dim"]), int(meta["m"]), int(meta["ef_construction"])
            capacity, slots, count = int(meta["capacity"]), int(meta["slots"]), int(meta["count"])
            saved_ef = int(meta["ef_search"])
            max_label = int(meta.get("max_label", -2))  # -2: written before it was recorded
        except (KeyError, TypeError, ValueError) as exc:
            raise SnapshotError(f"snapshot {path} has malformed metadata: {exc}") from exc
        if saved_dim != dim:
            raise SnapshotError(f"snapshot {path} holds vectors of dim {saved_dim}, not {dim}")
        if max_capacity is not None and capacity > max_capacity:
            raise SnapshotError(
                f"snapshot {path} has capacity {capacity}, over max_capacity {max_capacity}"
            )
        index = hnswlib.Index(space="cosine", dim=dim)
        try:
            index.load_index(str(parts["hnsw"]), max_elements=capacity, allow_replace_deleted=True)
        except (RuntimeError, ValueError, MemoryError) as exc:
            raise SnapshotError(f"hnswlib cannot load snapshot {path}: {exc}") from exc
        if int(index.get_current_count()) != slots or int(index.M) != m:
            raise SnapshotError(f"snapshot {path} does not match its metadata")
        live = np.fromfile(parts["ids"], dtype="<u8")
        if live.size != count:
            raise SnapshotError(f"snapshot {path} lists {live.size} ids, expected {count}")
        loaded = cls.__new__(cls)
        loaded._setup(
            index,
            dim=dim,
            m=m,
            ef_construction=ef_c,
            ef_search=ef_search or saved_ef,
            max_capacity=max_capacity,
            num_threads=num_threads,
        )
        loaded._live = LiveIds(live)
        if max_label == -2:  # ask hnswlib (a list of every label, deleted ones included)
            labels = index.get_ids_list() if slots else []
            max_label = int(max(labels)) if labels else -1
        loaded._max_label = max_label
        return loaded


_TINY = np.finfo(np.float32).tiny  # the smallest normal float32


def _queries(queries: ArrayLike, dim: int) -> VectorArray:
    """Query rows hnswlib can take as they are (its cosine space normalises them).

    Only rows whose float32 squared norm is finite and normal pass unchanged; the
    rest go through :func:`normalise`, which rescales extreme but valid rows in
    float64 and names the row that is zero, NaN or infinite. O(n * dim).
    """
    array = np.asarray(queries, dtype=np.float32)
    if array.ndim == 2 and array.shape[1] == dim:
        squares = np.einsum("ij,ij->i", array, array)
        if np.isfinite(squares).all() and (squares >= _TINY).all():
            return array
    return normalise(queries, dim, what="query")


def _similarity(distances: Any) -> NDArray[np.float32]:
    """hnswlib's cosine distance is ``1 - cos``; clamp rounding just outside [-1, 1]."""
    similarity: NDArray[np.float32] = np.clip(
        np.float32(1.0) - np.asarray(distances, dtype=np.float32), -1.0, 1.0
    )
    return similarity
