"""JSON out of aiohttp handlers: response structs with msgspec, other documents with orjson.

Replies that have a struct in :mod:`semcached.protocol` (every route of the two caches)
are encoded by one :class:`msgspec.json.Encoder`; a cached JSON response inside one is
a :class:`msgspec.Raw` and is copied in as it is, never parsed again. Documents without
a struct (settings, readiness, the OpenAPI document, errors) go through orjson. Request
bodies are decoded by :class:`~semcached.service.http.decoding.Decoder`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec
import numpy as np
import orjson
from aiohttp import web

from semcached.errors import ApiError
from semcached.protocol.headers import JSON

__all__ = ["encode", "error_response", "json_response", "struct_response"]


def _numpy(value: Any) -> Any:
    """numpy scalars and arrays that reach a reply (planner metrics) as Python values."""
    if isinstance(value, np.generic | np.ndarray):
        return value.tolist()
    raise NotImplementedError(f"cannot encode {type(value).__name__} as JSON")


_ENCODER = msgspec.json.Encoder(enc_hook=_numpy)
encode = _ENCODER.encode
"""A struct (or any msgspec-encodable value) as JSON bytes."""


def struct_response(
    value: msgspec.Struct, *, status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    """``value`` encoded with msgspec."""
    return web.Response(body=encode(value), status=status, content_type=JSON, headers=headers)


def json_response(
    data: Any, *, status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    """Serialise ``data`` with orjson (numpy arrays included)."""
    return web.Response(
        body=orjson.dumps(data, option=orjson.OPT_SERIALIZE_NUMPY),
        status=status,
        content_type=JSON,
        headers=headers,
    )


def error_response(error: ApiError) -> web.Response:
    """The ``{"error": {...}}`` document for ``error`` with its status and headers;
    ``Connection: close`` among them also ends the connection after the response."""
    response = json_response(error.to_json(), status=error.status, headers=error.headers)
    if error.headers.get("Connection", "").lower() == "close":
        response.force_close()
    return response
