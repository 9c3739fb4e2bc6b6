"""The embedder the engine uses: an LRU cache, then micro-batched calls to a backend.

Loop-only: every method is called on the event loop (the cache needs no lock); the
backend runs its model or request off the loop.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from semcached.cachepolicy.token_codec import DEFAULT_MAX_TOKENS
from semcached.service.semantic.embedding.base import (
    EmbeddingBackend,
    EmbeddingError,
    EmbeddingUnavailableError,
    Matrix,
    TokenBackend,
    embedding_cache_key,
    normalize_rows,
)
from semcached.service.semantic.embedding.batch import MicroBatcher

__all__ = ["BatchingEmbedder", "EmbeddingCache", "EmbeddingStats", "TokenCache"]


@dataclass(slots=True)
class EmbeddingStats:
    """Plain counters for the metrics exporter (read them; never reset)."""

    texts: int = 0
    """Texts asked for through :meth:`BatchingEmbedder.embed`."""
    cache_hits: int = 0
    texts_embedded: int = 0
    """Distinct texts sent to the backend."""
    model_calls: int = 0
    model_errors: int = 0
    model_seconds: float = 0.0
    largest_batch: int = 0
    on_batch: Callable[[int, float, bool], None] | None = field(default=None, repr=False)
    """Called after each backend call with (texts, seconds, succeeded), e.g. to feed a
    Prometheus histogram of batch sizes."""

    def record_batch(self, size: int, seconds: float, ok: bool) -> None:
        self.model_calls += 1
        self.texts_embedded += size
        self.model_seconds += seconds
        self.largest_batch = max(self.largest_batch, size)
        if not ok:
            self.model_errors += 1
        if self.on_batch is not None:
            self.on_batch(size, seconds, ok)


class EmbeddingCache:
    """A bounded LRU map from cache key to a read-only unit row (``max_entries`` 0: off).

    An ``OrderedDict`` rather than a dependency: get/put are three lines each, and
    every access is on the event loop, so no lock is needed.
    """

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._rows: OrderedDict[bytes, Matrix] = OrderedDict()

    def __len__(self) -> int:
        return len(self._rows)

    def get(self, key: bytes) -> Matrix | None:
        row = self._rows.get(key)
        if row is not None:
            self._rows.move_to_end(key)
        return row

    def put(self, key: bytes, row: Matrix) -> None:
        if self.max_entries <= 0:
            return
        row = row.copy()  # own the memory: a cached row must not pin its whole batch
        row.flags.writeable = False
        self._rows[key] = row
        self._rows.move_to_end(key)
        while len(self._rows) > self.max_entries:
            self._rows.popitem(last=False)


class TokenCache:
    """A bounded LRU map from cache key to packed token embeddings, at most
    ``max_bytes`` of them (0: off). Loop-only, like :class:`EmbeddingCache`."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.nbytes = 0
        self._packed: OrderedDict[bytes, bytes] = OrderedDict()

    def __len__(self) -> int:
        return len(self._packed)

    def get(self, key: bytes) -> bytes | None:
        packed = self._packed.get(key)
        if packed is not None:
            self._packed.move_to_end(key)
        return packed

    def put(self, key: bytes, packed: bytes) -> None:
        if len(packed) > self.max_bytes:
            return
        old = self._packed.pop(key, None)
        if old is not None:
            self.nbytes -= len(old)
        self._packed[key] = packed
        self.nbytes += len(packed)
        while self.nbytes > self.max_bytes:
            _, dropped = self._packed.popitem(last=False)
            self.nbytes -= len(dropped)


