"""Route group ``kv``: the RAG chunk KV cache over HTTP.

Wire format of a put: ``PUT /v1/kv/chunks/{key}`` with the KV bytes as an
``application/octet-stream`` body (``Content-Length`` required) and the metadata as
JSON in the ``X-Semcached-KV-Meta`` header (a header, not a multipart part, so the
body is the blob as it is and the daemon reads it with one copy; the header's size
limit is ``kv.max_meta_bytes``). Arrays in the metadata may be JSON lists or base64
of little-endian float32. Handlers parse and validate, call the
:class:`~semcached.service.kv.engine.KvCache` engine on a worker thread, and
serialise.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import orjson
from aiohttp import web

from semcached.errors import ApiError, BadRequestError, NotFoundError, PayloadTooLargeError
from semcached.index.kv_meta import VariantMeta
from semcached.index.kv_tiers import ShmHandle
from semcached.protocol.keys import KeyFormatError, parse_key, variant_key
from semcached.service.http.appkeys import EXECUTOR, KV, SETTINGS, daemon_context
from semcached.service.http.jsonio import json_response, read_json_object
from semcached.service.http.routing import RouteGroup, json_content
from semcached.service.http.validation import optional_float, reject_unknown, require_str
from semcached.service.kv.component import install_kv_cache
from semcached.service.kv.engine import ChunkPlan, KvCache, Lease, Plan, PutResult

__all__ = ["META_HEADER", "PUT_SEGMENT_PREFIX", "SOURCE_HEADER", "group"]

group = RouteGroup("kv", "The RAG chunk KV cache: variants, tiers, leases and reuse plans.")


@group.on_setup
def _install_engine(app: web.Application) -> None:
    app[KV] = install_kv_cache(daemon_context(app))


META_HEADER = "X-Semcached-KV-Meta"
SOURCE_HEADER = "X-Semcached-KV-Source"
PUT_SEGMENT_PREFIX = "semcached-put-"
_READ_CHUNK = 1 << 20
_INLINE_PLAN_CHUNKS = 32

T = TypeVar("T")


async def run_blocking(app: web.Application, fn: Callable[..., T], *args: object) -> T:
    """The engine blocks (commits, copies): run it on the daemon's worker threads."""
    return await asyncio.get_running_loop().run_in_executor(app[EXECUTOR], fn, *args)


# --- schemas ---------------------------------------------------------------------------

