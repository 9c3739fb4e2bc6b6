"""The middlewares every request passes: metrics, error mapping, authentication.

Order (outermost first): metrics sees the final status of every request,
errors turn any exception into the JSON error format, auth rejects before a
handler runs.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping

from aiohttp import hdrs, web
from aiohttp.typedefs import Handler, Middleware

from semcached.errors import (
    ApiError,
    BadRequestError,
    NotFoundError,
    PayloadTooLargeError,
    ServerError,
)
from semcached.protocol.codes import ErrorCode
from semcached.protocol.headers import DAEMON_TOKEN_HEADER
from semcached.service.auth.authenticator import Authenticator
from semcached.service.auth.scopes import Scope
from semcached.service.http.appkeys import PRINCIPAL
from semcached.service.http.jsonio import error_response
from semcached.service.metrics import HttpMetrics

__all__ = [
    "API_KEY_HEADER",
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


API_KEY_HEADER = "api-key"
"""Qdrant's token header (its clients, LiteLLM's qdrant-semantic cache among them, send
no Authorization)."""


def _daemon_token(request: web.Request) -> str | None:
    """The daemon's token, as an Authorization value: X-Semcached-Token (bare or
    ``Bearer``) first, as a caching proxy's caller fills Authorization with the
    upstream's key; then Authorization; then Qdrant's ``api-key``."""
    own = request.headers.get(DAEMON_TOKEN_HEADER)
    if own is not None:
        own = own.strip()
        return own if own.lower().startswith("bearer ") else f"Bearer {own}"
    header = request.headers.get(hdrs.AUTHORIZATION)
    if header is None and API_KEY_HEADER in request.headers:
        return f"Bearer {request.headers[API_KEY_HEADER]}"
    return header


def auth_middleware(
    authenticator: Authenticator,
    scopes: Mapping[tuple[str, str], Scope | None],
    protected_prefix: str = "/v1/",
) -> Middleware:
    """Authenticate every request under ``protected_prefix``, and every request of a
    route that names a scope wherever it lives (the GPTCache and Qdrant wire routes
    keep those clients' paths), and check the route's scope.

    ``scopes`` maps (method, route template) to what a token needs. The request's
    :class:`~semcached.service.auth.tenants.Principal` is left in ``request[PRINCIPAL]``
    for the handler (which checks namespaces and scopes its body names); in the open
    mode it is the default tenant with every scope. Probes, metrics and the OpenAPI
    document stay open: a kubelet or Prometheus must reach them without a secret.
    The token comes from ``X-Semcached-Token``, else ``Authorization: Bearer``, else
    Qdrant's ``api-key``.
    Order: 401 (who?), 429 (the tenant's rate), 403 (the route's scope), so a caller
    without a valid token learns nothing about routes or tenants.
    """
    open_paths = frozenset({"/v1/openapi.json"})

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        scope = scopes.get((request.method, route_label(request)))
        if scope is not None or (
            request.path.startswith(protected_prefix) and request.path not in open_paths
        ):
            principal = authenticator.authenticate(_daemon_token(request))
            authenticator.admit(principal)
            request[PRINCIPAL] = principal
            if scope is not None:
                authenticator.require(principal, scope)
        return await handler(request)

    return middleware