class BatchingEmbedder:
    """An :class:`Embedder` over a backend: LRU cache first, then micro-batched calls.

    Texts already cached, and repeats within one call or one batch, never reach the
    backend. The backend's rows are validated and L2-normalised here, once for all
    backends. Until :meth:`open` has finished, :meth:`embed` answers 503.

    With ``token_cache_bytes`` > 0 and a backend that gives token embeddings
    (:class:`~semcached.service.semantic.embedding.base.TokenBackend`), every model
    call also keeps each text's packed token embeddings (its first ``max_tokens``)
    for :meth:`tokens`: the hit verifier reads the query's, and an insert stores its
    prompt's, without another model call.
    """

    def __init__(
        self,
        backend: EmbeddingBackend,
        *,
        max_batch: int = 32,
        max_wait_s: float = 0.002,
        cache_entries: int = 10_000,
        max_queued: int | None = None,
        stats: EmbeddingStats | None = None,
        token_cache_bytes: int = 0,
        max_tokens: int = DEFAULT_MAX_TOKENS,
    ) -> None:
        self.backend = backend
        self.stats = stats if stats is not None else EmbeddingStats()
        self.cache = EmbeddingCache(cache_entries)
        self.token_cache = TokenCache(token_cache_bytes)
        self.max_tokens = max_tokens
        self._token_backend = (
            backend if token_cache_bytes > 0 and isinstance(backend, TokenBackend) else None
        )
        self._batcher: MicroBatcher | None = None
        self._batcher_args = (max_batch, max_wait_s, max_queued)
        self._open = False

    @property
    def name(self) -> str:
        return self.backend.name

    @property
    def dim(self) -> int:
        return self.backend.dim

    async def open(self) -> None:
        """Open the backend (load the model, probe the service); then accept texts."""
        if self._open:
            return
        await self.backend.open()
        max_batch, max_wait_s, max_queued = self._batcher_args
        # The batcher binds to the running loop, so it is made here rather than in __init__.
        self._batcher = MicroBatcher(
            self._embed_batch,
            max_batch=max_batch,
            max_wait_s=max_wait_s,
            max_concurrency=self.backend.max_concurrency,
            max_queued=max_queued,
        )
        self._open = True

    async def close(self) -> None:
        """Fail queued texts, let running batches finish, close the backend."""
        was_open, self._open = self._open, False
        if self._batcher is not None:
            await self._batcher.close()
        if was_open:
            await self.backend.close()

    async def embed(self, texts: Sequence[str]) -> Matrix:
        """Unit rows for ``texts``, in order (``(0, dim)`` for no texts)."""
        if not self._open or self._batcher is None:
            raise EmbeddingUnavailableError("the embedding model is not loaded (yet)")
        dim = self.dim
        out = np.empty((len(texts), dim), dtype=np.float32)
        missing: dict[str, list[int]] = {}  # distinct uncached text -> its positions
        name = self.name
        for i, text in enumerate(texts):
            row = self.cache.get(embedding_cache_key(name, text))
            if row is None:
                missing.setdefault(text, []).append(i)
            else:
                out[i] = row
        self.stats.texts += len(texts)
        self.stats.cache_hits += len(texts) - sum(len(p) for p in missing.values())
        if missing:
            distinct = list(missing)
            rows = await self._batcher.submit(distinct)
            for text, row in zip(distinct, rows, strict=True):
                out[missing[text]] = row
        return out

    @property
    def keeps_tokens(self) -> bool:
        return self._token_backend is not None

    @property
    def token_bytes_held(self) -> int:
        return self.token_cache.nbytes

    async def tokens(self, texts: Sequence[str]) -> list[bytes | None]:
        """Packed token embeddings of ``texts``, in order: kept ones from the cache, the
        rest from one more (batched) model call. All None when tokens are not kept."""
        if self._token_backend is None:
            return [None] * len(texts)
        if not self._open or self._batcher is None:
            raise EmbeddingUnavailableError("the embedding model is not loaded (yet)")
        name = self.name
        keys = [embedding_cache_key(name, text) for text in texts]
        out = [self.token_cache.get(key) for key in keys]
        missing = list(dict.fromkeys(t for t, p in zip(texts, out, strict=True) if p is None))
        if missing:
            await self._batcher.submit(missing)  # the batch's model call keeps their tokens
            out = [
                p if p is not None else self.token_cache.get(k)
                for p, k in zip(out, keys, strict=True)
            ]
        return out

    async def _embed_batch(self, texts: list[str]) -> Matrix:
        # Concurrent callers may have sent the same text: embed each distinct text once.
        distinct = list(dict.fromkeys(texts))
        started = time.perf_counter()
        ok = False
        packed: list[bytes] | None = None
        try:
            if self._token_backend is not None:
                raw, packed = await self._token_backend.embed_batch_with_tokens(
                    distinct, self.max_tokens
                )
            else:
                raw = await self.backend.embed_batch(distinct)
            rows = normalize_rows(raw, len(distinct), self.dim)
            if packed is not None and len(packed) != len(distinct):
                raise EmbeddingError(f"{len(packed)} token sets for {len(distinct)} texts")
            ok = True
        finally:
            self.stats.record_batch(len(distinct), time.perf_counter() - started, ok)
        # Filled here, not by the callers, so a cancelled caller's texts still warm it.
        name = self.name
        for i, (text, row) in enumerate(zip(distinct, rows, strict=True)):
            key = embedding_cache_key(name, text)
            self.cache.put(key, row)
            if packed is not None:
                self.token_cache.put(key, packed[i])
        if len(distinct) == len(texts):
            return rows
        where = {text: i for i, text in enumerate(distinct)}
        return rows[[where[t] for t in texts]]