_KEY = {"type": "string", "pattern": "^[0-9a-f]{32}$"}
_FLOATS = {
    "description": "A list of numbers, or base64 of little-endian float32.",
    "oneOf": [{"type": "array", "items": {"type": "number"}}, {"type": "string"}],
}
PUT_META = group.schema(
    "KvPutMeta",
    {
        "description": f"The JSON carried in the {META_HEADER} header of a put.",
        "type": "object",
        "required": ["model", "dtype", "shape"],
        "additionalProperties": False,
        "properties": {
            "model": {"type": "string", "description": "A model the daemon knows (kv_models)."},
            "dtype": {"enum": ["float16", "bfloat16", "float32"]},
            "shape": {
                "type": "array",
                "items": {"type": "integer", "minimum": 1},
                "minItems": 5,
                "maxItems": 5,
                "description": "[layers, 2, kv_heads, tokens, head_dim]; keys after RoPE.",
            },
            "prefix": {
                "type": "array",
                "items": _KEY,
                "description": "Ordered keys of the chunks the KV was computed after "
                "(empty: right after the system prompt).",
            },
            "prefix_tokens": {"type": "array", "items": {"type": "integer", "minimum": 1}},
            "rope_base": {"type": "integer", "minimum": 0, "description": "First position."},
            "rope": {"type": "object", "description": "RoPE parameters (theta, scaling)."},
            "stats": {
                "type": "object",
                "additionalProperties": False,
                "description": "Cache-Craft statistics, layer-averaged (zeros when absent).",
                "properties": {
                    "inter": {**_FLOATS, "description": "Per prefix chunk: summed attention."},
                    "intra": {"type": "number", "minimum": 0},
                    "token_scores": {**_FLOATS, "description": "Per token: inter-attention."},
                },
            },
        },
    },
)
VARIANT = group.schema(
    "KvVariant",
    {
        "type": "object",
        "properties": {
            k: {}
            for k in (
                "key", "variant", "model", "dtype", "shape", "tokens", "nbytes", "prefix",
                "prefix_tokens", "rope_base", "rope", "created_at", "hits", "last_access",
            )
        },
    },
)  # fmt: skip
_SHM = {
    "type": ["object", "null"],
    "properties": {
        "segment": {"type": "string", "description": "A file in the daemon's shm_dir."},
        "offset": {"type": "integer"},
        "length": {"type": "integer"},
    },
}
LEASE = group.schema(
    "KvLease",
    {
        "type": ["object", "null"],
        "description": "Pins the handed-out shared memory until released or expired.",
        "properties": {
            "id": {"type": "string"},
            "expires_at": {"type": "number", "description": "Unix time."},
            "ttl_s": {"type": "number"},
        },
    },
)
PLAN_REQUEST = group.schema(
    "KvPlanRequest",
    {
        "type": "object",
        "required": ["model", "chunks"],
        "additionalProperties": False,
        "properties": {
            "model": {"type": "string"},
            "chunks": {"type": "array", "items": _KEY, "description": "In prompt order."},
            "chunk_tokens": {"type": "array", "items": {"type": "integer", "minimum": 1}},
            "start": {"type": "integer", "minimum": 0, "description": "First chunk's position."},
            "shm": {"type": "boolean", "description": "Hand out pinned shared-memory handles."},
            "lease_s": {"type": "number", "exclusiveMinimum": 0},
        },
    },
)
PLAN = group.schema(
    "KvPlan",
    {
        "type": "object",
        "properties": {
            "model": {"type": "string"},
            "hits": {"type": "integer"},
            "misses": {"type": "integer"},
            "recompute_tokens": {"type": "integer"},
            "lease": LEASE,
            "chunks": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "key": _KEY, "hit": {"type": "boolean"},
                        "variant": {"type": ["string", "null"]},
                        "exact_prefix": {"type": "boolean"},
                        "tokens": {"type": ["integer", "null"]},
                        "position": {"type": ["integer", "null"]},
                        "rope_base": {"type": ["integer", "null"]},
                        "rope_shift": {"type": ["integer", "null"]},
                        "beta": {"type": "number"}, "gamma": {"type": "number"},
                        "beta_prime": {"type": "number"}, "cci": {"type": "number"},
                        "cfo": {"type": "number"},
                        "recompute": {"type": "array", "items": {"type": "integer"}},
                        "fetch": {"type": ["object", "null"]},
                    },
                },
            },
        },
    },
)  # fmt: skip
TIER_STATS = {
    "type": "object",
    "properties": {
        k: {"type": "integer"}
        for k in (
            "bytes", "entries", "budget_bytes", "hits", "misses", "promotions", "demotions",
            "evictions",
        )
    },
}  # fmt: skip
STATS = group.schema(
    "KvStats",
    {
        "type": "object",
        "properties": {
            "tiers": {"type": "object", "additionalProperties": TIER_STATS},
            "variants": {"type": "integer"},
            "leases": {"type": "integer"},
        },
    },
)
_KEY_PARAM = {"name": "key", "in": "path", "required": True, "schema": _KEY}
_VARIANT_PARAM = {
    "name": "variant",
    "in": "query",
    "required": False,
    "schema": _KEY,
    "description": "The variant (hash of the prefix keys); default: the newest variant "
    "(for DELETE: every variant).",
}


# --- parsing ---------------------------------------------------------------------------


