"""Route group ``gptcache``: GPTCache's server protocol, for its own ``Client``.

GPTCache's server (``gptcache_server/server.py``) answers ``POST /put`` ``{prompt,
answer}`` with a JSON string, ``POST /get`` ``{prompt}`` with ``{prompt, answer}``
(``answer`` null on a miss) and ``POST /flush`` with a JSON string; its
``gptcache.client.Client`` reads only ``answer``. Here the same calls are a text lookup
and insert of the semantic cache (the daemon embeds), in the namespace, category and
partition of ``[gptcache]``: the protocol names none of them. Off unless
``gptcache.enabled``.

Tokens: the paths are GPTCache's, outside ``/v1/``, but name scopes, so with tokens
configured they need one (``semantic:read`` for /get, ``semantic:write`` for /put and
/flush) and the namespace must be the token's. GPTCache's ``Client`` sends no token:
run it against a daemon without tokens (a loopback sidecar), or put a token in front
with a proxy that adds the header.
"""

from __future__ import annotations

import msgspec
import orjson
from aiohttp import web

from semcached.errors import ConfigError
from semcached.index.docstore import Document
from semcached.protocol.headers import (
    CACHE_STATUS_HEADER,
    CACHE_STATUS_HIT,
    CACHE_STATUS_MISS,
    SIMILARITY_HEADER,
)
from semcached.protocol.semantic import Prompt
from semcached.service.auth.scopes import Scope
from semcached.service.config import Settings
from semcached.service.http.appkeys import SEMANTIC, SETTINGS
from semcached.service.http.decoding import Decoder
from semcached.service.http.jsonio import json_response, struct_response
from semcached.service.http.routing import STORE_FULL_REPLY, Reply, RouteGroup
from semcached.service.http.tenancy import namespace, semantic_quota
from semcached.service.semantic.engine import Insert, Lookup

__all__ = ["GptcacheAnswer", "GptcacheGet", "GptcachePut", "group"]


def _enabled(settings: Settings) -> bool:
    return settings.gptcache.enabled


group = RouteGroup(
    "gptcache",
    "GPTCache's server protocol (POST /put, /get, /flush), so that its own "
    "gptcache.client.Client works unchanged; entries go to the [gptcache] namespace.",
    enabled=_enabled,
)

PUT_ANSWER = "successfully update the cache"
FLUSH_ANSWER = "successfully flush the cache"
"""GPTCache's server answers /put and /flush with these JSON strings."""


class GptcachePut(msgspec.Struct):
    """A question and its answer to cache (GPTCache's ``CacheData``)."""

    prompt: Prompt
    answer: str | None = ""  # GPTCache's model: optional, "" when absent


class GptcacheGet(msgspec.Struct):
    """A question to answer from the cache (an ``answer`` sent along is ignored)."""

    prompt: Prompt
    answer: str | None = None


class GptcacheAnswer(msgspec.Struct):
    """The question, and the cached answer (null on a miss)."""

    prompt: str
    answer: str | None


PUT = Decoder(GptcachePut)
GET = Decoder(GptcacheGet)


@group.on_setup
def _check(app: web.Application) -> None:
    settings = app[SETTINGS]
    if SEMANTIC not in app:
        raise ConfigError("gptcache.enabled needs the semantic route group")
    category = settings.gptcache.category
    if category and category not in settings.categories.policies:
        raise ConfigError(f"gptcache.category: no category {category!r} is configured")


def _category(settings: Settings) -> str | None:
    return settings.gptcache.category or None


def _answer(document: Document) -> str:
    """The cached answer as GPTCache's text: a JSON string as it is, anything else
    (an entry stored through /v1/ in the same namespace) as its JSON text."""
    if document.response_format == "json":
        value = orjson.loads(document.response)
        return value if isinstance(value, str) else document.response.decode("utf-8")
    return document.response.decode("utf-8", errors="replace")


@group.route(
    "POST",
    "/put",
    summary="Cache an answer to a prompt (GPTCache's /put).",
    body=PUT,
    body_description="The prompt and its answer.",
    responses={
        200: Reply("Stored: GPTCache's acknowledgement string.", str),
        507: STORE_FULL_REPLY,
    },
    operation_id="gptcache_put",
    scope=Scope.SEMANTIC_WRITE,
)
async def put(request: web.Request) -> web.Response:
    body = await PUT.read(request)
    settings = request.app[SETTINGS]
    await (
        request.app[SEMANTIC]
        .get()
        .insert(
            Insert(
                namespace=namespace(request, settings.gptcache.namespace),
                prompt=body.prompt,
                response=orjson.dumps(body.answer or ""),
                category=_category(settings),
                partition=settings.gptcache.partition,
                quota=semantic_quota(request),
            )
        )
    )
    return json_response(PUT_ANSWER)


@group.route(
    "POST",
    "/get",
    summary="The cached answer to a prompt that means the same thing (GPTCache's /get).",
    body=GET,
    body_description="The prompt.",
    responses={
        200: Reply(
            "The prompt and the cached answer, null on a miss (also in X-Cache-Status).",
            GptcacheAnswer,
        )
    },
    operation_id="gptcache_get",
    scope=Scope.SEMANTIC_READ,
)
async def get(request: web.Request) -> web.Response:
    body = await GET.read(request)
    settings = request.app[SETTINGS]
    result = (
        await request.app[SEMANTIC]
        .get()
        .lookup(
            Lookup(
                namespace=namespace(request, settings.gptcache.namespace),
                text=body.prompt,
                category=_category(settings),
                partition=settings.gptcache.partition,
            )
        )
    )
    document = result.document
    headers = {CACHE_STATUS_HEADER: CACHE_STATUS_HIT if result.hit else CACHE_STATUS_MISS}
    if result.similarity is not None:
        headers[SIMILARITY_HEADER] = f"{result.similarity:.6f}"
    answer = None if document is None else _answer(document)
    return struct_response(GptcacheAnswer(body.prompt, answer), headers=headers)


@group.route(
    "POST",
    "/flush",
    summary="GPTCache's /flush: persist what is cached. Nothing to do: an entry is "
    "durable once /put has answered. Entries are not removed.",
    responses={200: Reply("GPTCache's acknowledgement string.", str)},
    operation_id="gptcache_flush",
    scope=Scope.SEMANTIC_WRITE,
)
async def flush(request: web.Request) -> web.Response:
    # GPTCache's flush saves its in-memory stores to disk (it does not clear them);
    # the namespace check keeps a token outside it from learning that it is served.
    namespace(request, request.app[SETTINGS].gptcache.namespace)
    return json_response(FLUSH_ANSWER)
