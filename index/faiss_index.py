"""An exact vector index on faiss: inner product of unit vectors, 64-bit ids, tombstones.

(About 530 lines, over the house's 400: one wrapper around faiss's flat index with its
CPU and GPU variants, whose bookkeeping is shared and must not drift apart.)

Vectors are L2-normalised here, so faiss's inner product *is* the cosine. The faiss
index is a flat (exact, brute-force) one: ``IndexFlatIP`` on the CPU, ``GpuIndexFlatIP``
on a CUDA device. Its rows are numbered 0..ntotal-1 and this wrapper keeps the id map
itself, on the host, rather than in faiss's ``IndexIDMap2``:

- faiss ids are ``int64`` while ours are ``uint64`` (random 63-bit ids today, but the
  protocol allows all 64 bits), so every id would have to travel as a bit pattern;
- ``IndexIDMap2.remove_ids`` is O(n) per call (it compacts the storage), and re-adding
  a live id would store a second row for it; deletes and re-adds must be batched
  anyway, and the same bookkeeping then serves the GPU index, which cannot remove.

So: ``_labels[row]`` is the id of each row, ``_row`` maps a live id to its row, and a
bitmap ``_alive`` marks live rows. A remove (or the re-add of a live id) only clears
the row's bit: a *tombstone*. Searches skip tombstoned rows:

- on the CPU with faiss's ``IDSelectorBitmap`` over ``_alive`` (the scan skips them,
  no over-fetch; a search is as fast with a selector as without, measured here);
- on a GPU, which takes no selector, by asking faiss for ``k + tombstones`` rows and
  dropping the dead ones, so the number of tombstones is kept at most
  ``overfetch_dead`` (1024: GPU flat search returns at most 2048 rows).

When tombstones exceed ``compact_fraction`` of the rows (CPU) or ``overfetch_dead``
(GPU), the index is compacted under the exclusive lock: faiss's ``remove_ids`` with a
bitmap selector (one O(n * dim) pass over the storage), and the id map is rebuilt.
On a GPU the compaction goes through a host copy (``index_gpu_to_cpu``, remove, and
the rows added back), O(n * dim) over PCIe. Memory is therefore bounded: at most
``1 + compact_fraction`` rows per live entry on the CPU, live + 1024 on a GPU, plus
about 100 bytes per live entry for the id map.

Thread-safety: faiss's CPU search is const and safe concurrently with other searches,
but not with ``add`` or ``remove_ids``. Hence one :class:`SharedExclusiveLock`, as in
:mod:`semcached.index.hnsw`: searches, ``ids()`` and ``save`` share it; add, remove and
compaction take it exclusively. faiss releases the GIL in search and add. A GPU
index's ``StandardGpuResources`` is not safe for use from several threads at once,
so GPU searches are serialised by a mutex besides (the daemon sends them one batch
at a time: the search micro-batcher gathers concurrent lookups meanwhile).

faiss parallelises one search call with OpenMP (and its OpenBLAS, an OpenMP build,
for batches of 20+ queries). The daemon already searches from a pool of one thread
per core and runs several batches at once, so each call uses ``omp_threads`` threads,
1 by default, rather than a team per core from every pool thread: on this 2-core
machine a 3-query search of 30 vectors took 1.7 ms with faiss's default of 2 OpenMP
threads and 0.07 ms with 1. OpenMP's thread count is a per-thread setting
(``omp_set_num_threads`` in one thread does not reach the pool's threads, checked
here), so it is set on the calling thread at each call.

Batches: faiss 1.15's CPU flat search takes its BLAS path only when the batch holds
``distance_compute_blas_threshold`` query *floats* (128000 by default: 333 queries of
384-d; measured here, the cut moves with ``nq * dim``), so smaller batches cost as much
as their queries one by one. Each CPU index sets that process-wide value to
``4 * dim``: from 4 queries a batch goes through BLAS (16 queries: 2.5x the
throughput, 100k x 384 on one thread) and a single query keeps the faster scan (with
the threshold at 20 it ran at under half its speed). A search with an ``IDSelector``
(while any tombstone waits for compaction) never takes the BLAS path. An IVF index (approximate,
for millions of entries) is not built: flat search is what the GPU is fast at, and on
the CPU hnswlib serves.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Self

import numpy as np
from numpy.typing import ArrayLike, NDArray

from semcached.errors import ConfigError
from semcached.index.rwlock import SharedExclusiveLock
from semcached.index.snapshot import SnapshotError, read_snapshot, write_snapshot
from semcached.index.vector_index import (
    IdArray,
    IndexFullError,
    SearchResult,
    as_ids,
    dedupe_last,
    normalise,
)

__all__ = [
    "GPU_MAX_DEAD",
    "SNAPSHOT_KIND",
    "FaissIndex",
    "FaissUnavailableError",
    "GpuUnavailableError",
    "gpu_count",
    "import_faiss",
]

SNAPSHOT_KIND = "faiss-ip"  # the manifest kind; CPU and GPU indexes write the same snapshot
GPU_MAX_DEAD = 1024
"""Most tombstones a GPU index keeps: a search fetches ``k + tombstones`` rows, and
faiss's GPU k-selection returns at most 2048."""


