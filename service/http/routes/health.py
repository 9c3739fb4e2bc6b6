"""Probes for orchestrators: liveness and readiness."""

from __future__ import annotations

from aiohttp import web

from semcached.service.http.appkeys import READINESS
from semcached.service.http.jsonio import json_response
from semcached.service.http.routing import RouteGroup, json_content

__all__ = ["group"]

group = RouteGroup("health", "Liveness and readiness probes (never require a token).")

_READINESS = group.schema(
    "Readiness",
    {
        "type": "object",
        "required": ["status"],
        "properties": {
            "status": {"enum": ["starting", "ready", "failed", "shutting_down"]},
            "waiting_for": {"type": "array", "items": {"type": "string"}},
            "failed": {"type": "object", "additionalProperties": {"type": "string"}},
            "storage_full": {
                "type": "array",
                "items": {"type": "string"},
                "description": "Stores that refuse inserts (507 store_full) because they "
                "are full and nothing is left to evict; reads still work, so the daemon "
                "stays ready.",
            },
            "degraded": {
                "type": "object",
                "additionalProperties": {"type": "string"},
                "description": "Features off by a fault, with the reason (e.g. hit "
                "verification without a usable model file); the daemon serves without them.",
            },
        },
    },
)


@group.route(
    "GET",
    "/livez",
    summary="The process is alive and its event loop answers.",
    responses={200: json_content({"type": "object"}, "Alive.")},
)
async def livez(request: web.Request) -> web.Response:
    return json_response({"status": "alive"})


@group.route(
    "GET",
    "/readyz",
    summary="Every store is open and every index loaded, and shutdown has not begun.",
    responses={
        200: json_content(_READINESS, "Ready to serve."),
        503: json_content(_READINESS, "Starting, failed, or shutting down."),
    },
)
async def readyz(request: web.Request) -> web.Response:
    readiness = request.app[READINESS]
    return json_response(readiness.report(), status=200 if readiness.is_ready else 503)
