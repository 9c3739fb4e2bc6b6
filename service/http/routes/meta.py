"""What the daemon says about itself: Prometheus metrics and the OpenAPI document."""

from __future__ import annotations

from aiohttp import web

from semcached.service.http.appkeys import METRICS, OPENAPI
from semcached.service.http.jsonio import json_response
from semcached.service.http.routing import RouteGroup, json_content
from semcached.service.metrics import CONTENT_TYPE

__all__ = ["group"]

group = RouteGroup("meta", "Metrics and API description.")


@group.route(
    "GET",
    "/metrics",
    summary="Prometheus metrics in the text exposition format.",
    responses={
        200: {
            "description": "Metrics.",
            "content": {"text/plain": {"schema": {"type": "string"}}},
        }
    },
)
async def metrics(request: web.Request) -> web.Response:
    body = request.app[METRICS].render()
    response = web.Response(body=body)
    # Set the raw header: the exposition content type carries a version parameter.
    response.headers["Content-Type"] = CONTENT_TYPE
    return response


@group.route(
    "GET",
    "/v1/openapi.json",
    summary="This API's OpenAPI 3.1 document.",
    responses={200: json_content({"type": "object"}, "The OpenAPI document.")},
)
async def openapi(request: web.Request) -> web.Response:
    return json_response(request.app[OPENAPI])
