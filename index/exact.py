"""Exact (brute-force) cosine search: the reference for tests and the recall baseline.

Unit vectors live in one dense float32 matrix; an id -> row dict finds them and a
removal moves the last row into the hole, so the matrix stays dense. A search is one
matrix product and a partial sort. Good up to a few hundred thousand entries.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Self

import numpy as np
from numpy.typing import ArrayLike, NDArray

from semcached.index.snapshot import SnapshotError, read_snapshot, write_snapshot
from semcached.index.vector_index import (
    IdArray,
    SearchResult,
    VectorArray,
    as_ids,
    dedupe_last,
    normalise,
)

__all__ = ["ExactIndex"]

_KIND = "exact-cosine"


class ExactIndex:
    """Brute-force implementation of ``VectorIndex``.

    Search is O(m * n * dim); add is O(dim) per vector amortised (doubling storage);
    remove is O(dim) per id. One mutex serialises every call, so it is thread-safe
    but not concurrent.
    """

    def __init__(self, dim: int, *, initial_capacity: int = 64) -> None:
        if dim < 1:
            raise ValueError("dim must be at least 1")
        self._dim = dim
        self._vectors: VectorArray = np.empty((max(1, initial_capacity), dim), dtype=np.float32)
        self._labels: IdArray = np.empty(max(1, initial_capacity), dtype=np.uint64)
        self._row: dict[int, int] = {}
        self._lock = threading.Lock()

    @property
    def dim(self) -> int:
        return self._dim

    def __len__(self) -> int:
        return len(self._row)

    def __contains__(self, entry_id: object) -> bool:
        return isinstance(entry_id, int | np.integer) and int(entry_id) in self._row

    def ids(self) -> IdArray:
        with self._lock:
            return self._labels[: len(self._row)].copy()

    def add(self, ids: ArrayLike, vectors: ArrayLike) -> None:
        labels = as_ids(ids)
        unit = normalise(vectors, self._dim)
        if unit.shape[0] != labels.size:
            raise ValueError(f"{labels.size} ids for {unit.shape[0]} vectors")
        labels, unit = dedupe_last(labels, unit)
        with self._lock:
            for label, vector in zip(labels.tolist(), unit, strict=True):
                row = self._row.get(label)
                if row is None:
                    row = len(self._row)
                    if row == self._labels.size:
                        self._grow()
                    self._row[label] = row
                    self._labels[row] = label
                self._vectors[row] = vector

    def _grow(self) -> None:
        size = self._labels.size * 2
        vectors = np.empty((size, self._dim), dtype=np.float32)
        vectors[: self._labels.size] = self._vectors
        labels = np.empty(size, dtype=np.uint64)
        labels[: self._labels.size] = self._labels
        self._vectors, self._labels = vectors, labels

    def remove(self, ids: ArrayLike) -> int:
        removed = 0
        with self._lock:
            for label in set(as_ids(ids).tolist()):
                row = self._row.pop(label, None)
                if row is None:
                    continue
                last = len(self._row)  # the row count after the pop
                if row != last:
                    moved = int(self._labels[last])
                    self._labels[row] = moved
                    self._vectors[row] = self._vectors[last]
                    self._row[moved] = row
                removed += 1
        return removed

    def search(self, queries: ArrayLike, k: int) -> list[SearchResult]:
        unit = self._checked_queries(queries, k)
        with self._lock:
            return self._search_locked(unit, k)

    def search_nowait(self, queries: ArrayLike, k: int) -> list[SearchResult] | None:
        unit = self._checked_queries(queries, k)
        if not self._lock.acquire(blocking=False):
            return None
        try:
            return self._search_locked(unit, k)
        finally:
            self._lock.release()

    def _checked_queries(self, queries: ArrayLike, k: int) -> VectorArray:
        if k < 1:
            raise ValueError("k must be at least 1")
        return normalise(queries, self._dim, what="query")

    def _search_locked(self, unit: VectorArray, k: int) -> list[SearchResult]:
        """The top k of each row; the caller holds the lock."""
        n = len(self._row)
        labels = self._labels[:n].copy()
        similarities = unit @ self._vectors[:n].T if n else None
        results: list[SearchResult] = []
        for i in range(unit.shape[0]):
            if similarities is None:
                results.append((np.empty(0, dtype=np.uint64), np.empty(0, dtype=np.float32)))
                continue
            row = similarities[i]
            top = np.argpartition(-row, k - 1)[:k] if k < n else np.arange(n)
            # Best first; equal similarities in id order so that results are deterministic.
            order = top[np.lexsort((labels[top], -row[top]))]
            best: NDArray[np.float32] = np.clip(row[order], -1.0, 1.0).astype(np.float32)
            results.append((labels[order], best))
        return results

    def save(self, path: Path) -> None:
        with self._lock:
            n = len(self._row)
            vectors = self._vectors[:n].astype("<f4")
            labels = self._labels[:n].astype("<u8")
        write_snapshot(
            path,
            kind=_KIND,
            meta={"dim": self._dim, "count": n},
            files={"vectors": vectors.tofile, "ids": labels.tofile},
        )

    @classmethod
    def load(cls, path: Path, *, dim: int) -> Self:
        meta, parts = read_snapshot(path, kind=_KIND)
        saved_dim = meta.get("dim")
        if saved_dim != dim:
            raise SnapshotError(f"snapshot {path} holds vectors of dim {saved_dim}, not {dim}")
        count = int(meta.get("count", -1))
        vectors = np.fromfile(parts["vectors"], dtype="<f4")
        labels = np.fromfile(parts["ids"], dtype="<u8")
        if labels.size != count or vectors.size != count * dim:
            raise SnapshotError(f"snapshot {path} does not match its metadata")
        index = cls(dim, initial_capacity=max(1, count))
        index._vectors[:count] = vectors.reshape(count, dim)
        index._labels[:count] = labels
        index._row = {label: row for row, label in enumerate(labels.tolist())}
        return index
