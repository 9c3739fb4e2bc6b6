"""Route group ``semantic``: the semantic response cache over HTTP.

Handlers parse and validate, call the :class:`~semcached.service.semantic.engine.SemanticCache`
engine, and serialise; the engine decides everything else.
"""

from __future__ import annotations

import base64
from typing import Any

import orjson
from aiohttp import web

from semcached.errors import BadRequestError, NotFoundError
from semcached.index.docstore import Document
from semcached.service.http.appkeys import SEMANTIC, SETTINGS, daemon_context
from semcached.service.http.jsonio import json_response, read_json_object
from semcached.service.http.routing import RouteGroup, json_content
from semcached.service.http.validation import (
    optional_float,
    optional_name,
    optional_str,
    optional_vector,
    reject_unknown,
    require_name,
    require_str,
)
from semcached.service.semantic.component import install_semantic_cache
from semcached.service.semantic.engine import Insert, Lookup, LookupResult

__all__ = ["group"]

group = RouteGroup("semantic", "The semantic response cache.")


@group.on_setup
def _install_engine(app: web.Application) -> None:
    app[SEMANTIC] = install_semantic_cache(daemon_context(app))


_MAX_PROMPT_CHARS = 1 << 20
_MAX_TTL_S = 10 * 365 * 86400.0

# --- schemas ---------------------------------------------------------------------------

_VECTOR = {
    "description": "A vector as a list of numbers, or base64 of little-endian float32.",
    "oneOf": [{"type": "array", "items": {"type": "number"}}, {"type": "string"}],
}
_NAME = {"type": "string", "pattern": "^[A-Za-z0-9_.:\\-]{1,128}$"}
_LOOKUP_FIELDS = {
    "namespace": {**_NAME, "description": "Tenant; entries never match across namespaces."},
    "text": {"type": "string", "description": "The prompt (embedded if no vector is given)."},
    "vector": _VECTOR,
    "category": {**_NAME, "description": "Category policy to apply; default when absent."},
    "partition": {
        "type": "string",
        "description": "E.g. model + system-prompt hash + tools; entries never match across.",
    },
    "threshold": {"type": "number", "description": "Clamped to the category's bounds."},
}
LOOKUP = group.schema(
    "SemanticLookup",
    {"type": "object", "required": ["namespace"], "properties": _LOOKUP_FIELDS,
     "additionalProperties": False},
)  # fmt: skip
LOOKUP_RESULT = group.schema(
    "SemanticLookupResult",
    {
        "type": "object",
        "required": ["hit", "category"],
        "properties": {
            "hit": {"type": "boolean"},
            "similarity": {"type": ["number", "null"]},
            "entry_id": {"type": ["integer", "null"]},
            "age_s": {"type": ["number", "null"]},
            "category": {"type": "string"},
            "strategy": {"enum": ["exact", "semantic", None]},
            "response": {"description": "The cached response (JSON, or base64 for bytes)."},
            "response_format": {"enum": ["json", "bytes"]},
        },
    },
)
INSERT = group.schema(
    "SemanticInsert",
    {
        "type": "object",
        "required": ["namespace", "prompt", "response"],
        "additionalProperties": False,
        "properties": {
            "namespace": _NAME,
            "prompt": {"type": "string"},
            "response": {"description": "Any JSON value, or base64 when response_format=bytes."},
            "response_format": {"enum": ["json", "bytes"], "default": "json"},
            "category": _NAME,
            "partition": {"type": "string"},
            "model": {"type": "string"},
            "vector": _VECTOR,
            "ttl_s": {"type": "number", "exclusiveMinimum": 0},
        },
    },
)
ENTRY = group.schema(
    "SemanticEntry",
    {
        "type": "object",
        "properties": {
            k: {}
            for k in (
                "entry_id",
                "namespace",
                "category",
                "partition",
                "model",
                "prompt",
                "response",
                "response_format",
                "created_at",
                "expires_at",
                "hit_count",
                "last_hit_at",
                "size_bytes",
            )
        },
    },
)
_NAMESPACE_PARAM = {
    "name": "namespace",
    "in": "query",
    "required": True,
    "schema": _NAME,
    "description": "The entry's namespace; another namespace's entries are not visible.",
}
_ID_PARAM = {"name": "id", "in": "path", "required": True, "schema": {"type": "integer"}}


# --- parsing -----------------------------------------------------------------------------


def _namespace(request: web.Request, value: str) -> str:
    allowed = request.app[SETTINGS].semantic.namespaces
    if allowed and value not in allowed:
        raise BadRequestError(
            "unknown_namespace", f"unknown namespace {value!r}", field="namespace"
        )
    return value


