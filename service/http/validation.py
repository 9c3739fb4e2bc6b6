"""Field-by-field validation of JSON request bodies.

Each reader takes the decoded body and a field name, and either returns a value of
the right type or raises :class:`~semcached.errors.BadRequestError` naming the field,
so handlers read like a schema and every rejection is a 400 with ``field`` set.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
from numpy.typing import NDArray

from semcached.errors import BadRequestError

__all__ = [
    "NAME_PATTERN",
    "optional_float",
    "optional_name",
    "optional_str",
    "optional_vector",
    "reject_unknown",
    "require_name",
    "require_str",
]

# Namespaces, categories, partitions: printable, short, no separators that could
# collide in composite keys or metric labels.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9_.:\-]{1,128}$")


def _invalid(field: str, message: str) -> BadRequestError:
    return BadRequestError("invalid_field", f"{field}: {message}", field=field)


def reject_unknown(body: Mapping[str, Any], allowed: Iterable[str]) -> None:
    """A misspelt optional field must not be silently ignored."""
    unknown = sorted(set(body) - set(allowed))
    if unknown:
        raise BadRequestError("unknown_field", f"unknown field {unknown[0]!r}", field=unknown[0])


def require_str(body: Mapping[str, Any], field: str, *, max_len: int = 1 << 20) -> str:
    value = body.get(field)
    if value is None:
        raise BadRequestError("missing_field", f"{field} is required", field=field)
    return _check_str(field, value, max_len)


def optional_str(body: Mapping[str, Any], field: str, *, max_len: int = 1 << 20) -> str | None:
    value = body.get(field)
    return None if value is None else _check_str(field, value, max_len)


def _check_str(field: str, value: Any, max_len: int) -> str:
    if not isinstance(value, str):
        raise _invalid(field, f"expected a string, got {type(value).__name__}")
    if not value.strip():
        raise _invalid(field, "must not be empty")
    if len(value) > max_len:
        raise _invalid(field, f"longer than {max_len} characters")
    return value


def require_name(body: Mapping[str, Any], field: str) -> str:
    name = optional_name(body, field)
    if name is None:
        raise BadRequestError("missing_field", f"{field} is required", field=field)
    return name


def optional_name(body: Mapping[str, Any], field: str) -> str | None:
    value = body.get(field)
    if value is None:
        return None
    if not isinstance(value, str) or not NAME_PATTERN.match(value):
        raise _invalid(field, "expected 1-128 characters of A-Z a-z 0-9 _ . : -")
    return value


def optional_float(body: Mapping[str, Any], field: str, *, low: float, high: float) -> float | None:
    value = body.get(field)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _invalid(field, f"expected a number, got {type(value).__name__}")
    number = float(value)
    if not (math.isfinite(number) and low <= number <= high):
        raise _invalid(field, f"must be between {low:g} and {high:g}, got {value!r}")
    return number


def optional_vector(body: Mapping[str, Any], field: str) -> NDArray[np.float32] | None:
    """A vector as a JSON list of numbers or base64 of little-endian float32."""
    value = body.get(field)
    if value is None:
        return None
    if isinstance(value, str):
        try:
            raw = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise _invalid(field, "not valid base64") from None
        if not raw or len(raw) % 4:
            raise _invalid(field, "base64 must decode to a whole number of float32 values")
        vector = np.frombuffer(raw, dtype="<f4").astype(np.float32)
    elif isinstance(value, list):
        # numpy infers one dtype for the whole list in C: ints and floats give a
        # numeric array; bools, strings, None or nesting give another kind.
        try:
            wide = np.array(value, dtype=None)
        except (ValueError, OverflowError):
            wide = np.empty(0)
        numeric = wide.ndim == 1 and wide.size and wide.dtype.kind in "iuf"
        if not numeric or bool in map(type, value):  # numpy would coerce true to 1.0
            raise _invalid(field, "expected a non-empty list of numbers")
        with np.errstate(over="ignore"):  # too large for float32 -> inf, caught below
            vector = wide.astype(np.float32)
    else:
        raise _invalid(field, "expected a list of numbers or a base64 string")
    if not np.isfinite(vector).all():
        if isinstance(value, list):  # JSON has no NaN or Inf: a value was too large
            raise _invalid(field, "a value does not fit in float32")
        raise _invalid(field, "contains NaN or Inf")
    return vector