def _engine(request: web.Request) -> KvCache:
    if not request.app[SETTINGS].kv.enabled:
        raise NotFoundError("kv_disabled", "the chunk KV cache is disabled (kv.enabled)")
    return request.app[KV].get()


def _key(text: str, field: str) -> bytes:
    try:
        return parse_key(text)
    except KeyFormatError as exc:
        raise BadRequestError("bad_key", str(exc), field=field) from None


def _path_key(request: web.Request) -> bytes:
    return _key(request.match_info["key"], "key")


def _variant_param(request: web.Request) -> bytes | None:
    text = request.query.get("variant")
    return None if text is None else _key(text, "variant")


def _floats(value: Any, field: str) -> Any:
    if isinstance(value, str):
        try:
            raw = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise BadRequestError(
                "invalid_meta", f"{field}: not valid base64", field=field
            ) from None
        if len(raw) % 4:
            raise BadRequestError(
                "invalid_meta", f"{field}: base64 must hold whole float32 values", field=field
            )
        return np.frombuffer(raw, dtype="<f4")
    if isinstance(value, list) and all(
        isinstance(x, int | float) and not isinstance(x, bool) for x in value
    ):
        return value
    raise BadRequestError(
        "invalid_meta", f"{field}: expected a list of numbers or base64", field=field
    )


_META_FIELDS = ("model", "dtype", "shape", "prefix", "prefix_tokens", "rope_base", "rope", "stats")


def parse_put_meta(raw: str | None, chunk: bytes, created_at: float) -> VariantMeta:
    """The metadata header of a put, validated into a :class:`VariantMeta`."""
    if raw is None:
        raise BadRequestError("missing_meta", f"the {META_HEADER} header is required")
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequestError("invalid_json", f"{META_HEADER} is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise BadRequestError("invalid_json", f"{META_HEADER} must be a JSON object")
    reject_unknown(doc, _META_FIELDS)
    model = require_str(doc, "model", max_len=256)
    prefix_hex = doc.get("prefix", [])
    if not isinstance(prefix_hex, list):
        raise BadRequestError("invalid_meta", "prefix: expected a list of keys", field="prefix")
    prefix = tuple(_key(k, "prefix") for k in prefix_hex)
    stats = doc.get("stats") or {}
    if not isinstance(stats, dict):
        raise BadRequestError("invalid_meta", "stats: expected an object", field="stats")
    reject_unknown(stats, ("inter", "intra", "token_scores"))
    shape = doc.get("shape")
    if not (
        isinstance(shape, list)
        and len(shape) == 5
        and all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in shape)
    ):
        raise BadRequestError(
            "bad_shape", "shape: expected [layers, 2, kv_heads, tokens, head_dim]", field="shape"
        )
    tokens = shape[3]
    prefix_tokens = doc.get("prefix_tokens")
    if prefix_tokens is None and not prefix:
        prefix_tokens = []
    rope = doc.get("rope", {})
    rope_base = doc.get("rope_base", 0)
    try:
        if not isinstance(rope, dict):
            raise ValueError("rope: expected an object")
        if not isinstance(prefix_tokens, list):
            raise ValueError("prefix_tokens: expected one token count per prefix chunk")
        if not isinstance(rope_base, int) or isinstance(rope_base, bool):
            raise ValueError("rope_base: expected an integer")
        intra = stats.get("intra", 0.0)
        if isinstance(intra, bool) or not isinstance(intra, int | float):
            raise ValueError("stats.intra: expected a number")
        return VariantMeta(
            chunk=chunk,
            variant=variant_key(prefix),
            model=model,
            dtype=str(doc.get("dtype")),
            shape=tuple(shape),
            prefix=prefix,
            prefix_tokens=tuple(prefix_tokens),
            rope_base=rope_base,
            rope=rope,
            inter=_floats(stats.get("inter", [0.0] * len(prefix)), "stats.inter"),
            intra=float(intra),
            token_scores=_floats(stats.get("token_scores", [0.0] * tokens), "stats.token_scores"),
            created_at=created_at,
        )
    except (ValueError, TypeError) as exc:
        raise BadRequestError("invalid_meta", str(exc)) from None


