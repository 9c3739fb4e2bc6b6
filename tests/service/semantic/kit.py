"""What the in-process engine tests share: a settable clock, unit vectors, a small index."""

from __future__ import annotations

import numpy as np

from semcached.index.hnsw import HnswlibIndex
from semcached.index.vector_index import VectorIndex

DIM = 16
MiB = 1 << 20


class Clock:
    """A wall clock the test moves by hand (``clock.now += ttl``)."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def unit(seed: int, dim: int = DIM) -> np.ndarray:
    """A random unit vector, the same for the same seed."""
    v = np.random.default_rng(seed).standard_normal(dim).astype(np.float32)
    return v / np.linalg.norm(v)


def new_index(dim: int) -> VectorIndex:
    return HnswlibIndex(dim, m=16, ef_construction=100, ef_search=64, initial_capacity=16)
