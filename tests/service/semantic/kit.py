"""What the in-process engine tests share: a settable clock, unit vectors, a small index,
and a deterministic text "model" (a hashed bag of words)."""

from __future__ import annotations

import numpy as np
import xxhash
from numpy.typing import NDArray

from semcached.cachepolicy.token_codec import pack_tokens
from semcached.cachepolicy.verify_features import TokenEmbeddings
from semcached.index.hnsw import HnswlibIndex
from semcached.index.vector_index import VectorIndex

Matrix = NDArray[np.float32]

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


def bow(text: str, dim: int = DIM) -> Matrix:
    """A deterministic unit vector: hashed bag of words (plus a bias so none is zero).

    Texts that share words are near, texts that share none are far (up to collisions
    of the hash in ``dim`` buckets): enough of a model to test what sits around one.
    """
    v = np.zeros(dim, dtype=np.float32)
    v[0] = 0.5
    for word in text.lower().split():
        h = xxhash.xxh64_intdigest(word.encode())
        v[h % dim] += 1.0 if (h >> 32) & 1 else -1.0
    out: Matrix = v / np.linalg.norm(v)
    return out


def bows(texts: list[str], dim: int = DIM) -> Matrix:
    return np.stack([bow(t, dim) for t in texts]) if texts else np.empty((0, dim), np.float32)


class BowBackend:
    """The bag-of-words model as an embedding backend; records the texts it embeds and
    fails every call while ``fail`` is set."""

    name = "bow"
    max_concurrency = 1

    def __init__(self, dim: int = DIM) -> None:
        self.dim = dim
        self.texts: list[str] = []
        self.fail: BaseException | None = None

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def embed_batch(self, texts: list[str]) -> Matrix:
        if self.fail is not None:
            raise self.fail
        self.texts.extend(texts)
        return bows(texts, self.dim)


def bow_tokens(text: str, dim: int = DIM) -> TokenEmbeddings:
    """One token per word: the word's own bag-of-words vector, its hash as the id."""
    words = text.lower().split() or [""]
    ids = np.array([xxhash.xxh32_intdigest(w.encode()) % 30_000 for w in words], np.int32)
    return TokenEmbeddings(ids, bows(words, dim))


class BowTokenBackend(BowBackend):
    """:class:`BowBackend` that also gives token embeddings (one per word), like MiniLM."""

    def __init__(self, dim: int = DIM) -> None:
        super().__init__(dim)
        self.token_calls = 0

    async def embed_batch_with_tokens(
        self, texts: list[str], max_tokens: int
    ) -> tuple[Matrix, list[bytes]]:
        rows = await self.embed_batch(texts)
        self.token_calls += 1
        return rows, [pack_tokens(bow_tokens(t, self.dim), max_tokens) for t in texts]