def _meta_json(meta: VariantMeta) -> dict[str, Any]:
    return {
        "key": meta.chunk.hex(),
        "variant": meta.variant.hex(),
        "model": meta.model,
        "dtype": meta.dtype,
        "shape": list(meta.shape),
        "tokens": meta.tokens,
        "nbytes": meta.nbytes,
        "prefix": [k.hex() for k in meta.prefix],
        "prefix_tokens": list(meta.prefix_tokens),
        "rope_base": meta.rope_base,
        "rope": meta.rope,
        "created_at": meta.created_at,
        "hits": meta.hits,
        "last_access": meta.last_access,
    }


def _handle_json(handle: ShmHandle | None) -> dict[str, Any] | None:
    if handle is None:
        return None
    return {"segment": handle.segment, "offset": handle.offset, "length": handle.length}


def _lease_json(lease: Lease | None) -> dict[str, Any] | None:
    if lease is None:
        return None
    return {"id": lease.id, "expires_at": lease.expires_at, "ttl_s": lease.ttl_s}


def _chunk_url(meta: VariantMeta) -> str:
    return f"/v1/kv/chunks/{meta.chunk.hex()}?variant={meta.variant.hex()}"


def _plan_chunk_json(c: ChunkPlan) -> dict[str, Any]:
    d = c.decision
    fetch = None
    if c.meta is not None:
        fetch = {
            "tier": c.tier,
            "http": _chunk_url(c.meta),
            "nbytes": c.meta.nbytes,
            "dtype": c.meta.dtype,
            "shape": list(c.meta.shape),
            "shm": _handle_json(c.handle),
        }
    return {
        "key": d.key.hex(),
        "hit": d.hit,
        "variant": None if d.variant is None else d.variant.hex(),
        "exact_prefix": d.exact_prefix,
        "tokens": c.tokens,
        "position": c.position,
        "rope_base": None if c.meta is None else c.meta.rope_base,
        "rope_shift": c.rope_shift,
        "beta": d.beta,
        "gamma": d.gamma,
        "beta_prime": d.beta_prime,
        "cci": d.cci,
        "cfo": d.cfo,
        "recompute": d.recompute.tolist(),
        "fetch": fetch,
    }


async def _read_blob(request: web.Request, limit: int) -> bytearray:
    """The body into one buffer of the announced length (one copy), or a 4xx."""
    length = request.content_length
    if length is None:
        raise ApiError("length_required", "a put needs a Content-Length", status=411)
    if length > limit:
        raise PayloadTooLargeError(
            "blob_too_large", f"a blob of {length} bytes exceeds the limit of {limit}"
        )
    buffer = bytearray(length)
    view = memoryview(buffer)
    filled = 0
    while filled < length:
        chunk = await request.content.read(min(_READ_CHUNK, length - filled))
        if not chunk:
            raise BadRequestError(
                "truncated_body", f"the body ended after {filled} of {length} bytes"
            )
        view[filled : filled + len(chunk)] = chunk
        filled += len(chunk)
    return buffer


