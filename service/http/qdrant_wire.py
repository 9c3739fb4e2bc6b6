"""Qdrant's REST shapes, the subset LiteLLM's ``qdrant-semantic`` cache sends and reads.

Request bodies are msgspec structs that ignore fields they do not name (Qdrant's
requests carry many tuning fields, e.g. ``quantization_config`` or search ``params``,
that have no meaning here). Answers are Qdrant's envelopes: ``{"result", "status":
"ok", "time"}``, and ``{"status": {"error": "..."}, "time"}`` for an error.
"""

from __future__ import annotations

import functools
import time
import uuid
from collections.abc import Mapping
from typing import Annotated, Any

import msgspec
from aiohttp import web

from semcached.errors import ApiError, BadRequestError
from semcached.protocol.codes import ErrorCode
from semcached.service.http.jsonio import json_response
from semcached.service.http.routing import Handler

__all__ = [
    "CreateCollection",
    "CreateIndex",
    "Point",
    "PointId",
    "SearchPoints",
    "UpsertPoints",
    "VectorParams",
    "canonical_id",
    "ok",
    "partition_filter",
    "qdrant_errors",
]

PointId = int | str
"""An unsigned integer or a UUID, as Qdrant's point ids."""
Vector = Annotated[list[float], msgspec.Meta(min_length=1)]


class VectorParams(msgspec.Struct):
    size: Annotated[int, msgspec.Meta(ge=1)]
    distance: str


class CreateCollection(msgspec.Struct):
    """``PUT /collections/{name}``: one unnamed vector per point."""

    vectors: VectorParams


class CreateIndex(msgspec.Struct):
    """``PUT /collections/{name}/index``: a payload field index."""

    field_name: Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
    field_schema: str | dict[str, Any] = "keyword"


class Point(msgspec.Struct):
    id: PointId
    vector: Vector
    payload: dict[str, Any] | None = None


class UpsertPoints(msgspec.Struct):
    """``PUT /collections/{name}/points``, the list form."""

    points: Annotated[list[Point], msgspec.Meta(min_length=1)]


class SearchPoints(msgspec.Struct):
    """``POST /collections/{name}/points/search``."""

    vector: Vector
    limit: Annotated[int, msgspec.Meta(ge=1)] = 10
    offset: Annotated[int, msgspec.Meta(ge=0)] = 0
    filter: dict[str, Any] | None = None
    with_payload: bool | list[str] = False
    score_threshold: float | None = None


def canonical_id(value: PointId) -> PointId:
    """The point id as Qdrant keeps it: an unsigned integer, or a UUID's hyphenated form."""
    if isinstance(value, int):
        if not 0 <= value < 1 << 64:
            raise BadRequestError(
                ErrorCode.INVALID_FIELD, "id: expected an unsigned integer or a UUID", field="id"
            )
        return value
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise BadRequestError(
            ErrorCode.INVALID_FIELD, f"id: {value!r} is not an unsigned integer or a UUID"
        ) from None


def partition_filter(filter_: Mapping[str, Any] | None, field: str) -> str:
    """The partition a search filter names: ``{"must": [{"key": field, "match": {"value":
    v}}]}`` with ``field`` the collection's keyword index, the only filter served.

    A collection with that index must be searched with it (its points are kept apart
    by the value); one without takes no filter.
    """
    if not filter_:
        if field:
            raise _unsupported(f"points are partitioned by {field!r}: filter on it with must/match")
        return ""
    if not field:
        raise _unsupported(
            "the collection has no keyword payload index to filter on "
            "(PUT /collections/{name}/index before upserting)"
        )
    must = filter_.get("must")
    if set(filter_) != {"must"} or not isinstance(must, list) or len(must) != 1:
        raise _unsupported(f"only must: [one match on {field!r}] is served")
    condition = must[0]
    match = condition.get("match") if isinstance(condition, dict) else None
    if (
        not isinstance(match, dict)
        or condition.get("key") != field
        or set(match) != {"value"}
        or not isinstance(match["value"], str)
    ):
        raise _unsupported(f'only {{"key": {field!r}, "match": {{"value": "<text>"}}}} is served')
    value: str = match["value"]
    return value


def _unsupported(message: str) -> BadRequestError:
    return BadRequestError(ErrorCode.INVALID_FIELD, f"filter: {message}", field="filter")


def ok(result: Any, started: float, *, status: int = 200) -> web.Response:
    """Qdrant's answer envelope."""
    return json_response(
        {"result": result, "status": "ok", "time": time.perf_counter() - started}, status=status
    )


def _error(status: int, message: str, started: float, headers: Mapping[str, str]) -> web.Response:
    body = {"status": {"error": message}, "time": time.perf_counter() - started}
    return json_response(body, status=status, headers=headers)


def qdrant_errors(handler: Handler) -> Handler:
    """Answer the handler's errors as Qdrant does, with the same statuses."""

    @functools.wraps(handler)
    async def wrapped(request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        try:
            return await handler(request)
        except ApiError as exc:
            return _error(exc.status, exc.message, started, exc.headers)

    return wrapped
