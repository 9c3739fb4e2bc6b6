"""Route group ``qdrant``: the Qdrant REST calls of LiteLLM's ``qdrant-semantic`` cache.

LiteLLM's proxy takes only its built-in cache types; its ``qdrant-semantic`` cache
(``litellm/caching/qdrant_semantic_cache.py``) checks that its collection exists,
creates it (vector size, Cosine) and a keyword payload index on its cache-key field,
upserts points (vector + payload) and searches with ``limit: 1`` filtered on that
field. These routes serve exactly that from the semantic cache, with the caller's
vectors (vector-in lookups and inserts):

- a collection ``C`` is the namespace ``<qdrant.namespace_prefix>C``, its points
  entries of the ``qdrant.category`` category; its vector size must be the daemon's
  dimension, its distance Cosine (``score`` is the cosine similarity);
- its one keyword payload index names the field whose value is a point's partition,
  and a search must filter on it (must/match/value): points never match across;
- a point's payload is stored as the entry's response and answered as ``payload``;
  the same id upserted again (same partition) replaces the point;
- a search answers the best point only (at most one, whatever ``limit``), and only
  at or above the category's ``min_threshold`` and the request's ``score_threshold``.

Tokens: Qdrant's ``api-key`` header carries one (as does ``Authorization``); reading
needs ``semantic:read``, writing ``semantic:write``, and the namespace must be the
token's. Off unless ``qdrant.enabled``.
"""

from __future__ import annotations

import re
import time
from typing import Any

import msgspec
import orjson
from aiohttp import web

from semcached.errors import BadRequestError, ConfigError, ConflictError, NotFoundError
from semcached.index.collections import Collection, CollectionStore
from semcached.protocol.codes import ErrorCode
from semcached.service.auth.scopes import Scope
from semcached.service.blocking import run_blocking
from semcached.service.config import Settings
from semcached.service.http.appkeys import COMPONENTS, DATA_DIR, EXECUTOR, SEMANTIC, SETTINGS
from semcached.service.http.decoding import Decoder
from semcached.service.http.qdrant_wire import (
    CreateCollection,
    CreateIndex,
    SearchPoints,
    UpsertPoints,
    canonical_id,
    ok,
    partition_filter,
    qdrant_errors,
)
from semcached.service.http.routing import Reply, RouteGroup
from semcached.service.http.tenancy import namespace, semantic_quota
from semcached.service.http.validation import to_vector
from semcached.service.lifecycle import FunctionComponent, Slot
from semcached.service.semantic.engine import Insert, Lookup, SemanticCache

__all__ = ["group"]


def _enabled(settings: Settings) -> bool:
    return settings.qdrant.enabled


group = RouteGroup(
    "qdrant",
    "The subset of Qdrant's REST API that LiteLLM's qdrant-semantic cache calls, over "
    "the semantic cache with the caller's vectors (a collection is a namespace).",
    enabled=_enabled,
)

COLLECTIONS: web.AppKey[Slot[CollectionStore]] = web.AppKey("qdrant_collections")
_NAME = re.compile(r"^[A-Za-z0-9_.:\-]+$")
_NAME_PARAM = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
LOWEST_SCORE = -1.0
"""A search without ``score_threshold`` asks for the best point however far (clamped
by the engine to the category's ``min_threshold``)."""

CREATE = Decoder(CreateCollection)
INDEX = Decoder(CreateIndex)
UPSERT = Decoder(UpsertPoints, nested_field="payload")
SEARCH = Decoder(SearchPoints)


@group.on_setup
def _install(app: web.Application) -> None:
    settings = app[SETTINGS]
    if SEMANTIC not in app:
        raise ConfigError("qdrant.enabled needs the semantic route group")
    if settings.qdrant.category not in settings.categories.policies:
        raise ConfigError(f"qdrant.category: no category {settings.qdrant.category!r}")
    slot: Slot[CollectionStore] = Slot("collection store")
    app[COLLECTIONS] = slot
    data_dir = app[DATA_DIR]

    async def open_store() -> None:
        slot.set(CollectionStore(data_dir.env))

    async def close_store() -> None:
        slot.set(None)

    app[COMPONENTS].add(FunctionComponent("qdrant collections", open_store, close_store))


def _namespace(request: web.Request) -> tuple[str, str]:
    """The path's collection name and its namespace (400 if it makes no valid one)."""
    name = request.match_info["name"]
    space = request.app[SETTINGS].qdrant.namespace_prefix + name
    if not _NAME.match(name) or len(space) > 128:
        raise BadRequestError(
            ErrorCode.INVALID_FIELD,
            f"collection name {name!r}: letters, digits, _ . : - only, and short enough "
            "that the namespace has at most 128 characters",
            field="name",
        )
    return name, namespace(request, space)