def _put_from_shm(app: web.Application, meta: VariantMeta, source: str) -> PutResult:
    """A put whose bytes a same-host client staged in a file of ``kv.shm_dir``.

    The daemon reads the file (one copy, no socket) and stores it. Only regular files
    named ``semcached-put-*`` are read: never the daemon's own arena, never a path
    outside the directory. It reads rather than maps the file: a client truncating a
    mapped file would kill the daemon with SIGBUS.
    """
    settings = app[SETTINGS].kv
    segment = source.removeprefix("shm:")
    if (
        not settings.shm
        or source == segment
        or not segment.startswith(PUT_SEGMENT_PREFIX)
        or "/" in segment
    ):
        raise BadRequestError(
            "bad_source",
            f"{SOURCE_HEADER} must be shm:{PUT_SEGMENT_PREFIX}<name> with kv.shm enabled",
        )
    try:
        blob = read_staged_file(settings.shm_dir / segment, meta.nbytes)
    except OSError as exc:
        raise BadRequestError(
            "shm_source_unavailable", f"cannot read the staged blob {segment!r}: {exc}"
        ) from None
    if blob is None:
        raise BadRequestError(
            "length_mismatch",
            f"shape {list(meta.shape)} of {meta.dtype} is {meta.nbytes} bytes; the staged "
            "file is not a regular file of that length",
        )
    return app[KV].get().put(meta, blob)


def read_staged_file(path: Path, nbytes: int) -> bytearray | None:
    """The bytes of a regular file of exactly ``nbytes`` bytes, or None."""
    # O_NONBLOCK: a FIFO planted under the name must not hang the worker thread.
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size != nbytes:
            return None
        blob = bytearray(nbytes)
        view = memoryview(blob)
        filled = 0
        while filled < nbytes:
            n = os.preadv(fd, [view[filled:]], filled)
            if n == 0:  # truncated meanwhile
                return None
            filled += n
        return blob
    finally:
        os.close(fd)


# --- handlers ----------------------------------------------------------------------------


@group.route(
    "PUT",
    "/v1/kv/chunks/{key}",
    summary="Store one variant of a chunk's KV",
    description=f"The body is the KV tensor in the layout [layers, 2, kv_heads, tokens, "
    f"head_dim], C order; the metadata is JSON (KvPutMeta) in the {META_HEADER} header. "
    f"A same-host client may instead stage the bytes in a file {PUT_SEGMENT_PREFIX}* of "
    f"kv.shm_dir, name it in {SOURCE_HEADER}: shm:<name> and send no body. "
    "Acknowledged (201, or 200 when it replaced the same variant) only once durable; "
    "invisible until then.",
    parameters=[
        _KEY_PARAM,
        {**_VARIANT_PARAM, "description": "If given, must equal the hash of the prefix."},
    ],
    request_body={
        "required": True,
        "content": {"application/octet-stream": {"schema": {"type": "string"}}},
    },
    responses={
        201: json_content(VARIANT, "Stored."),
        200: json_content(VARIANT, "Stored, replacing the same variant."),
    },
)
async def put_chunk(request: web.Request) -> web.Response:
    engine = _engine(request)
    chunk = _path_key(request)
    meta = parse_put_meta(request.headers.get(META_HEADER), chunk, engine.now())
    declared = _variant_param(request)
    if declared is not None and declared != meta.variant:
        raise BadRequestError(
            "bad_variant", "variant is not the hash of the prefix keys", field="variant"
        )
    source = request.headers.get(SOURCE_HEADER)
    if source is not None:
        result = await run_blocking(request.app, _put_from_shm, request.app, meta, source)
    else:
        limit = min(engine.max_blob_bytes, engine.disk.budget_bytes)
        blob = await _read_blob(request, limit)
        result = await run_blocking(request.app, engine.put, meta, blob)
    body = _meta_json(meta) | {"tiers": list(result.tiers), "evicted": result.evicted}
    return json_response(body, status=201 if result.created else 200)


