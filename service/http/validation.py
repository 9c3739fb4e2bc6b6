"""What the request structs cannot express: a vector's bytes as a float32 array.

Everything else a request must satisfy is declared on its struct in
:mod:`semcached.protocol` and checked while decoding (see
:mod:`~semcached.service.http.decoding`); the engines check what depends on their
state (the vector's dimension, known categories and models).
"""

from __future__ import annotations

import base64
import binascii

import numpy as np
from numpy.typing import NDArray

from semcached.errors import BadRequestError
from semcached.protocol.codes import ErrorCode

__all__ = ["to_vector"]


def _invalid(field: str, message: str) -> BadRequestError:
    return BadRequestError(ErrorCode.INVALID_FIELD, f"{field}: {message}", field=field)


def to_vector(value: list[float] | str, field: str = "vector") -> NDArray[np.float32]:
    """A decoded vector (a non-empty list of numbers, or base64 of little-endian float32)."""
    if isinstance(value, str):
        try:
            raw = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise _invalid(field, "not valid base64") from None
        if not raw or len(raw) % 4:
            raise _invalid(field, "base64 must decode to a whole number of float32 values")
        vector = np.frombuffer(raw, dtype="<f4").astype(np.float32)
        if not np.isfinite(vector).all():
            raise _invalid(field, "contains NaN or Inf")
        return vector
    with np.errstate(over="ignore"):  # too large for float32 -> inf, caught below
        vector = np.array(value, dtype=np.float32)
    if not np.isfinite(vector).all():  # JSON has no NaN or Inf: a value was too large
        raise _invalid(field, "a value does not fit in float32")
    return vector
