"""Query and entry vectors: the caller's (checked and normalised) or the embedder's.

Loop-only: embedding is awaited through the embedder, which batches and offloads.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from semcached.errors import BadRequestError
from semcached.protocol.codes import ErrorCode
from semcached.service.semantic.embedding.base import Embedder
from semcached.service.semantic.types import Insert, Vector

__all__ = ["VectorSource"]


class VectorSource:
    """Unit vectors of ``dim`` dimensions for lookups and inserts."""

    def __init__(self, embedder: Embedder, dim: int) -> None:
        self._embedder = embedder
        self.dim = dim

    async def for_query(self, text: str | None, vector: Vector | None) -> Vector:
        """The caller's vector if given, else the text's embedding."""
        if vector is not None:
            return self.check(vector)
        assert text is not None
        if not text.strip():
            raise BadRequestError(ErrorCode.INVALID_FIELD, "text must not be empty", field="text")
        rows = await self._embedder.embed([text])
        return np.asarray(rows[0], dtype=np.float32)

    async def for_inserts(self, requests: Sequence[Insert]) -> list[Vector]:
        """One vector per insert; the prompts without one share embedding calls."""
        given = [self.check(r.vector) if r.vector is not None else None for r in requests]
        missing = [i for i, v in enumerate(given) if v is None]
        if missing:
            embedded = await self._embedder.embed([requests[i].prompt for i in missing])
            for row, i in enumerate(missing):
                given[i] = embedded[row]
        return [v for v in given if v is not None]

    def check(self, vector: Vector) -> Vector:
        """``vector`` normalised to unit length; 400 for a wrong dimension, NaN/Inf or zero."""
        v = np.asarray(vector, dtype=np.float32)
        if v.shape != (self.dim,):
            raise BadRequestError(
                ErrorCode.INVALID_VECTOR,
                f"vector must have {self.dim} dimensions, got shape {v.shape}",
                field="vector",
            )
        if not np.isfinite(v).all():
            raise BadRequestError(
                ErrorCode.INVALID_VECTOR, "vector contains NaN or Inf", field="vector"
            )
        # In float64: a float32 sum of squares overflows from components of about 2e19
        # (and underflows below 1e-23), which would turn a valid direction into zeros.
        wide = v.astype(np.float64)
        norm = float(np.linalg.norm(wide))
        if norm == 0.0:
            raise BadRequestError(
                ErrorCode.INVALID_VECTOR, "vector must not be all zeros", field="vector"
            )
        unit: Vector = (wide / norm).astype(np.float32)
        return unit