@group.route(
    "GET",
    "/v1/kv/chunks/{key}",
    summary="Read one variant's KV",
    description=f"transfer=http (default): the bytes as the body, metadata in {META_HEADER}. "
    "transfer=shm: JSON with a shared-memory handle pinned by a lease (same host only).",
    parameters=[
        _KEY_PARAM,
        _VARIANT_PARAM,
        {"name": "transfer", "in": "query", "schema": {"enum": ["http", "shm"]}},
        {"name": "lease_s", "in": "query", "schema": {"type": "number"}},
    ],
    responses={
        200: {
            "description": "The blob (octet-stream), or the handle (JSON) for transfer=shm.",
            "content": {
                "application/octet-stream": {"schema": {"type": "string"}},
                "application/json": {"schema": {"type": "object"}},
            },
        }
    },
)
async def get_chunk(request: web.Request) -> web.Response:
    engine = _engine(request)
    chunk, variant = _path_key(request), _variant_param(request)
    transfer = request.query.get("transfer", "http")
    if transfer == "shm":
        lease_s = optional_float(
            {"lease_s": _number(request.query.get("lease_s"))}, "lease_s", low=1e-3, high=1e9
        )
        leased = await run_blocking(
            request.app, lambda: engine.lease(chunk, variant, ttl_s=lease_s)
        )
        return json_response(
            _meta_json(leased.meta)
            | {"shm": _handle_json(leased.handle), "lease": _lease_json(leased.lease)}
        )
    if transfer != "http":
        raise BadRequestError("bad_transfer", "transfer is http or shm", field="transfer")
    # Without a copy from the host tier: the view pins the blob until it is sent.
    meta, data = await run_blocking(request.app, lambda: engine.get(chunk, variant, copy=False))
    return web.Response(
        body=data,
        content_type="application/octet-stream",
        headers={META_HEADER: orjson.dumps(_meta_json(meta)).decode()},
    )


