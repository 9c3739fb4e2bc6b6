"""The ``none`` backend: callers send vectors, and a text-only request is their 400."""

from __future__ import annotations

from collections.abc import Sequence

from semcached.service.semantic.embedding.base import EmbeddingDisabledError, Matrix

__all__ = ["DisabledEmbedder"]


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