class FaissUnavailableError(ConfigError):
    """faiss is not installed (the ``faiss`` or ``faiss-gpu`` extra): fix the install."""


class GpuUnavailableError(ConfigError):
    """A GPU index was asked for, but faiss has no GPU support or sees no such device."""


_BLAS_FROM_QUERIES = 4  # batches this large search through BLAS (see the module docstring)


def import_faiss() -> Any:
    """The faiss module, or :class:`FaissUnavailableError` naming the extra to install."""
    try:
        import faiss
    except ImportError as exc:
        raise FaissUnavailableError(
            "the faiss index backend needs faiss: install the `faiss` extra "
            "(pip install 'semcached[faiss]') or, on a CUDA machine, `faiss-gpu` "
            f"({exc})"
        ) from exc
    return faiss


def gpu_count() -> int:
    """CUDA devices faiss can use: 0 without faiss, without its GPU build, or without one."""
    try:
        faiss = import_faiss()
    except FaissUnavailableError:
        return 0
    if not hasattr(faiss, "StandardGpuResources"):
        return 0
    return int(faiss.get_num_gpus())


def _empty_result() -> SearchResult:
    return np.empty(0, dtype=np.uint64), np.empty(0, dtype=np.float32)


class FaissIndex:
    """An exact inner-product index of unit vectors under 64-bit ids (``VectorIndex``).

    Search is O(m * n * dim) (brute force; on a GPU, in parallel); add is O(dim) per
    vector amortised; remove is O(1) per id plus an O(n * dim) compaction amortised
    over at least ``compact_fraction * n`` removals (CPU) or 1024 (GPU). Safe to call
    from any number of threads (see the module notes).

    ``gpu``: False for the CPU, True for device 0, or a device number; raises
    :class:`GpuUnavailableError` when faiss has no GPU support or no such device
    (never a silent fall back to the CPU). ``max_capacity``: most live entries
    (:class:`IndexFullError` beyond). ``omp_threads``: OpenMP threads per call (None:
    faiss's default, one per core; the module notes say why 1 is the default).
    ``overfetch_dead``: filter tombstones by over-fetching and compact beyond this
    many (the GPU's way, 1024 there; on the CPU None uses a selector and
    ``compact_fraction``); ``compact_min``: no compaction below this many tombstones.
    """

    def __init__(
        self,
        dim: int,
        *,
        gpu: bool | int = False,
        max_capacity: int | None = None,
        omp_threads: int | None = 1,
        compact_fraction: float = 0.25,
        compact_min: int = 64,
        overfetch_dead: int | None = None,
    ) -> None:
        if dim < 1:
            raise ValueError("dim must be at least 1")
        if max_capacity is not None and max_capacity < 1:
            raise ValueError("max_capacity must be at least 1")
        if omp_threads is not None and omp_threads < 1:
            raise ValueError("omp_threads must be at least 1")
        if not 0 < compact_fraction <= 1 or compact_min < 1:
            raise ValueError("compact_fraction must be in (0, 1] and compact_min at least 1")
        faiss = import_faiss()
        self._faiss = faiss
        self._dim = dim
        self._max_capacity = max_capacity
        self._omp_threads = omp_threads
        self._compact_fraction = compact_fraction
        self._compact_min = compact_min
        self._device: int | None = None
        self._resources: Any = None
        if gpu is not False:
            self._device = 0 if gpu is True else int(gpu)
            self._resources = _gpu_resources(faiss, self._device)
            if overfetch_dead is None:
                overfetch_dead = GPU_MAX_DEAD
        if overfetch_dead is not None and not 1 <= overfetch_dead <= GPU_MAX_DEAD:
            raise ValueError(f"overfetch_dead must be in [1, {GPU_MAX_DEAD}]")
        self._overfetch_dead = overfetch_dead
        if self._device is None:  # process-wide; indexes of one daemon share a dim
            faiss.cvar.distance_compute_blas_threshold = _BLAS_FROM_QUERIES * dim
        self._index: Any = self._new_faiss_index()
        self._labels: IdArray = np.zeros(64, dtype=np.uint64)  # row -> id, dead rows too
        self._alive: NDArray[np.uint8] = np.zeros(8, dtype=np.uint8)  # bit per row, LSB first
        self._row: dict[int, int] = {}  # live id -> row
        self._lock = SharedExclusiveLock()
        self._gpu_lock = threading.Lock()  # StandardGpuResources: one thread at a time
        self._save_lock = threading.Lock()

    def _new_faiss_index(self) -> Any:
        faiss = self._faiss
        if self._device is None:
            return faiss.IndexFlatIP(self._dim)
        config = faiss.GpuIndexFlatConfig()
        config.device = self._device
        return faiss.GpuIndexFlatIP(self._resources, self._dim, config)

    # -- properties -----------------------------------------------------------------

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def device(self) -> int | None:
        """The CUDA device the index lives on; None on the CPU."""
        return self._device

    @property
    def rows(self) -> int:
        """Rows faiss holds: live entries plus tombstones awaiting compaction."""
        return int(self._index.ntotal)

    @property
    def tombstones(self) -> int:
        return self.rows - len(self._row)

    def __len__(self) -> int:
        return len(self._row)

    def __contains__(self, entry_id: object) -> bool:
        return isinstance(entry_id, int | np.integer) and int(entry_id) in self._row

    def ids(self) -> IdArray:
        with self._lock.shared():
            return np.fromiter(self._row, dtype=np.uint64, count=len(self._row))

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
            as_int = labels.tolist()
            replaced = [self._row[label] for label in as_int if label in self._row]
            live_after = len(self._row) + len(as_int) - len(replaced)
            if self._max_capacity is not None and live_after > self._max_capacity:
                raise IndexFullError(
                    f"index would hold {live_after} entries but max_capacity is "
                    f"{self._max_capacity} ({len(self._row)} live entries)"
                )
            start = self.rows
            self._reserve(start + len(as_int))
            self._call(self._index.add, unit)  # first: a failure here changes nothing
            for row in replaced:  # the old rows of re-added ids become tombstones
                self._clear(row)
            end = start + len(as_int)
            self._labels[start:end] = labels
            for offset, label in enumerate(as_int):
                self._row[label] = start + offset
            self._set_range(start, end)
            self._maybe_compact()

    def remove(self, ids: ArrayLike) -> int:
        labels = as_ids(ids)
        removed = 0
        with self._lock.exclusive():
            for label in set(labels.tolist()):
                row = self._row.pop(label, None)
                if row is not None:
                    self._clear(row)
                    removed += 1
            if removed:
                self._maybe_compact()
        return removed

    def _reserve(self, rows: int) -> None:
        """Grow the host-side arrays (doubling) to hold ``rows`` rows. Exclusive lock."""
        size = self._labels.size
        if rows <= size:
            return
        while size < rows:
            size *= 2
        labels = np.zeros(size, dtype=np.uint64)
        labels[: self._labels.size] = self._labels
        alive = np.zeros((size + 7) // 8, dtype=np.uint8)
        alive[: self._alive.size] = self._alive
        self._labels, self._alive = labels, alive

    def _clear(self, row: int) -> None:
        self._alive[row >> 3] &= np.uint8(~(1 << (row & 7)) & 0xFF)

    def _set_range(self, start: int, end: int) -> None:
        """Mark rows [start, end) live. O(end - start)."""
        rows = np.arange(start, end)
        np.bitwise_or.at(self._alive, rows >> 3, (1 << (rows & 7)).astype(np.uint8))

    def _alive_rows(self) -> NDArray[np.bool_]:
        n = self.rows
        return np.unpackbits(self._alive, count=n, bitorder="little").astype(bool)

    def _maybe_compact(self) -> None:
        """Compact (or reset) when the tombstones pass the bound. Exclusive lock."""
        dead = self.tombstones
        if dead == 0:
            return
        keep = self._alive_rows()  # before faiss renumbers its rows
        if not self._row:  # all dead: start over (O(1) for faiss)
            self._call(self._index.reset)
        elif self._overfetch_dead is not None:
            if dead <= self._overfetch_dead:
                return
            self._compact(keep)
        elif dead >= self._compact_min and dead > self._compact_fraction * self.rows:
            self._compact(keep)
        else:
            return
        if self.rows != len(self._row):
            raise RuntimeError(f"faiss kept {self.rows} rows for {len(self._row)} live entries")
        self._relabel(keep)

    def _compact(self, keep: NDArray[np.bool_]) -> None:
        """Drop the rows not in ``keep`` from faiss's storage. O(n * dim); exclusive lock."""
        faiss = self._faiss
        dead_bits = np.packbits(~keep, bitorder="little")
        selector = faiss.IDSelectorBitmap(keep.size, faiss.swig_ptr(dead_bits))
        if self._device is None:
            self._call(self._index.remove_ids, selector)
            return
        # GPU flat indexes cannot remove: go through a host copy and add the rest back.
        host = self._call(faiss.index_gpu_to_cpu, self._index)
        host.remove_ids(selector)
        kept = faiss.rev_swig_ptr(host.get_xb(), host.ntotal * self._dim)
        self._call(self._index.reset)
        if host.ntotal:
            self._call(self._index.add, kept.reshape(host.ntotal, self._dim))

    def _relabel(self, keep: NDArray[np.bool_]) -> None:
        """Renumber the id map after a compaction kept the rows ``keep``, in order. O(n)."""
        labels = self._labels[: keep.size][keep]
        self._labels = np.zeros(self._labels.size, dtype=np.uint64)
        self._labels[: labels.size] = labels
        self._alive = np.zeros((self._labels.size + 7) // 8, dtype=np.uint8)
        self._set_range(0, labels.size)
        self._row = dict(zip(labels.tolist(), range(labels.size), strict=True))

    def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Call into faiss with this index's OpenMP threads on this thread (and the GPU lock)."""
        if self._omp_threads is not None:
            self._faiss.omp_set_num_threads(self._omp_threads)
        if self._device is None:
            return fn(*args, **kwargs)
        with self._gpu_lock:
            return fn(*args, **kwargs)

    # -- search ---------------------------------------------------------------------

    def search(self, queries: ArrayLike, k: int) -> list[SearchResult]:
        if k < 1:
            raise ValueError("k must be at least 1")
        if self._overfetch_dead is not None and k > 2048 - self._overfetch_dead:
            raise ValueError(f"k must be at most {2048 - self._overfetch_dead} on a GPU index")
        unit = normalise(queries, self._dim, what="query")
        if unit.shape[0] == 0:
            return []
        with self._lock.shared():
            live = len(self._row)
            if live == 0:
                return [_empty_result() for _ in range(unit.shape[0])]
            k = min(k, live)
            dead = self.tombstones
            if dead == 0:
                similarities, rows = self._call(self._index.search, unit, k)
            elif self._overfetch_dead is None:
                faiss = self._faiss
                selector = faiss.IDSelectorBitmap(self.rows, faiss.swig_ptr(self._alive))
                params = faiss.SearchParameters(sel=selector)
                similarities, rows = self._call(self._index.search, unit, k, params=params)
            else:
                fetch = min(k + dead, self.rows)
                similarities, rows = self._call(self._index.search, unit, fetch)
                similarities, rows = self._drop_dead(similarities, rows, k)
            labels = self._labels[np.maximum(rows, 0)]  # inside the lock: rows may move
        similarities = np.clip(similarities, -1.0, 1.0).astype(np.float32, copy=False)
        results: list[SearchResult] = []
        for i in range(unit.shape[0]):
            found = rows[i] >= 0  # faiss pads with -1 if fewer rows qualify
            results.append((labels[i][found], similarities[i][found]))
        return results

    def _drop_dead(
        self, similarities: NDArray[np.float32], rows: NDArray[np.int64], k: int
    ) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
        """The first ``k`` live rows of each over-fetched result row. Shared lock held."""
        safe = np.maximum(rows, 0)
        alive = ((self._alive[safe >> 3] >> (safe & 7).astype(np.uint8)) & 1).astype(bool)
        alive &= rows >= 0
        # A stable sort on "dead" keeps the live rows first, in faiss's order.
        order = np.argsort(~alive, axis=1, kind="stable")[:, :k]
        kept_rows = np.take_along_axis(rows, order, axis=1)
        kept_sims = np.take_along_axis(similarities, order, axis=1)
        kept_rows[~np.take_along_axis(alive, order, axis=1)] = -1
        return kept_sims, kept_rows

    # -- snapshots ------------------------------------------------------------------

    def save(self, path: Path) -> None:
        """Snapshot atomically (a GPU index through a host copy); searches continue. O(n)."""
        faiss = self._faiss
        with self._save_lock, self._lock.shared():
            host = self._index
            if self._device is not None:
                host = self._call(faiss.index_gpu_to_cpu, self._index)
            rows = self.rows
            labels = self._labels[:rows].astype("<u8")
            alive = self._alive[: (rows + 7) // 8].copy()
            write_snapshot(
                path,
                kind=SNAPSHOT_KIND,
                meta={"dim": self._dim, "rows": rows, "count": len(self._row)},
                files={
                    "faiss": lambda target: faiss.write_index(host, str(target)),
                    "ids": labels.tofile,
                    "alive": alive.tofile,
                },
            )

    @classmethod
    def load(
        cls,
        path: Path,
        *,
        dim: int,
        gpu: bool | int = False,
        max_capacity: int | None = None,
        omp_threads: int | None = 1,
        overfetch_dead: int | None = None,
    ) -> Self:
        """Load the snapshot at ``path`` (onto device ``gpu``, if not False), verifying it.

        A snapshot saved from a GPU index loads on the CPU and the other way round;
        the other arguments are as for the constructor.
        Raises :class:`SnapshotError` when it is missing, corrupt, of another kind or
        ``dim``, or holds more than ``max_capacity`` entries. O(n).
        """
        meta, parts = read_snapshot(path, kind=SNAPSHOT_KIND)
        try:
            saved_dim, rows, count = int(meta["dim"]), int(meta["rows"]), int(meta["count"])
        except (KeyError, TypeError, ValueError) as exc:
            raise SnapshotError(f"snapshot {path} has malformed metadata: {exc}") from exc
        if saved_dim != dim:
            raise SnapshotError(f"snapshot {path} holds vectors of dim {saved_dim}, not {dim}")
        if max_capacity is not None and count > max_capacity:
            raise SnapshotError(
                f"snapshot {path} holds {count} entries, over max_capacity {max_capacity}"
            )
        loaded = cls(
            dim,
            gpu=gpu,
            max_capacity=max_capacity,
            omp_threads=omp_threads,
            overfetch_dead=overfetch_dead,
        )
        faiss = loaded._faiss
        try:
            host = faiss.read_index(str(parts["faiss"]))
        except (RuntimeError, MemoryError) as exc:
            raise SnapshotError(f"faiss cannot read snapshot {path}: {exc}") from exc
        if (
            not isinstance(host, faiss.IndexFlat)
            or host.metric_type != faiss.METRIC_INNER_PRODUCT
            or host.d != dim
            or host.ntotal != rows
        ):
            raise SnapshotError(f"snapshot {path} does not match its metadata")
        labels = np.fromfile(parts["ids"], dtype="<u8").astype(np.uint64)
        alive = np.fromfile(parts["alive"], dtype=np.uint8)
        if labels.size != rows or alive.size != (rows + 7) // 8:
            raise SnapshotError(f"snapshot {path} does not match its metadata")
        live = np.unpackbits(alive, count=rows, bitorder="little").astype(bool)
        live_labels = labels[live]
        if live_labels.size != count or np.unique(live_labels).size != count:
            raise SnapshotError(f"snapshot {path} lists {live_labels.size} live ids, not {count}")
        if loaded._device is not None:
            host = faiss.index_cpu_to_gpu(loaded._resources, loaded._device, host)
        loaded._index = host
        loaded._reserve(rows)
        loaded._labels[:rows] = labels
        loaded._alive[: alive.size] = alive
        loaded._row = dict(zip(live_labels.tolist(), np.flatnonzero(live).tolist(), strict=True))
        with loaded._lock.exclusive():
            loaded._maybe_compact()
        return loaded

    def _check(self) -> None:
        """Assert the bookkeeping's invariants (tests). O(n)."""
        with self._lock.shared():
            rows = self.rows
            alive = np.unpackbits(self._alive, bitorder="little").astype(bool)
            assert not alive[rows:].any(), "bits set past the last row"
            assert int(alive.sum()) == len(self._row), "live bits and the id map disagree"
            for label, row in self._row.items():
                assert 0 <= row < rows, f"id {label} maps to row {row} of {rows}"
                assert alive[row], f"id {label} maps to a dead row"
                assert int(self._labels[row]) == label, f"row {row} does not carry id {label}"
            if self._overfetch_dead is not None:
                assert rows - len(self._row) <= self._overfetch_dead, "too many tombstones"


def _gpu_resources(faiss: Any, device: int) -> Any:
    """``StandardGpuResources`` for ``device``, or :class:`GpuUnavailableError` saying why."""
    if device < 0:
        raise ValueError("the GPU device number must be non-negative")
    if not hasattr(faiss, "StandardGpuResources") or not hasattr(faiss, "GpuIndexFlatIP"):
        raise GpuUnavailableError(
            "the faiss-gpu index backend needs faiss built with GPU support; the installed "
            "faiss is CPU-only: install the `faiss-gpu` extra instead of `faiss`"
        )
    count = int(faiss.get_num_gpus())
    if device >= count:
        raise GpuUnavailableError(
            f"the faiss-gpu index backend asked for CUDA device {device}, but faiss sees "
            f"{count} GPU(s)"
        )
    return faiss.StandardGpuResources()