def _parse_lookup(request: web.Request, body: dict[str, Any]) -> Lookup:
    reject_unknown(body, _LOOKUP_FIELDS)
    text = optional_str(body, "text", max_len=_MAX_PROMPT_CHARS)
    vector = optional_vector(body, "vector")
    if text is None and vector is None:
        raise BadRequestError("missing_field", "give text, vector or both", field="text")
    return Lookup(
        namespace=_namespace(request, require_name(body, "namespace")),
        text=text,
        vector=vector,
        category=optional_name(body, "category"),
        partition=_partition(body),
        threshold=optional_float(body, "threshold", low=-1.0, high=1.0),
    )


def _partition(body: dict[str, Any]) -> str:
    value = body.get("partition", "")
    if not isinstance(value, str) or len(value) > 1024:
        raise BadRequestError(
            "invalid_field", "partition: expected a string of at most 1024 characters",
            field="partition",
        )  # fmt: skip
    return value


_INSERT_FIELDS = frozenset(
    {
        "namespace", "prompt", "response", "response_format", "category", "partition",
        "model", "vector", "ttl_s",
    }
)  # fmt: skip


def _parse_insert(request: web.Request, body: dict[str, Any]) -> Insert:
    reject_unknown(body, _INSERT_FIELDS)
    response_format = body.get("response_format", "json")
    if response_format not in ("json", "bytes"):
        raise BadRequestError(
            "invalid_field", "response_format: expected 'json' or 'bytes'", field="response_format"
        )
    if "response" not in body:
        raise BadRequestError("missing_field", "response is required", field="response")
    if response_format == "json":
        payload = orjson.dumps(body["response"])
    else:
        encoded = body["response"]
        try:
            if not isinstance(encoded, str):
                raise ValueError
            payload = base64.b64decode(encoded, validate=True)
        except ValueError:
            raise BadRequestError(
                "invalid_field", "response: expected base64 for response_format=bytes",
                field="response",
            ) from None  # fmt: skip
    model = body.get("model", "")
    if not isinstance(model, str):
        raise BadRequestError("invalid_field", "model: expected a string", field="model")
    return Insert(
        namespace=_namespace(request, require_name(body, "namespace")),
        prompt=require_str(body, "prompt", max_len=_MAX_PROMPT_CHARS),
        response=payload,
        response_format=response_format,
        category=optional_name(body, "category"),
        partition=_partition(body),
        model=model,
        vector=optional_vector(body, "vector"),
        ttl_s=optional_float(body, "ttl_s", low=1e-3, high=_MAX_TTL_S),
    )


def _entry_id(request: web.Request) -> int:
    raw = request.match_info["id"]
    if not raw.isdigit() or int(raw) >= 1 << 64:
        raise BadRequestError("invalid_field", "id: expected an unsigned integer", field="id")
    return int(raw)


# --- serialising -------------------------------------------------------------------------


def _response_value(document: Document) -> Any:
    if document.response_format == "json":
        return orjson.Fragment(document.response)  # already JSON: no re-parse
    return base64.b64encode(document.response).decode()


def _result_json(result: LookupResult) -> dict[str, Any]:
    body: dict[str, Any] = {
        "hit": result.hit,
        "similarity": result.similarity,
        "entry_id": result.entry_id,
        "age_s": result.age_s,
        "category": result.category,
        "strategy": result.strategy,
    }
    if result.document is not None:
        body["response"] = _response_value(result.document)
        body["response_format"] = result.document.response_format
    return body


def _cache_headers(result: LookupResult) -> dict[str, str]:
    headers = {"X-Cache-Status": "HIT" if result.hit else "MISS"}
    if result.similarity is not None:
        headers["X-Semcached-Similarity"] = f"{result.similarity:.6f}"
    return headers


def _entry_json(document: Document) -> dict[str, Any]:
    return {
        "entry_id": document.entry_id,
        "namespace": document.namespace,
        "category": document.category,
        "partition": document.partition,
        "model": document.model,
        "prompt": document.prompt,
        "response": _response_value(document),
        "response_format": document.response_format,
        "created_at": document.created_at,
        "expires_at": document.expires_at,
        "hit_count": document.hit_count,
        "last_hit_at": document.last_hit_at,
        "size_bytes": document.size_bytes,
    }


# --- routes ------------------------------------------------------------------------------


@group.route(
    "POST",
    "/v1/semantic/lookup",
    summary="Find a cached response to a prompt that means the same thing.",
    request_body={**json_content(LOOKUP, "The prompt."), "required": True},
    responses={200: json_content(LOOKUP_RESULT, "Hit or miss (also in X-Cache-Status).")},
)
async def lookup(request: web.Request) -> web.Response:
    parsed = _parse_lookup(request, await read_json_object(request))
    result = await request.app[SEMANTIC].get().lookup(parsed)
    return json_response(_result_json(result), headers=_cache_headers(result))