def _collection(request: web.Request, name: str) -> Collection:
    found = request.app[COLLECTIONS].get().get(name)
    if found is None:
        raise NotFoundError(ErrorCode.NOT_FOUND, f"Not found: Collection `{name}` doesn't exist!")
    return found


def _engine(request: web.Request) -> SemanticCache:
    return request.app[SEMANTIC].get()


async def _write(request: web.Request, fn: Any, *args: Any) -> Any:
    return await run_blocking(request.app[EXECUTOR], fn, *args)


def _result(description: str) -> Reply:
    return Reply(description, {"type": "object", "required": ["result", "status", "time"]})


_ERRORS: dict[int | str, Reply | dict[str, Any]] = {
    404: Reply("No such collection: Qdrant's {status: {error}, time}.", {"type": "object"}),
}


@group.route(
    "GET",
    "/collections/{name}/exists",
    summary="Whether the collection exists (Qdrant).",
    parameters=[_NAME_PARAM],
    responses={200: _result("{result: {exists}}.")},
    operation_id="qdrant_collection_exists",
    scope=Scope.SEMANTIC_READ,
)
@qdrant_errors
async def collection_exists(request: web.Request) -> web.Response:
    started = time.perf_counter()
    name, _ = _namespace(request)
    exists = request.app[COLLECTIONS].get().get(name) is not None
    return ok({"exists": exists}, started)


@group.route(
    "PUT",
    "/collections/{name}",
    summary="Create a collection: its vector size must be the daemon's dimension, its "
    "distance Cosine (Qdrant).",
    parameters=[_NAME_PARAM],
    body=CREATE,
    responses={
        200: _result("{result: true}."),
        409: {"description": "The collection exists."},
    },
    operation_id="qdrant_create_collection",
    scope=Scope.SEMANTIC_WRITE,
)
@qdrant_errors
async def create_collection(request: web.Request) -> web.Response:
    started = time.perf_counter()
    name, _ = _namespace(request)
    body = await CREATE.read(request)
    dim = _engine(request).dim
    if body.vectors.distance != "Cosine":
        raise BadRequestError(
            ErrorCode.INVALID_FIELD,
            f"vectors.distance: only Cosine is served, not {body.vectors.distance!r}",
            field="distance",
        )
    if body.vectors.size != dim:
        raise BadRequestError(
            ErrorCode.INVALID_VECTOR,
            f"vectors.size: this daemon's vectors have {dim} dimensions, not "
            f"{body.vectors.size} (its embedding model's, or embedding.dim)",
            field="size",
        )
    store = request.app[COLLECTIONS].get()
    if not await _write(request, store.create, name, Collection(dim, "Cosine", time.time())):
        raise ConflictError(  # Qdrant's 409 and words; the code stays in the daemon's log
            ErrorCode.INVALID_FIELD, f"Wrong input: Collection `{name}` already exists!"
        )
    return ok(True, started)


@group.route(
    "GET",
    "/collections/{name}",
    summary="A collection's description (Qdrant).",
    parameters=[_NAME_PARAM],
    responses={200: _result("{result: {status, config: {params: {vectors}}, ...}}."), **_ERRORS},
    operation_id="qdrant_get_collection",
    scope=Scope.SEMANTIC_READ,
)
@qdrant_errors
async def get_collection(request: web.Request) -> web.Response:
    started = time.perf_counter()
    name, _ = _namespace(request)
    found = _collection(request, name)
    schema = {}
    if found.partition_field:
        schema[found.partition_field] = {"data_type": "keyword", "params": {"type": "keyword"}}
    info = {
        "status": "green",
        "optimizer_status": "ok",
        "segments_count": 1,
        "config": {
            "params": {
                "vectors": {"size": found.dim, "distance": found.distance},
                "shard_number": 1,
                "replication_factor": 1,
                "write_consistency_factor": 1,
                "on_disk_payload": True,
            },
        },
        "payload_schema": schema,
    }
    return ok(info, started)


@group.route(
    "DELETE",
    "/collections/{name}",
    summary="Delete a collection and its points (Qdrant).",
    parameters=[_NAME_PARAM],
    responses={200: _result("{result: true}, or false when there was none.")},
    operation_id="qdrant_delete_collection",
    scope=Scope.SEMANTIC_WRITE,
)
@qdrant_errors
async def delete_collection(request: web.Request) -> web.Response:
    started = time.perf_counter()
    name, space = _namespace(request)
    await _engine(request).purge(space)
    existed = await _write(request, request.app[COLLECTIONS].get().delete, name)
    return ok(existed, started)


