"""JSON in and out of aiohttp handlers, with orjson and the house error format."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
from aiohttp import web

from semcached.errors import ApiError, BadRequestError

__all__ = ["error_response", "json_response", "read_json_object"]

_JSON = "application/json"


def json_response(
    data: Any, *, status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    """Serialise ``data`` with orjson (numpy arrays included)."""
    return web.Response(
        body=orjson.dumps(data, option=orjson.OPT_SERIALIZE_NUMPY),
        status=status,
        content_type=_JSON,
        headers=headers,
    )


def error_response(error: ApiError) -> web.Response:
    """The ``{"error": {...}}`` document for ``error`` with its status."""
    return json_response(error.to_json(), status=error.status)


async def read_json_object(request: web.Request) -> dict[str, Any]:
    """Read the body as a JSON object, or raise a 4xx naming what is wrong."""
    raw = await request.read()  # over the size limit: HTTPRequestEntityTooLarge -> 413
    if not raw:
        raise BadRequestError("invalid_json", "request body is empty; expected a JSON object")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequestError("invalid_json", f"request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise BadRequestError(
            "invalid_json", f"request body must be a JSON object, got {type(body).__name__}"
        )
    return body