def _number(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        return float(text)
    except ValueError:
        raise BadRequestError(
            "invalid_field", "lease_s: expected a number", field="lease_s"
        ) from None


@group.route(
    "HEAD",
    "/v1/kv/chunks/{key}",
    summary="Whether a variant is stored, and its metadata",
    parameters=[_KEY_PARAM, _VARIANT_PARAM],
    responses={200: {"description": f"Stored; metadata in {META_HEADER}."}},
)
async def head_chunk(request: web.Request) -> web.StreamResponse:
    engine = _engine(request)
    meta = await run_blocking(
        request.app, engine.metadata, _path_key(request), _variant_param(request)
    )
    response = web.StreamResponse(headers={META_HEADER: orjson.dumps(_meta_json(meta)).decode()})
    response.content_type = "application/octet-stream"
    response.content_length = meta.nbytes  # what a GET would send
    await response.prepare(request)
    return response


@group.route(
    "DELETE",
    "/v1/kv/chunks/{key}",
    summary="Remove one variant, or every variant of a chunk",
    parameters=[_KEY_PARAM, _VARIANT_PARAM],
    responses={200: json_content({"type": "object"}, "How many variants were removed.")},
)
async def delete_chunk(request: web.Request) -> web.Response:
    engine = _engine(request)
    count = await run_blocking(
        request.app, engine.delete, _path_key(request), _variant_param(request)
    )
    if not count:
        raise NotFoundError("not_found", "no such chunk variant")
    return json_response({"deleted": count})


@group.route(
    "DELETE",
    "/v1/kv/leases/{id}",
    summary="Release a lease early (its shared-memory handles become invalid)",
    parameters=[{"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}],
    responses={204: {"description": "Released."}},
)
async def release_lease(request: web.Request) -> web.Response:
    engine = _engine(request)
    if not engine.release(request.match_info["id"]):
        raise NotFoundError("not_found", "no such lease (released or expired)")
    return web.Response(status=204)


@group.route(
    "POST",
    "/v1/kv/plan",
    summary="Plan the reuse of a prompt's chunks",
    description="For each chunk in prompt order: hit or miss, the chosen variant, the "
    "Cache-Craft metrics (beta, gamma, CCI, CFO), the token positions to recompute, the "
    "RoPE shift and how to fetch the bytes. Unknown chunks are misses, not errors.",
    request_body=json_content(PLAN_REQUEST, "The prompt's chunks."),
    responses={200: json_content(PLAN, "The plan.")},
)
async def plan(request: web.Request) -> web.Response:
    engine = _engine(request)
    body = await read_json_object(request)
    reject_unknown(body, ("model", "chunks", "chunk_tokens", "start", "shm", "lease_s"))
    model = require_str(body, "model", max_len=256)
    chunks = body.get("chunks")
    max_chunks = request.app[SETTINGS].kv.max_plan_chunks
    if not isinstance(chunks, list) or len(chunks) > max_chunks:
        raise BadRequestError(
            "invalid_field", f"chunks: expected a list of at most {max_chunks} keys", field="chunks"
        )
    keys = [_key(k, "chunks") for k in chunks]
    chunk_tokens = body.get("chunk_tokens")
    if chunk_tokens is not None and not (
        isinstance(chunk_tokens, list)
        and all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in chunk_tokens)
    ):
        raise BadRequestError(
            "invalid_field", "chunk_tokens: expected positive integers", field="chunk_tokens"
        )
    start = body.get("start", 0)
    if not isinstance(start, int) or isinstance(start, bool) or start < 0:
        raise BadRequestError("invalid_field", "start: expected an integer >= 0", field="start")
    shm = body.get("shm", False)
    if not isinstance(shm, bool):
        raise BadRequestError("invalid_field", "shm: expected a boolean", field="shm")
    lease_s = optional_float(body, "lease_s", low=1e-3, high=1e9)

    def make_plan() -> Plan:
        return engine.plan(
            model, keys, chunk_tokens=chunk_tokens, start=start, shm=shm, lease_ttl_s=lease_s
        )

    # Without shm a plan touches memory only (no LMDB, no copies): about 30 us a chunk,
    # less than the two thread wake-ups a hand-off to the pool costs. Small plans run
    # here; large ones and shm plans (which may promote blobs from disk) go to the pool.
    if not shm and len(keys) <= _INLINE_PLAN_CHUNKS:
        result = make_plan()
    else:
        result = await run_blocking(request.app, make_plan)
    chunk_docs = [_plan_chunk_json(c) for c in result.chunks]
    hits = sum(1 for c in chunk_docs if c["hit"])
    return json_response(
        {
            "model": result.model,
            "hits": hits,
            "misses": len(chunk_docs) - hits,
            "recompute_tokens": result.recompute_tokens,
            "lease": _lease_json(result.lease),
            "chunks": chunk_docs,
        }
    )


@group.route(
    "GET",
    "/v1/kv/stats",
    summary="Counters per tier",
    responses={200: json_content(STATS, "Per tier: bytes, entries, hits, misses, moves.")},
)
async def kv_stats(request: web.Request) -> web.Response:
    engine = _engine(request)
    tiers = engine.stats()
    budgets = {"disk": engine.disk.budget_bytes}
    if engine.host is not None:
        budgets["host"] = engine.host.budget_bytes
    return json_response(
        {
            "tiers": {
                name: {
                    "bytes": s.bytes,
                    "entries": s.entries,
                    "budget_bytes": budgets[name],
                    "hits": s.hits,
                    "misses": s.misses,
                    "promotions": s.promotions,
                    "demotions": s.demotions,
                    "evictions": s.evictions,
                }
                for name, s in tiers.items()
            },
            "variants": engine.variants,
            "leases": engine.live_leases,
        }
    )


@group.route(
    "GET",
    "/v1/kv/models",
    summary="The models whose KV the daemon accepts",
    responses={200: json_content({"type": "object"}, "Models by id.")},
)
async def kv_models(request: web.Request) -> web.Response:
    engine = _engine(request)
    return json_response(
        {
            "models": {
                m.name: {
                    "layers": m.layers,
                    "kv_heads": m.kv_heads,
                    "head_dim": m.head_dim,
                    "alpha": m.alpha,
                    "tokenizer": m.tokenizer,
                }
                for m in engine.models.values()
            }
        }
    )