@group.route(
    "POST",
    "/v1/semantic/lookup:batch",
    summary="Several lookups in one request.",
    request_body={
        **json_content(
            {
                "type": "object",
                "required": ["lookups"],
                "properties": {"lookups": {"type": "array", "items": LOOKUP}},
            },
            "The prompts.",
        ),
        "required": True,
    },
    responses={
        200: json_content(
            {
                "type": "object",
                "properties": {"results": {"type": "array", "items": LOOKUP_RESULT}},
            },
            "One result per lookup, in order.",
        )
    },
)
async def lookup_batch(request: web.Request) -> web.Response:
    body = await read_json_object(request)
    reject_unknown(body, ("lookups",))
    items = body.get("lookups")
    limit = request.app[SETTINGS].semantic.max_batch
    if not isinstance(items, list) or not items or not all(isinstance(i, dict) for i in items):
        raise BadRequestError(
            "invalid_field", "lookups: expected a non-empty list of objects", field="lookups"
        )
    if len(items) > limit:
        raise BadRequestError(
            "invalid_field", f"lookups: at most {limit} per batch", field="lookups"
        )
    parsed = [_parse_lookup(request, item) for item in items]
    results = await request.app[SEMANTIC].get().lookup_many(parsed)
    return json_response({"results": [_result_json(r) for r in results]})


@group.route(
    "POST",
    "/v1/semantic/entries",
    summary="Cache a prompt's response; acknowledged once durably stored.",
    request_body={**json_content(INSERT, "The entry."), "required": True},
    responses={
        201: json_content(
            {
                "type": "object",
                "properties": {
                    "entry_id": {"type": "integer"},
                    "category": {"type": "string"},
                    "expires_at": {"type": "number"},
                },
            },
            "Stored.",
        )
    },
)
async def insert(request: web.Request) -> web.Response:
    parsed = _parse_insert(request, await read_json_object(request))
    result = await request.app[SEMANTIC].get().insert(parsed)
    return json_response(
        {"entry_id": result.entry_id, "category": result.category, "expires_at": result.expires_at},
        status=201,
    )


@group.route(
    "GET",
    "/v1/semantic/entries/{id}",
    summary="Read one entry.",
    parameters=[_ID_PARAM, _NAMESPACE_PARAM],
    responses={200: json_content(ENTRY, "The entry."), 404: {"description": "No such entry."}},
)
async def get_entry(request: web.Request) -> web.Response:
    entry_id = _entry_id(request)
    namespace = _namespace(request, require_name(dict(request.query), "namespace"))
    document = request.app[SEMANTIC].get().get(entry_id)
    if document is None or document.namespace != namespace:
        raise NotFoundError("not_found", f"no entry {entry_id} in namespace {namespace!r}")
    return json_response(_entry_json(document))


@group.route(
    "DELETE",
    "/v1/semantic/entries/{id}",
    summary="Remove one entry.",
    parameters=[_ID_PARAM, _NAMESPACE_PARAM],
    responses={204: {"description": "Removed."}, 404: {"description": "No such entry."}},
)
async def delete_entry(request: web.Request) -> web.Response:
    entry_id = _entry_id(request)
    namespace = _namespace(request, require_name(dict(request.query), "namespace"))
    engine = request.app[SEMANTIC].get()
    document = engine.get(entry_id)
    if document is None or document.namespace != namespace or not await engine.delete(entry_id):
        raise NotFoundError("not_found", f"no entry {entry_id} in namespace {namespace!r}")
    return web.Response(status=204)


@group.route(
    "POST",
    "/v1/semantic/purge",
    summary="Remove every entry of a namespace, optionally one category or partition.",
    request_body={
        **json_content(
            {
                "type": "object",
                "required": ["namespace"],
                "additionalProperties": False,
                "properties": {
                    "namespace": _NAME,
                    "category": _NAME,
                    "partition": {"type": "string"},
                },
            },
            "What to purge.",
        ),
        "required": True,
    },
    responses={200: json_content({"type": "object"}, "How many entries were removed.")},
)
async def purge(request: web.Request) -> web.Response:
    body = await read_json_object(request)
    reject_unknown(body, ("namespace", "category", "partition"))
    namespace = _namespace(request, require_name(body, "namespace"))
    partition = _partition(body) if "partition" in body else None
    removed = (
        await request.app[SEMANTIC]
        .get()
        .purge(namespace, optional_name(body, "category"), partition)
    )
    return json_response({"purged": removed})


@group.route(
    "GET",
    "/v1/semantic/stats",
    summary="Per category: entries, bytes, hits, misses, inserts, evictions, expirations.",
    responses={200: json_content({"type": "object"}, "Statistics.")},
)
async def stats(request: web.Request) -> web.Response:
    engine = request.app[SEMANTIC].get()
    categories = {
        name: {
            "entries": s.entries, "bytes": s.bytes, "hits": s.hits, "misses": s.misses,
            "inserts": s.inserts, "evictions": s.evictions, "expirations": s.expirations,
        }
        for name, s in engine.stats().items()
    }  # fmt: skip
    return json_response({"entries": len(engine), "categories": categories})
