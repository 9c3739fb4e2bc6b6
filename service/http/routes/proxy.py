"""Route group ``proxy``: an OpenAI-compatible caching proxy in front of one upstream.

Off unless ``proxy.upstream_url`` is set. ``POST /v1/chat/completions`` and
``POST /v1/completions`` are keyed like :func:`~semcached.protocol.chat.chat_cache_key`
(the last user message, or the prompt, within a partition of the model, system prompt,
tools, output parameters and earlier turns) and looked up in the semantic cache
in-process; a miss goes upstream and its answer (the completion document, assembled
from the stream when streamed) is stored when it may be.

Tokens: the route needs ``semantic:read``; a caller without ``semantic:write`` is served
(hits and misses) but stores nothing. With ``proxy.upstream_api_key`` the caller's
``Authorization`` is the daemon's token (when auth is on) and is never sent upstream;
without it the caller's ``Authorization`` goes upstream as it is, and the daemon's token,
if auth is on, travels in ``X-Semcached-Token``. Neither is stored or logged.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
from aiohttp import hdrs, web

from semcached.errors import BadRequestError, SemcachedError
from semcached.protocol.codes import ErrorCode
from semcached.protocol.headers import (
    CACHE_STATUS_BYPASS,
    CACHE_STATUS_MISS,
    DAEMON_TOKEN_HEADER,
    EVENT_STREAM,
    NAMESPACE_HEADER,
)
from semcached.service.auth.scopes import Scope
from semcached.service.config import Settings
from semcached.service.http.appkeys import AUTH, SEMANTIC, daemon_context
from semcached.service.http.proxy_relay import Call, answer_hit, relay
from semcached.service.http.routing import Reply, RouteGroup, error_reply
from semcached.service.http.tenancy import namespace, principal, semantic_quota
from semcached.service.proxy.cache_control import CacheDirectives, parse_cache_control
from semcached.service.proxy.component import Proxy, install_proxy
from semcached.service.proxy.requests import CHAT, COMPLETIONS, Endpoint, bypass_reason
from semcached.service.semantic.engine import Insert, Lookup, SemanticCache

__all__ = ["PROXY", "group"]

log = logging.getLogger(__name__)

PROXY = web.AppKey("proxy", Proxy)


def _configured(settings: Settings) -> bool:
    return bool(settings.proxy.upstream_url)


group = RouteGroup(
    "proxy",
    "OpenAI-compatible caching proxy (on when proxy.upstream_url is set).",
    enabled=_configured,
)


@group.on_setup
def _install(app: web.Application) -> None:
    app[PROXY] = install_proxy(daemon_context(app))


_OBJECT = {"type": "object", "additionalProperties": True}
_PARAMETERS = [
    {
        "name": "Cache-Control",
        "in": "header",
        "required": False,
        "description": "`no-cache`: skip the lookup (the answer is stored); `no-store`: "
        "neither look up nor store; `max-age=N`: only entries at most N seconds old.",
        "schema": {"type": "string"},
    },
    {
        "name": NAMESPACE_HEADER,
        "in": "header",
        "required": False,
        "description": "The namespace to cache in (else proxy.namespace).",
        "schema": {"type": "string"},
    },
    {
        "name": DAEMON_TOKEN_HEADER,
        "in": "header",
        "required": False,
        "description": "The daemon's token when Authorization carries the upstream's key.",
        "schema": {"type": "string"},
    },
]
_RESPONSES: dict[int | str, Reply | dict[str, Any]] = {
    200: {
        "description": "The answer (X-Cache-Status HIT, MISS or BYPASS; a hit also has "
        "X-Semcached-Similarity and Age): the completion document, or with `stream: true` "
        "its chunks as server-sent events ending with `data: [DONE]`.",
        "content": {"application/json": {"schema": _OBJECT}, EVENT_STREAM: {"schema": {}}},
    },
    "4XX": error_reply("The upstream's own error, passed through (never stored)."),
    502: error_reply("The upstream could not be reached, or answered with a 5xx."),
    504: error_reply("The upstream did not answer within proxy.upstream_timeout_s."),
}


def _request_body(what: str) -> dict[str, Any]:
    return {
        "required": True,
        "content": {"application/json": {"schema": {**_OBJECT, "description": what}}},
    }


@group.route(
    "POST",
    "/v1/chat/completions",
    summary="An OpenAI chat completion, answered from the cache or by the upstream.",
    request_body=_request_body("An OpenAI chat completion request."),
    parameters=_PARAMETERS,
    responses=_RESPONSES,
    scope=Scope.SEMANTIC_READ,
)
async def chat_completions(request: web.Request) -> web.StreamResponse:
    return await _serve(request, CHAT)


@group.route(
    "POST",
    "/v1/completions",
    summary="An OpenAI (legacy) text completion, answered from the cache or by the upstream.",
    request_body=_request_body("An OpenAI completion request (one text prompt is cached)."),
    parameters=_PARAMETERS,
    responses=_RESPONSES,
    scope=Scope.SEMANTIC_READ,
)
async def completions(request: web.Request) -> web.StreamResponse:
    return await _serve(request, COMPLETIONS)


def _upstream_authorization(request: web.Request) -> str | None:
    """The caller's Authorization to pass on, or None when it is the daemon's token."""
    if request.app[AUTH].required and DAEMON_TOKEN_HEADER not in request.headers:
        return None
    return request.headers.get(hdrs.AUTHORIZATION)


def _decode(raw: bytes) -> dict[str, Any]:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequestError(
            ErrorCode.INVALID_JSON, f"request body is not valid JSON: {exc}"
        ) from None
    if not isinstance(body, dict):
        raise BadRequestError(ErrorCode.INVALID_JSON, "request body: expected a JSON object")
    return body


def _call(request: web.Request, proxy: Proxy, endpoint: Endpoint, raw: bytes) -> Call:
    body = _decode(raw)
    options = body.get("stream_options")
    stream = body.get("stream") is True
    return Call(
        request=request,
        proxy=proxy,
        endpoint=endpoint,
        body=raw,
        parsed=body,
        model=body["model"] if isinstance(body.get("model"), str) else "",
        stream=stream,
        include_usage=stream and isinstance(options, dict) and options.get("include_usage") is True,
        upstream_headers=proxy.upstream.headers(request.headers, _upstream_authorization(request)),
    )


async def _serve(request: web.Request, endpoint: Endpoint) -> web.StreamResponse:
    proxy = request.app[PROXY]
    metrics = proxy.metrics
    call = _call(request, proxy, endpoint, await request.read())
    label = metrics.label(call.model)
    directives = parse_cache_control(request.headers.get(hdrs.CACHE_CONTROL))
    space = namespace(request, request.headers.get(NAMESPACE_HEADER) or proxy.settings.namespace)
    reason, key = bypass_reason(call.parsed, endpoint, proxy.settings)
    if reason is None and directives.no_store:
        reason = "no_store"
    slot = request.app[SEMANTIC]
    if reason is None and not slot.is_set:
        reason = "cache_not_ready"  # fail open: the upstream still answers
    if reason is not None or key is None:
        metrics.bypasses.labels(reason or "no_prompt").inc()
        metrics.requests.labels(label, "bypass").inc()
        return await relay(call, CACHE_STATUS_BYPASS, None)
    engine = slot.get()
    category = proxy.settings.category or None
    flight_key = (space, key.partition, key.text)
    if directives.lookup:
        lookup = Lookup(
            namespace=space,
            text=key.text,
            partition=key.partition,
            model=call.model,
            category=category,
        )
        found = await _lookup(engine, lookup, directives) or await _follow(proxy, flight_key)
        if found is not None:
            record, similarity, age_s = found
            metrics.requests.labels(label, "hit").inc()
            metrics.saved(call.model, record.get("usage"))
            return await answer_hit(call, record, similarity, age_s)
    metrics.requests.labels(label, "miss").inc()
    if not principal(request).can(Scope.SEMANTIC_WRITE):
        return await relay(call, CACHE_STATUS_MISS, None)
    flight = proxy.coalescer.lead(flight_key)
    quota = semantic_quota(request)

    async def store(record: dict[str, Any]) -> None:
        if flight is not None:
            flight.publish(record)
        insert = Insert(
            namespace=space,
            prompt=key.text,
            response=orjson.dumps(record),
            category=category,
            partition=key.partition,
            model=call.model,
            quota=quota,
        )
        try:
            await engine.insert(insert)
        except SemcachedError as exc:  # a full store, say: the caller has its answer
            log.warning("proxy: an answer was not stored: %s", exc)

    try:
        return await relay(call, CACHE_STATUS_MISS, store)
    finally:
        if flight is not None:
            flight.finish()


Found = tuple[dict[str, Any], float | None, float]


async def _follow(proxy: Proxy, flight_key: tuple[str, str, str]) -> Found | None:
    """The answer of an identical miss under way, if it comes within coalesce_wait_s."""
    if not proxy.coalescer.flying(flight_key):
        return None
    record = await proxy.coalescer.follow(flight_key)
    if record is None:
        return None
    proxy.metrics.coalesced.inc()
    return record, 1.0, 0.0


async def _lookup(
    engine: SemanticCache, lookup: Lookup, directives: CacheDirectives
) -> Found | None:
    """(record, similarity, age) of a usable hit, or None; a failing lookup is a miss."""
    try:
        result = await engine.lookup(lookup)
    except SemcachedError as exc:
        log.warning("proxy: lookup failed, going upstream: %s", exc)
        return None
    document = result.document
    if not result.hit or document is None or document.response_format != "json":
        return None
    age_s = result.age_s or 0.0
    if directives.max_age is not None and age_s > directives.max_age:
        return None
    record = orjson.loads(document.response)
    if not isinstance(record, dict):
        return None
    return record, result.similarity, age_s
