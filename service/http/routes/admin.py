"""Operator routes: inspect the effective settings, change the log level at run time."""

from __future__ import annotations

from aiohttp import web

from semcached.errors import BadRequestError
from semcached.service.http.appkeys import SETTINGS
from semcached.service.http.jsonio import json_response, read_json_object
from semcached.service.http.routing import RouteGroup, json_content
from semcached.service.logs import set_level

__all__ = ["group"]

group = RouteGroup("admin", "Operator routes (require the bearer token when one is set).")

_LEVELS = ("debug", "info", "warning", "error")
_LOG_LEVEL = group.schema(
    "LogLevel",
    {
        "type": "object",
        "required": ["level"],
        "additionalProperties": False,
        "properties": {"level": {"enum": list(_LEVELS)}},
    },
)


@group.route(
    "GET",
    "/v1/admin/config",
    summary="The effective settings, secrets redacted.",
    responses={200: json_content({"type": "object"}, "Settings by section.")},
)
async def get_config(request: web.Request) -> web.Response:
    return json_response(request.app[SETTINGS].redacted())


@group.route(
    "PUT",
    "/v1/admin/log-level",
    summary="Change the log level of the running daemon (not persisted).",
    request_body={**json_content(_LOG_LEVEL, "The new level."), "required": True},
    responses={200: json_content(_LOG_LEVEL, "The level now in force.")},
)
async def put_log_level(request: web.Request) -> web.Response:
    body = await read_json_object(request)
    unknown = sorted(set(body) - {"level"})
    if unknown:
        raise BadRequestError("unknown_field", f"unknown field {unknown[0]!r}", field=unknown[0])
    level = body.get("level")
    if level not in _LEVELS:
        raise BadRequestError(
            "invalid_field",
            f"level must be one of {', '.join(_LEVELS)}; got {level!r}",
            field="level",
        )
    set_level(level)
    return json_response({"level": level})
