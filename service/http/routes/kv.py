"""Route group ``kv``: the RAG chunk KV cache over HTTP.

A put is ``PUT /v1/kv/chunks/{key}`` with the KV bytes as an
``application/octet-stream`` body and the metadata as JSON in a header (see
:mod:`~semcached.service.http.kv_puts`). Handlers decode the structs of
:mod:`semcached.protocol.kv`, call the :class:`~semcached.service.kv.engine.KvCache`
engine (on a worker thread when it blocks), and encode its answer.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from aiohttp import web

from semcached.errors import BadRequestError, NotFoundError
from semcached.protocol.codes import ErrorCode
from semcached.protocol.headers import (
    JSON,
    KV_META_HEADER,
    KV_SOURCE_HEADER,
    KV_STAGED_PREFIX,
    OCTET_STREAM,
)
from semcached.protocol.kv import (
    ChunkMeta,
    ChunkPutMeta,
    DeviceName,
    HexKey,
    KvDeleted,
    KvGpu,
    KvGpuDevice,
    KvLeasedChunk,
    KvModel,
    KvModels,
    KvPlan,
    KvPlanRequest,
    KvPutResult,
    KvStats,
    KvTierStats,
    LeaseSeconds,
    Transfer,
)
from semcached.service.auth.scopes import Scope
from semcached.service.blocking import run_blocking
from semcached.service.config import Settings
from semcached.service.http.appkeys import (
    BODY_BUFFERS,
    EXECUTOR,
    KV,
    METRICS,
    SETTINGS,
    UPLOADS,
    daemon_context,
)
from semcached.service.http.bodies import UploadBudget
from semcached.service.http.body_buffers import BodyBuffers
from semcached.service.http.decoding import Decoder
from semcached.service.http.jsonio import struct_response
from semcached.service.http.kv_puts import (
    key_or_400,
    parse_put_meta,
    put_from_body,
    put_from_staged_file,
)
from semcached.service.http.kv_replies import leased_reply, meta_fields, meta_header, plan_reply
from semcached.service.http.routing import (
    ERROR_SCHEMA_REF,
    STORE_FULL_REPLY,
    Reply,
    RouteGroup,
    error_reply,
    json_content,
)
from semcached.service.http.tenancy import kv_tenant
from semcached.service.kv.component import install_kv_cache
from semcached.service.kv.engine import KvCache, Plan

__all__ = ["group"]

group = RouteGroup(
    "kv",
    "The RAG chunk KV cache: variants, tiers, leases and reuse plans.",
    responses={
        404: error_reply(
            "No such chunk variant or lease, or the chunk KV cache is disabled (kv_disabled)."
        )
    },
)


@group.on_setup
def _install_engine(app: web.Application) -> None:
    app[KV] = install_kv_cache(daemon_context(app))
    app[UPLOADS] = UploadBudget(app[SETTINGS].kv.max_inflight_upload_bytes, app[METRICS].registry)
    app[BODY_BUFFERS] = BodyBuffers(app[SETTINGS].kv.body_buffer_bytes)


_INLINE_PLAN_CHUNKS = 32

VariantKey = Annotated[
    HexKey,
    msgspec.Meta(
        description="The variant (hash of the prefix keys); default: the newest variant "
        "(DELETE: every variant; PUT: if given, must equal the hash of the prefix)."
    ),
]


@group.on_document
def _bounds(schemas: dict[str, Any], settings: Settings) -> None:
    schemas["KvPlanRequest"]["properties"]["chunks"]["maxItems"] = settings.kv.max_plan_chunks


class VariantQuery(msgspec.Struct):
    variant: VariantKey | None = None


class ReadQuery(msgspec.Struct):
    variant: VariantKey | None = None
    transfer: Annotated[
        Transfer,
        msgspec.Meta(
            description="shm: a shared-memory handle (same host only); cuda: a CUDA IPC "
            "handle on `device` when the chunk is hot, else a shared-memory one."
        ),
    ] = "http"
    device: DeviceName | None = None
    lease_s: LeaseSeconds | None = None


_QUERY_CODES = {"variant": ErrorCode.BAD_KEY, "transfer": ErrorCode.BAD_TRANSFER}
VARIANT_QUERY = Decoder(VariantQuery, codes=_QUERY_CODES)
READ_QUERY = Decoder(ReadQuery, codes=_QUERY_CODES)
PLAN_REQUEST = Decoder(KvPlanRequest, codes={"chunks[]": ErrorCode.BAD_KEY})
_KEY_PARAM = {"name": "key", "in": "path", "required": True, "schema": HexKey}
_META_PARAM = {
    "name": KV_META_HEADER,
    "in": "header",
    "required": True,
    "description": "The put's metadata.",
    "content": {JSON: {"schema": ChunkPutMeta}},
}
_SOURCE_PARAM = {
    "name": KV_SOURCE_HEADER,
    "in": "header",
    "required": False,
    "description": "The bytes are staged in this file of kv.shm_dir (same host only).",
    "schema": {"type": "string", "pattern": f"^shm:{KV_STAGED_PREFIX}[^/]+$"},
}
_VARIANT_LINKS = {
    name: {
        "operationId": operation,
        "parameters": {"key": "$request.path.key", "variant": "$response.body#/variant"},
    }
    for name, operation in (
        ("GetChunk", "get_chunk"),
        ("HeadChunk", "head_chunk"),
        ("DeleteChunk", "delete_chunk"),
    )
}
_META_REPLY_HEADER = {
    KV_META_HEADER: {
        "description": "The variant's metadata.",
        "content": {JSON: {"schema": ChunkMeta}},
    }
}


def _error(description: str, **extra: Any) -> dict[str, Any]:
    """A documented error response of a route (the error document)."""
    return {**json_content({"$ref": ERROR_SCHEMA_REF}, description), **extra}


# --- decoding ----------------------------------------------------------------------------


def _engine(request: web.Request) -> KvCache:
    if not request.app[SETTINGS].kv.enabled:
        raise NotFoundError(ErrorCode.KV_DISABLED, "the chunk KV cache is disabled (kv.enabled)")
    return request.app[KV].get()


def _path_key(request: web.Request) -> bytes:
    return key_or_400(request.match_info["key"], "key")


def _variant(text: str | None) -> bytes | None:
    return None if text is None else key_or_400(text, "variant")


# --- handlers ----------------------------------------------------------------------------


@group.route(
    "PUT",
    "/v1/kv/chunks/{key}",
    summary="Store one variant of a chunk's KV",
    description="The body is the KV tensor in the layout [layers, 2, kv_heads, tokens, "
    f"head_dim], C order; the metadata is JSON (ChunkPutMeta) in the {KV_META_HEADER} "
    f"header. A same-host client may instead stage the bytes in a file {KV_STAGED_PREFIX}* "
    f"of kv.shm_dir, name it in {KV_SOURCE_HEADER}: shm:<name> and send no body. "
    "Acknowledged (201, or 200 when it replaced the same variant) only once durable; "
    "invisible until then.",
    parameters=[_KEY_PARAM, _META_PARAM, _SOURCE_PARAM],
    query=VARIANT_QUERY,
    request_body={"required": True, "content": {OCTET_STREAM: {"schema": {"type": "string"}}}},
    responses={
        201: Reply("Stored.", KvPutResult, links=_VARIANT_LINKS),
        200: Reply("Stored, replacing the same variant.", KvPutResult, links=_VARIANT_LINKS),
        408: _error("body_timeout: the body came too slowly; the connection is closed."),
        409: _error("put_in_progress: the same variant is being stored now; retry."),
        411: _error("length_required: a body without Content-Length."),
        413: _error("blob_too_large: the declared shape exceeds kv.max_blob_bytes."),
        503: _error(
            "uploads_busy: kv.max_inflight_upload_bytes are in flight; retry after "
            "Retry-After seconds.",
            headers={"Retry-After": {"schema": {"type": "integer"}}},
        ),
        507: STORE_FULL_REPLY,
    },
    scope=Scope.KV_WRITE,
)
async def put_chunk(request: web.Request) -> web.Response:
    engine = _engine(request)
    chunk = _path_key(request)
    # Everything the header declares is checked before a byte of the body is read.
    meta = parse_put_meta(request.headers.get(KV_META_HEADER), chunk, engine)
    declared = _variant(VARIANT_QUERY.convert(request.query).variant)
    if declared is not None and declared != meta.variant:
        raise BadRequestError(
            ErrorCode.BAD_VARIANT, "variant is not the hash of the prefix keys", field="variant"
        )
    executor = request.app[EXECUTOR]
    source = request.headers.get(KV_SOURCE_HEADER)
    tenant = kv_tenant(request)
    with request.app[UPLOADS].reserve(meta.nbytes):
        if source is not None:
            result = await run_blocking(
                executor, put_from_staged_file, request.app, meta, source, tenant
            )
        else:
            result = await put_from_body(request, engine, meta, tenant)
    body = KvPutResult(**meta_fields(meta), tiers=result.tiers, evicted=result.evicted)
    return struct_response(body, status=201 if result.created else 200)


@group.route(
    "GET",
    "/v1/kv/chunks/{key}",
    summary="Read one variant's KV",
    description=f"transfer=http (default): the bytes as the body, metadata (ChunkMeta) in "
    f"{KV_META_HEADER}. transfer=shm: JSON with a shared-memory handle pinned by a lease "
    "(same host only). transfer=cuda with device: a CUDA IPC handle in that GPU's tier "
    "when the chunk is hot enough to be promoted there, else a shared-memory handle.",
    parameters=[_KEY_PARAM],
    query=READ_QUERY,
    responses={
        200: {
            "description": "The blob (octet-stream), or the handle (JSON) for transfer=shm "
            "or cuda.",
            "headers": _META_REPLY_HEADER,
            "content": {
                OCTET_STREAM: {"schema": {"type": "string"}},
                JSON: {"schema": KvLeasedChunk},
            },
        },
        404: Reply("No such chunk variant (for this tenant)."),
        429: Reply("transfer=shm: the tenant holds its most leases or pinned bytes."),
    },
    scope=Scope.KV_READ,
)
async def get_chunk(request: web.Request) -> web.Response:
    engine = _engine(request)
    chunk = _path_key(request)
    query = READ_QUERY.convert(request.query)
    variant = _variant(query.variant)
    executor = request.app[EXECUTOR]
    tenant = kv_tenant(request)
    if query.transfer == "cuda" and query.device is None:
        raise BadRequestError(
            ErrorCode.BAD_TRANSFER,
            "transfer=cuda needs device (a GPU UUID or index)",
            field="device",
        )
    if query.transfer != "http":
        device = query.device if query.transfer == "cuda" else None
        if device is not None:
            engine.device_placement(device)  # 400 before any work when it is not ours
        leased = await run_blocking(
            executor,
            lambda: engine.lease(chunk, variant, ttl_s=query.lease_s, device=device, tenant=tenant),
        )
        return struct_response(leased_reply(leased))
    # Without a copy from the host tier: the view pins the blob until it is sent.
    meta, data = await run_blocking(
        executor, lambda: engine.get(chunk, variant, copy=False, tenant=tenant)
    )
    return web.Response(body=data, content_type=OCTET_STREAM, headers=meta_header(meta))


@group.route(
    "HEAD",
    "/v1/kv/chunks/{key}",
    summary="Whether a variant is stored, and its metadata",
    parameters=[_KEY_PARAM],
    query=VARIANT_QUERY,
    responses={
        200: {"description": "Stored; its metadata in a header.", "headers": _META_REPLY_HEADER},
        404: Reply("No such chunk variant (for this tenant)."),
    },
    scope=Scope.KV_READ,
)
async def head_chunk(request: web.Request) -> web.StreamResponse:
    engine = _engine(request)
    chunk = _path_key(request)
    variant = _variant(VARIANT_QUERY.convert(request.query).variant)
    tenant = kv_tenant(request)
    meta = await run_blocking(
        request.app[EXECUTOR], lambda: engine.metadata(chunk, variant, tenant=tenant)
    )
    response = web.StreamResponse(headers=meta_header(meta))
    response.content_type = OCTET_STREAM
    response.content_length = meta.nbytes  # what a GET would send
    await response.prepare(request)
    return response


@group.route(
    "DELETE",
    "/v1/kv/chunks/{key}",
    summary="Remove one variant, or every variant of a chunk",
    parameters=[_KEY_PARAM],
    query=VARIANT_QUERY,
    responses={
        200: Reply("How many variants were removed.", KvDeleted),
        404: Reply("No such chunk variant (for this tenant)."),
        507: STORE_FULL_REPLY,
    },
    scope=Scope.KV_WRITE,
)
async def delete_chunk(request: web.Request) -> web.Response:
    engine = _engine(request)
    chunk = _path_key(request)
    variant = _variant(VARIANT_QUERY.convert(request.query).variant)
    tenant = kv_tenant(request)
    count = await run_blocking(
        request.app[EXECUTOR], lambda: engine.delete(chunk, variant, tenant=tenant)
    )
    if not count:
        raise NotFoundError(ErrorCode.NOT_FOUND, "no such chunk variant")
    return struct_response(KvDeleted(count))


@group.route(
    "DELETE",
    "/v1/kv/leases/{id}",
    summary="Release a lease early (its shared-memory handles become invalid)",
    parameters=[{"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}],
    responses={
        204: Reply("Released."),
        404: Reply("No such lease of this tenant's (released, expired, or another's)."),
    },
    scope=Scope.KV_READ,
)
async def releaselease_reply(request: web.Request) -> web.Response:
    engine = _engine(request)
    # Another tenant's lease is as absent as an expired one: no way to probe for ids.
    if not engine.release(request.match_info["id"], owner=kv_tenant(request).owner):
        raise NotFoundError(ErrorCode.NOT_FOUND, "no such lease (released or expired)")
    return web.Response(status=204)


@group.route(
    "POST",
    "/v1/kv/plan",
    summary="Plan the reuse of a prompt's chunks",
    description="For each chunk in prompt order: hit or miss, the chosen variant, the "
    "Cache-Craft metrics (beta, gamma, CCI, CFO), the token positions to recompute, the "
    "RoPE shift and how to fetch the bytes. Unknown chunks are misses, not errors.",
    body=PLAN_REQUEST,
    body_description="The prompt's chunks.",
    responses={
        200: Reply("The plan.", KvPlan),
        429: Reply("shm: the tenant holds its most leases."),
    },
    scope=Scope.KV_READ,
)
async def plan(request: web.Request) -> web.Response:
    engine = _engine(request)
    body = await PLAN_REQUEST.read(request)
    max_chunks = request.app[SETTINGS].kv.max_plan_chunks
    if len(body.chunks) > max_chunks:
        raise BadRequestError(
            ErrorCode.INVALID_FIELD,
            f"chunks: expected a list of at most {max_chunks} keys",
            field="chunks",
        )
    keys = [key_or_400(k, "chunks") for k in body.chunks]
    tenant = kv_tenant(request)

    def make_plan() -> Plan:
        return engine.plan(
            body.model,
            keys,
            chunk_tokens=body.chunk_tokens,
            start=body.start,
            shm=body.shm,
            device=body.device,
            lease_ttl_s=body.lease_s,
            tenant=tenant,
        )

    # Without shm a plan touches memory only (no LMDB, no copies): about 30 us a chunk,
    # less than the two thread wake-ups a hand-off to the pool costs. Small plans run
    # here; large ones, shm plans (which may promote blobs from disk) and plans that
    # may ask the shared tier (Redis) go to the pool.
    if body.device is not None:
        engine.device_placement(body.device)  # 400 before any work when it is not ours
    inline = engine.shared is None and not body.shm and body.device is None
    if inline and len(keys) <= _INLINE_PLAN_CHUNKS:
        result = make_plan()
    else:
        result = await run_blocking(request.app[EXECUTOR], make_plan)
    return struct_response(plan_reply(result))


@group.route(
    "GET",
    "/v1/kv/stats",
    summary="Counters per tier",
    description="Over every tenant's chunks: an operator's view, hence the admin scope.",
    responses={200: Reply("Per tier: bytes, entries, hits, misses, moves.", KvStats)},
    scope=Scope.ADMIN,
)
async def kv_stats(request: web.Request) -> web.Response:
    engine = _engine(request)
    budgets = engine.budgets()
    tiers = {
        name: KvTierStats(
            bytes=s.bytes,
            entries=s.entries,
            budget_bytes=budgets[name],
            hits=s.hits,
            misses=s.misses,
            promotions=s.promotions,
            demotions=s.demotions,
            evictions=s.evictions,
            written_bytes=s.written_bytes,
            errors=s.errors,
        )
        for name, s in engine.stats().items()
    }
    devices = [
        KvGpuDevice(
            index=d.device.index,
            uuid=d.device.uuid,
            name=d.device.name,
            total_bytes=d.device.total_bytes,
            slabs=d.arena.slabs,
            slab_bytes=d.arena.slab_bytes,
            allocated_bytes=d.arena.allocated_bytes,
        )
        for d in engine.devices
    ]
    gpu = KvGpu(enabled=bool(devices), reason=engine.gpu_off_reason, devices=devices)
    return struct_response(KvStats(tiers, engine.variants, engine.live_leases, gpu))


@group.route(
    "GET",
    "/v1/kv/models",
    summary="The models whose KV the daemon accepts",
    responses={200: Reply("Models by id.", KvModels)},
    scope=Scope.KV_READ,
)
async def kv_models(request: web.Request) -> web.Response:
    engine = _engine(request)
    models = {
        m.name: KvModel(m.layers, m.kv_heads, m.head_dim, m.alpha, m.tokenizer)
        for m in engine.models.values()
    }
    return struct_response(KvModels(models))
