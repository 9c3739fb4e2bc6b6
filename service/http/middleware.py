"""The middlewares every request passes: metrics, error mapping, authentication.

Order (outermost first): metrics sees the final status of every request,
errors turn any exception into the JSON error format, auth rejects before a
handler runs.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time

from aiohttp import hdrs, web
from aiohttp.typedefs import Handler, Middleware

from semcached.errors import (
    ApiError,
    AuthenticationError,
    BadRequestError,
    NotFoundError,
    PayloadTooLargeError,
    ServerError,
)
from semcached.protocol.codes import ErrorCode
from semcached.service.http.jsonio import error_response
from semcached.service.metrics import HttpMetrics

__all__ = [
    "CLIENT_CLOSED",
    "auth_middleware",
    "error_middleware",
    "metrics_middleware",
    "route_label",
]

log = logging.getLogger(__name__)

UNMATCHED_ROUTE = "unmatched"
CLIENT_CLOSED = 499
"""nginx's "client closed request": the status counted and logged for a request whose
client went away before it could be answered (never sent: nobody is listening)."""


def route_label(request: web.Request) -> str:
    """The route template (``/v1/semantic/entries/{id}``), never the raw path."""
    resource = request.match_info.route.resource
    if resource is None:
        return UNMATCHED_ROUTE
    return resource.canonical


def metrics_middleware(metrics: HttpMetrics) -> Middleware:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        metrics.started()
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        except asyncio.CancelledError:
            if _client_gone(request):  # cancelled because the client hung up
                status = CLIENT_CLOSED
            raise
        finally:
            seconds = time.perf_counter() - started
            metrics.finished(route_label(request), request.method, status, seconds)

    return middleware


def _from_http_exception(exc: web.HTTPException, request: web.Request) -> ApiError:
    if isinstance(exc, web.HTTPNotFound):
        return NotFoundError(ErrorCode.NOT_FOUND, "no such route")
    if isinstance(exc, web.HTTPMethodNotAllowed):
        allowed = ", ".join(sorted(exc.allowed_methods))
        return BadRequestError(
            ErrorCode.METHOD_NOT_ALLOWED,
            f"method {exc.method} not allowed; use {allowed}",
            status=405,
        )
    if isinstance(exc, web.HTTPRequestEntityTooLarge):
        return PayloadTooLargeError(
            ErrorCode.PAYLOAD_TOO_LARGE,
            f"request body exceeds the limit of {request.client_max_size} bytes",
        )
    code = exc.reason.lower().replace(" ", "_") or "http_error"
    if exc.status >= 500:
        return ServerError(code, exc.reason, status=exc.status)
    return BadRequestError(code, exc.text or exc.reason, status=exc.status)


def _client_gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error leaves as ``{"error": {"code", "message"}}``; never HTML or a traceback."""
    try:
        return await handler(request)
    except ApiError as exc:
        return error_response(exc)
    except web.HTTPException as exc:
        if exc.status < 400:  # redirects and the like pass through untouched
            raise
        response = error_response(_from_http_exception(exc, request))
        if hdrs.ALLOW in exc.headers:  # a 405 says which methods the path has
            response.headers[hdrs.ALLOW] = exc.headers[hdrs.ALLOW]
        return response
    except Exception as exc:
        if isinstance(exc, ConnectionResetError) and _client_gone(request):
            # The client hung up (mid-body, say): its choice, not the daemon's fault.
            log.debug("client closed %s %s before the answer", request.method, request.path)
            return web.Response(status=CLIENT_CLOSED)
        log.exception("unhandled error in %s %s", request.method, request.path)
        return error_response(
            ServerError(ErrorCode.INTERNAL_ERROR, "internal error; see the daemon log")
        )


def auth_middleware(token: str, protected_prefix: str = "/v1/") -> Middleware:
    """Require ``Authorization: Bearer <token>`` on routes under ``protected_prefix``.

    Probes, metrics and the OpenAPI document stay open: a kubelet or Prometheus
    must reach them without the application's secret.
    """
    expected = f"Bearer {token}".encode()
    open_paths = frozenset({"/v1/openapi.json"})

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path.startswith(protected_prefix) and request.path not in open_paths:
            given = request.headers.get("Authorization", "").encode()
            if not hmac.compare_digest(given, expected):
                raise AuthenticationError(
                    ErrorCode.UNAUTHORIZED,
                    "missing or wrong bearer token in the Authorization header",
                )
        return await handler(request)

    return middleware
