"""The vector index protocol shared by the HNSW index and the exact reference.

An index maps 64-bit entry ids to vectors and answers cosine k-NN queries. Vectors
are L2-normalised on the way in (so the caller's scale does not matter); a zero,
NaN or infinite vector is refused with ``ValueError`` because it has no direction.
Similarities are cosine similarities in [-1, 1], best first.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, Self, runtime_checkable

import numpy as np
from numpy.typing import ArrayLike, NDArray

from semcached.errors import SemcachedError
from semcached.index.snapshot import SnapshotError

__all__ = [
    "IdArray",
    "IndexFullError",
    "NonBlockingSearch",
    "SearchResult",
    "SnapshotError",
    "VectorArray",
    "VectorIndex",
    "as_ids",
    "dedupe_last",
    "normalise",
]

IdArray = NDArray[np.uint64]
VectorArray = NDArray[np.float32]
SearchResult = tuple[IdArray, NDArray[np.float32]]


class IndexFullError(SemcachedError):
    """An add needs more slots than the index's ``max_capacity`` allows."""


@runtime_checkable
class VectorIndex(Protocol):
    """What the semantic cache needs from a vector index.

    Implementations are safe to call from several threads at once.
    """

    @property
    def dim(self) -> int:
        """The vector dimension, fixed at construction."""
        ...

    def __len__(self) -> int:
        """The number of live entries."""
        ...

    def __contains__(self, entry_id: object) -> bool: ...

    def add(self, ids: ArrayLike, vectors: ArrayLike) -> None:
        """Add ``vectors`` (shape (n, dim)) under ``ids`` (shape (n,)).

        Re-adding an existing id replaces its vector; within one call the last
        occurrence of an id wins. Raises ``ValueError`` on a bad shape or a zero,
        NaN or infinite vector (and then adds nothing).
        """
        ...

    def remove(self, ids: ArrayLike) -> int:
        """Remove ``ids``; unknown ids are ignored. Returns how many were removed."""
        ...

    def search(self, queries: ArrayLike, k: int) -> list[SearchResult]:
        """For each query row, up to ``k`` (ids, similarities) best first.

        Fewer than ``k`` pairs when fewer entries are live.
        """
        ...

    def ids(self) -> IdArray:
        """The ids of the live entries, in no particular order."""
        ...

    def save(self, path: Path) -> None:
        """Snapshot to ``path`` atomically (see :mod:`semcached.index.snapshot`)."""
        ...

    @classmethod
    def load(cls, path: Path, *, dim: int) -> Self:
        """Load a snapshot; :class:`SnapshotError` if missing, corrupt or of another dim."""
        ...


@runtime_checkable
class NonBlockingSearch(Protocol):
    """An index that can tell at once that a search would wait (for a writer)."""

    def search_nowait(self, queries: ArrayLike, k: int) -> list[SearchResult] | None:
        """``search``, or None without waiting when a mutation holds or awaits the
        index (an event loop then hands the search to a worker instead)."""
        ...


def as_ids(ids: ArrayLike) -> IdArray:
    """``ids`` as a 1-D uint64 array; ``ValueError`` for anything else (negatives included)."""
    array = np.asarray(ids)
    if array.ndim != 1:
        raise ValueError(f"ids must be one-dimensional, got shape {array.shape}")
    if array.size == 0:
        return np.empty(0, dtype=np.uint64)
    if array.dtype.kind not in "iu":
        raise ValueError(f"ids must be integers, got {array.dtype}")
    if array.dtype.kind == "i" and int(array.min()) < 0:
        raise ValueError("ids must be non-negative")
    return array.astype(np.uint64, copy=False)


def normalise(vectors: ArrayLike, dim: int, *, what: str = "vector") -> VectorArray:
    """Rows of ``vectors`` scaled to unit L2 norm, as a fresh C-contiguous float32 array.

    The arithmetic runs in float64 so that very large or very small (but finite,
    non-zero) float32 inputs neither overflow nor underflow to a zero vector.
    Raises ``ValueError`` naming the first bad row. O(n * dim).
    """
    array = np.asarray(vectors, dtype=np.float64)
    if array.ndim != 2 or array.shape[1] != dim:
        raise ValueError(f"{what}s must have shape (n, {dim}), got {array.shape}")
    finite = np.isfinite(array).all(axis=1)
    if not finite.all():
        row = int(np.argmin(finite))
        raise ValueError(f"{what} {row} contains NaN or infinity")
    norms = np.linalg.norm(array, axis=1)
    if (norms == 0).any():
        row = int(np.argmin(norms))
        raise ValueError(f"{what} {row} is a zero vector and has no direction")
    out: VectorArray = np.ascontiguousarray(array / norms[:, None], dtype=np.float32)
    return out


def dedupe_last(ids: IdArray, vectors: VectorArray) -> tuple[IdArray, VectorArray]:
    """Drop all but the last occurrence of each id (the last write wins). O(n log n)."""
    if np.unique(ids).size == ids.size:
        return ids, vectors
    _, first_in_reversed = np.unique(ids[::-1], return_index=True)
    keep = np.sort(ids.size - 1 - first_in_reversed)
    return ids[keep], vectors[keep]