@group.route(
    "PUT",
    "/collections/{name}/index",
    summary="Create the collection's keyword payload index: its field's value is a "
    "point's partition (Qdrant; one per collection, before any point).",
    parameters=[_NAME_PARAM],
    body=INDEX,
    responses={200: _result("{result: {operation_id, status}}."), **_ERRORS},
    operation_id="qdrant_create_index",
    scope=Scope.SEMANTIC_WRITE,
)
@qdrant_errors
async def create_index(request: web.Request) -> web.Response:
    started = time.perf_counter()
    name, _ = _namespace(request)
    body = await INDEX.read(request)
    schema = body.field_schema
    kind = schema if isinstance(schema, str) else schema.get("type")
    if kind != "keyword":
        raise BadRequestError(
            ErrorCode.INVALID_FIELD,
            f"field_schema: only keyword indexes are served, not {kind!r}",
            field="field_schema",
        )
    _collection(request, name)

    def index(found: Collection) -> Collection:
        if found.partition_field == body.field_name:
            return found
        if found.partition_field or found.has_points:
            why = (
                f"it has one on {found.partition_field!r}"
                if found.partition_field
                else "it has points"
            )
            raise BadRequestError(
                ErrorCode.INVALID_FIELD,
                f"field_name: the collection's one keyword index partitions its points; "
                f"{why}, so it cannot index {body.field_name!r}",
                field="field_name",
            )
        return msgspec.structs.replace(found, partition_field=body.field_name)

    # Checked and changed in one transaction: a concurrent upsert's mark is never lost.
    if await _write(request, request.app[COLLECTIONS].get().update, name, index) is None:
        _collection(request, name)  # deleted meanwhile: its 404
    return ok({"operation_id": 0, "status": "completed"}, started)


@group.route(
    "PUT",
    "/collections/{name}/points",
    summary="Upsert points: each is an entry (its payload the response) in the "
    "collection's namespace and its partition field's partition (Qdrant).",
    parameters=[_NAME_PARAM],
    body=UPSERT,
    responses={200: _result("{result: {operation_id, status}}."), **_ERRORS},
    operation_id="qdrant_upsert_points",
    scope=Scope.SEMANTIC_WRITE,
)
@qdrant_errors
async def upsert_points(request: web.Request) -> web.Response:
    started = time.perf_counter()
    name, space = _namespace(request)
    body = await UPSERT.read(request)
    found = _collection(request, name)
    settings = request.app[SETTINGS]
    quota = semantic_quota(request)
    inserts = []
    for point in body.points:
        point_id = canonical_id(point.id)
        payload = point.payload or {}
        partition = payload.get(found.partition_field, "") if found.partition_field else ""
        if not isinstance(partition, str):
            raise BadRequestError(
                ErrorCode.INVALID_FIELD,
                f"payload.{found.partition_field}: the keyword index's value must be text",
                field="payload",
            )
        inserts.append(
            Insert(
                namespace=space,
                # The same id (in its partition) replaces the point, as an upsert does.
                prompt=f"qdrant point {point_id}",
                response=orjson.dumps({"id": point_id, "payload": payload}),
                category=settings.qdrant.category,
                partition=partition,
                vector=to_vector(point.vector),
                quota=quota,
            )
        )
    await _engine(request).insert_many(inserts)
    if not found.has_points:  # index creation checks it: never partition points already there
        await _write(request, request.app[COLLECTIONS].get().update, name, _with_points)
    return ok({"operation_id": 0, "status": "completed"}, started)


def _with_points(found: Collection) -> Collection:
    return msgspec.structs.replace(found, has_points=True)


@group.route(
    "POST",
    "/collections/{name}/points/search",
    summary="The point nearest a vector in the filter's partition: at most one, scored "
    "by cosine similarity (Qdrant).",
    parameters=[_NAME_PARAM],
    body=SEARCH,
    responses={200: _result("{result: [{id, version, score, payload, vector}]}."), **_ERRORS},
    operation_id="qdrant_search_points",
    scope=Scope.SEMANTIC_READ,
)
@qdrant_errors
async def search_points(request: web.Request) -> web.Response:
    started = time.perf_counter()
    name, space = _namespace(request)
    body = await SEARCH.read(request)
    found = _collection(request, name)
    partition = partition_filter(body.filter, found.partition_field)
    if body.offset > 0:  # only the best point is known, and it is at offset 0
        return ok([], started)
    threshold = LOWEST_SCORE if body.score_threshold is None else body.score_threshold
    result = await _engine(request).lookup(
        Lookup(
            namespace=space,
            vector=to_vector(body.vector),
            category=request.app[SETTINGS].qdrant.category,
            partition=partition,
            threshold=threshold,
        )
    )
    if result.document is None or result.similarity is None:
        return ok([], started)
    stored = orjson.loads(result.document.response)
    payload: dict[str, Any] | None = stored["payload"]
    if body.with_payload is False:
        payload = None
    elif isinstance(body.with_payload, list):
        payload = {k: v for k, v in stored["payload"].items() if k in body.with_payload}
    point = {
        "id": stored["id"],
        "version": 0,
        "score": result.similarity,
        "payload": payload,
        "vector": None,
    }
    return ok([point], started)
