"""Route group ``semantic``: the semantic response cache over HTTP.

Handlers decode the structs of :mod:`semcached.protocol.semantic`, call the
:class:`~semcached.service.semantic.engine.SemanticCache` engine, and encode its
answer; the engine decides everything else (and checks what depends on its state:
the vector's dimension, the category, "give text, vector or both").
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

import msgspec
import orjson
from aiohttp import web

from semcached.cachepolicy.calibration import Calibration
from semcached.errors import BadRequestError, NotFoundError
from semcached.index.docstore import Document
from semcached.protocol.codes import ErrorCode
from semcached.protocol.headers import (
    CACHE_STATUS_HEADER,
    CACHE_STATUS_HIT,
    CACHE_STATUS_MISS,
    MODEL_LOAD_HEADER,
    SIMILARITY_HEADER,
)
from semcached.protocol.semantic import (
    CategoryCalibration,
    CategoryStats,
    ClassificationStats,
    Namespace,
    SemanticEntry,
    SemanticFeedback,
    SemanticFeedbackResult,
    SemanticInsert,
    SemanticInsertResult,
    SemanticLookup,
    SemanticLookupBatch,
    SemanticLookupResult,
    SemanticLookupResults,
    SemanticPurge,
    SemanticPurgeResult,
    SemanticStats,
    VerificationStats,
)
from semcached.service.auth.scopes import Scope
from semcached.service.config import Settings
from semcached.service.http.appkeys import SEMANTIC, SETTINGS, daemon_context
from semcached.service.http.decoding import Decoder
from semcached.service.http.jsonio import struct_response
from semcached.service.http.model_load import HeaderReport, header_report, load_result, record
from semcached.service.http.routing import STORE_FULL_REPLY, Reply, RouteGroup, error_reply
from semcached.service.http.tenancy import namespace, principal, semantic_quota
from semcached.service.http.validation import to_vector
from semcached.service.semantic.classification import CategoryClassifier
from semcached.service.semantic.component import install_semantic_cache
from semcached.service.semantic.engine import (
    FeedbackReport,
    Insert,
    Lookup,
    LookupResult,
    SemanticCache,
)
from semcached.service.shared.component import install_semantic_sharing

__all__ = ["group"]

group = RouteGroup("semantic", "The semantic response cache.")


@group.on_setup
def _install(app: web.Application) -> None:
    daemon = daemon_context(app)
    slot = app[SEMANTIC] = install_semantic_cache(daemon)
    install_semantic_sharing(daemon, slot)


@group.on_document
def _bounds(schemas: dict[str, Any], settings: Settings) -> None:
    schemas["SemanticLookupBatch"]["properties"]["lookups"]["maxItems"] = (
        settings.semantic.max_batch
    )
    if settings.embedding.backend == "none":  # else the model's, known once it is loaded
        dim = settings.embedding.dim
        for name in ("SemanticLookup", "SemanticInsert"):
            vector = schemas[name]["properties"]["vector"]["anyOf"][0]
            as_list, as_base64 = vector["anyOf"]
            as_list.update(minItems=dim, maxItems=dim)
            chars = 4 * ((4 * dim + 2) // 3)  # base64 of dim float32 values
            as_base64.update(minLength=chars, maxLength=chars)


class EntryQuery(msgspec.Struct):
    namespace: Namespace


LOOKUP = Decoder(SemanticLookup)
LOOKUP_BATCH = Decoder(SemanticLookupBatch)
INSERT = Decoder(SemanticInsert, nested_field="response")
PURGE = Decoder(SemanticPurge)
FEEDBACK = Decoder(SemanticFeedback)
ENTRY_QUERY = Decoder(EntryQuery)
MAX_RESPONSE_DEPTH = 254
"""orjson, which stores and serves responses, encodes at most this many nested levels."""
_ID_PARAM = {"name": "id", "in": "path", "required": True, "schema": {"type": "integer"}}
LOAD_HEADER_PARAM = {
    "name": MODEL_LOAD_HEADER,
    "in": "header",
    "required": False,
    "description": "A load report: `model=<name>` and `queue_depth=<n>` and/or "
    "`latency_ms=<ms>`, separated by `;`.",
    "schema": {"type": "string"},
}


# --- decoding ----------------------------------------------------------------------------


def _lookup(request: web.Request, body: SemanticLookup, load: HeaderReport | None) -> Lookup:
    vector = None if body.vector is None else to_vector(body.vector)
    space = namespace(request, body.namespace)
    if load is not None:  # a report of the load header, for this lookup's namespace
        record(request, space, load)
    return Lookup(
        namespace=space,
        text=body.text,
        vector=vector,
        category=body.category,
        partition=body.partition,
        threshold=body.threshold,
        model=body.model or (load.model if load is not None else ""),
        exact_only=body.exact_only,
    )


def _payload(body: SemanticInsert) -> bytes:
    """The response to store: compact JSON, or the bytes of its base64."""
    if body.response_format == "json":
        try:  # orjson's reading of JSON (its numbers, its UTF-8), stored compact
            value = orjson.loads(memoryview(body.response))
        except orjson.JSONDecodeError as exc:
            raise BadRequestError(
                ErrorCode.INVALID_JSON, f"request body is not valid JSON: {exc}"
            ) from None
        try:
            return orjson.dumps(value)
        except orjson.JSONEncodeError:  # only orjson's nesting limit can fail here
            raise _too_deep() from None
    try:
        return base64.b64decode(msgspec.json.decode(body.response, type=str), validate=True)
    except (msgspec.ValidationError, binascii.Error, ValueError):
        raise BadRequestError(
            ErrorCode.INVALID_FIELD,
            "response: expected base64 for response_format=bytes",
            field="response",
        ) from None
    except msgspec.DecodeError as exc:
        raise BadRequestError(
            ErrorCode.INVALID_JSON, f"request body is not valid JSON: {exc}"
        ) from None


def _too_deep() -> BadRequestError:
    return BadRequestError(
        ErrorCode.INVALID_FIELD,
        f"response: JSON nested deeper than {MAX_RESPONSE_DEPTH} levels",
        field="response",
    )


def _insert(request: web.Request, body: SemanticInsert) -> Insert:
    payload = _payload(body)
    vector = None if body.vector is None else to_vector(body.vector)
    return Insert(
        namespace=namespace(request, body.namespace),
        prompt=body.prompt,
        response=payload,
        response_format=body.response_format,
        category=body.category,
        partition=body.partition,
        model=body.model,
        vector=vector,
        ttl_s=body.ttl_s,
        quota=semantic_quota(request),
    )


def _entry_id(request: web.Request) -> int:
    raw = request.match_info["id"]
    if not raw.isdigit() or int(raw) >= 1 << 64:
        raise BadRequestError(
            ErrorCode.INVALID_FIELD, "id: expected an unsigned integer", field="id"
        )
    return int(raw)


# --- encoding ----------------------------------------------------------------------------


def _response(document: Document) -> msgspec.Raw:
    if document.response_format == "json":
        return msgspec.Raw(document.response)  # already JSON: copied in, never re-parsed
    return msgspec.Raw(b'"' + base64.b64encode(document.response) + b'"')


def _result(result: LookupResult) -> SemanticLookupResult:
    document = result.document
    return SemanticLookupResult(
        hit=result.hit,
        similarity=result.similarity,
        entry_id=result.entry_id,
        age_s=result.age_s,
        category=result.category,
        strategy=result.strategy,
        response=msgspec.UNSET if document is None else _response(document),
        response_format=msgspec.UNSET if document is None else document.response_format,
        lookup_id=msgspec.UNSET if result.lookup_id is None else result.lookup_id,
        category_source=result.category_source,
        category_confidence=result.category_confidence,
        verifier_score=result.verifier_score,
        load_level=result.load_level,
    )


def _cache_headers(result: LookupResult) -> dict[str, str]:
    headers = {CACHE_STATUS_HEADER: CACHE_STATUS_HIT if result.hit else CACHE_STATUS_MISS}
    if result.similarity is not None:
        headers[SIMILARITY_HEADER] = f"{result.similarity:.6f}"
    return headers


def _calibration(c: Calibration, confidence: float) -> CategoryCalibration:
    return CategoryCalibration(
        threshold=c.threshold,
        configured_threshold=c.configured,
        max_false_hit_rate=c.budget,
        source=c.source,
        confidence=confidence,
        observations=c.observations,
        false_hits=c.false_hits,
        hits_above=c.hits_above,
        estimate=c.estimate,
        upper_bound=c.upper_bound,
    )


def _entry(document: Document) -> SemanticEntry:
    return SemanticEntry(
        entry_id=document.entry_id,
        namespace=document.namespace,
        category=document.category,
        partition=document.partition,
        model=document.model,
        prompt=document.prompt,
        response=_response(document),
        response_format=document.response_format,
        created_at=document.created_at,
        expires_at=document.expires_at,
        hit_count=document.hit_count,
        last_hit_at=document.last_hit_at,
        size_bytes=document.size_bytes,
    )


# --- routes ------------------------------------------------------------------------------


@group.route(
    "POST",
    "/v1/semantic/lookup",
    summary="Find a cached response to a prompt that means the same thing.",
    description="A lookup naming its downstream `model` is decided with that model's "
    "reported load (POST /v1/semantic/load), which may relax the category's threshold. "
    f"The optional {MODEL_LOAD_HEADER} header (e.g. `model=gpt-4o; queue_depth=12`) is "
    "such a report for the lookup's namespace (it needs semantic:write), and names the "
    "lookup's model when the body names none.",
    parameters=[LOAD_HEADER_PARAM],
    body=LOOKUP,
    body_description="The prompt.",
    responses={200: Reply("Hit or miss (also in X-Cache-Status).", SemanticLookupResult)},
    scope=Scope.SEMANTIC_READ,
)
async def lookup(request: web.Request) -> web.Response:
    body = await LOOKUP.read(request)
    parsed = _lookup(request, body, header_report(request))
    result = await request.app[SEMANTIC].get().lookup(parsed)
    return struct_response(_result(result), headers=_cache_headers(result))


@group.route(
    "POST",
    "/v1/semantic/lookup:batch",
    summary="Several lookups in one request.",
    description=f"The {MODEL_LOAD_HEADER} header, if any, is recorded for each lookup's "
    "namespace, as on a single lookup.",
    parameters=[LOAD_HEADER_PARAM],
    body=LOOKUP_BATCH,
    body_description="The prompts.",
    responses={200: Reply("One result per lookup, in order.", SemanticLookupResults)},
    scope=Scope.SEMANTIC_READ,
)
async def lookup_batch(request: web.Request) -> web.Response:
    body = await LOOKUP_BATCH.read(request)
    limit = request.app[SETTINGS].semantic.max_batch
    if len(body.lookups) > limit:
        raise BadRequestError(
            ErrorCode.INVALID_FIELD, f"lookups: at most {limit} per batch", field="lookups"
        )
    load = header_report(request)
    parsed = [_lookup(request, item, load) for item in body.lookups]
    results = await request.app[SEMANTIC].get().lookup_many(parsed)
    return struct_response(SemanticLookupResults([_result(r) for r in results]))


@group.route(
    "POST",
    "/v1/semantic/entries",
    summary="Cache a prompt's response; acknowledged once durably stored.",
    body=INSERT,
    body_description="The entry.",
    responses={
        201: Reply(
            "Stored.",
            SemanticInsertResult,
            links={
                name: {
                    "operationId": operation,
                    "parameters": {
                        "id": "$response.body#/entry_id",
                        "namespace": "$request.body#/namespace",
                    },
                }
                for name, operation in (("GetEntry", "get_entry"), ("DeleteEntry", "delete_entry"))
            },
        ),
        507: STORE_FULL_REPLY,
    },
    scope=Scope.SEMANTIC_WRITE,
)
async def insert(request: web.Request) -> web.Response:
    parsed = _insert(request, await INSERT.read(request))
    result = await request.app[SEMANTIC].get().insert(parsed)
    reply = SemanticInsertResult(
        result.entry_id,
        result.category,
        result.expires_at,
        result.category_source,
        result.category_confidence,
    )
    return struct_response(reply, status=201)


@group.route(
    "GET",
    "/v1/semantic/entries/{id}",
    summary="Read one entry.",
    parameters=[_ID_PARAM],
    query=ENTRY_QUERY,
    responses={
        200: Reply("The entry.", SemanticEntry),
        404: error_reply("No such entry in the namespace."),
    },
    scope=Scope.SEMANTIC_READ,
)
async def get_entry(request: web.Request) -> web.Response:
    entry_id = _entry_id(request)
    space = namespace(request, ENTRY_QUERY.convert(request.query).namespace)
    document = request.app[SEMANTIC].get().get(entry_id)
    # Another namespace's entry (another tenant's, maybe) is as absent as none at all.
    if document is None or document.namespace != space:
        raise NotFoundError(ErrorCode.NOT_FOUND, f"no entry {entry_id} in namespace {space!r}")
    return struct_response(_entry(document))


@group.route(
    "DELETE",
    "/v1/semantic/entries/{id}",
    summary="Remove one entry.",
    parameters=[_ID_PARAM],
    query=ENTRY_QUERY,
    responses={
        204: Reply("Removed."),
        404: error_reply("No such entry in the namespace."),
        507: STORE_FULL_REPLY,
    },
    scope=Scope.SEMANTIC_WRITE,
)
async def delete_entry(request: web.Request) -> web.Response:
    entry_id = _entry_id(request)
    space = namespace(request, ENTRY_QUERY.convert(request.query).namespace)
    engine = request.app[SEMANTIC].get()
    document = engine.get(entry_id)
    if document is None or document.namespace != space or not await engine.delete(entry_id):
        raise NotFoundError(ErrorCode.NOT_FOUND, f"no entry {entry_id} in namespace {space!r}")
    return web.Response(status=204)


@group.route(
    "POST",
    "/v1/semantic/purge",
    summary="Remove every entry of a namespace, optionally one category or partition.",
    body=PURGE,
    body_description="What to purge.",
    responses={
        200: Reply("How many entries were removed.", SemanticPurgeResult),
        507: STORE_FULL_REPLY,
    },
    scope=Scope.SEMANTIC_WRITE,
)
async def purge(request: web.Request) -> web.Response:
    body = await PURGE.read(request)
    space = namespace(request, body.namespace)
    partition = None if body.partition is msgspec.UNSET else body.partition
    removed = await request.app[SEMANTIC].get().purge(space, body.category, partition)
    return struct_response(SemanticPurgeResult(removed))


@group.route(
    "POST",
    "/v1/semantic/feedback",
    summary="Report whether a served hit was right; a wrong entry is removed at once.",
    description="Name the hit by the lookup_id of its answer (it carries the score the "
    "hit was decided at, so the report recalibrates the category's threshold toward its "
    "max_false_hit_rate) or by entry_id (no score: it only removes a wrong entry and "
    "confirms a right one). Reports are durable. A lookup id reported again counts once. "
    "An id of another tenant's hit or entry is as unknown as none: 404.",
    body=FEEDBACK,
    body_description="The report.",
    responses={
        200: Reply("What was recorded.", SemanticFeedbackResult),
        404: error_reply("No such hit or entry among the caller's namespaces."),
        507: STORE_FULL_REPLY,
    },
    scope=Scope.SEMANTIC_WRITE,
)
async def feedback(request: web.Request) -> web.Response:
    body = await FEEDBACK.read(request)
    if (body.lookup_id is None) == (body.entry_id is None):
        raise BadRequestError(
            ErrorCode.MISSING_FIELD if body.lookup_id is None else ErrorCode.INVALID_FIELD,
            "lookup_id: give lookup_id or entry_id, exactly one",
            field="lookup_id",
        )
    caller = principal(request)
    accepted = request.app[SETTINGS].semantic.namespaces

    def owns(name: str) -> bool:
        return caller.may_name(name) and (not accepted or name in accepted)

    report = FeedbackReport(body.correct, body.lookup_id, body.entry_id, body.reason)
    engine = request.app[SEMANTIC].get()
    result = await engine.feedback(report, owns)
    if result is None:
        what = "lookup id" if body.lookup_id is not None else f"entry {body.entry_id}"
        raise NotFoundError(ErrorCode.NOT_FOUND, f"no such {what} in the caller's namespaces")
    reply = SemanticFeedbackResult(
        entry_id=result.entry_id,
        category=result.category,
        correct=result.correct,
        counted=result.counted,
        removed=result.removed,
        calibration=_calibration(result.calibration, engine.feedback_confidence),
    )
    return struct_response(reply)


@group.route(
    "GET",
    "/v1/semantic/stats",
    summary="Per category: entries, bytes, hits, misses, inserts, evictions, expirations, "
    "classifications, lookups relaxed by load, and the threshold feedback calibrated with "
    "its false-hit estimate; the state of category classification; each tracked model's "
    "load.",
    description="Over every namespace (every tenant's): an operator's view, hence the admin scope.",
    responses={200: Reply("Statistics.", SemanticStats)},
    scope=Scope.ADMIN,
)
async def stats(request: web.Request) -> web.Response:
    engine = request.app[SEMANTIC].get()
    calibrations = engine.calibrations()
    verified = engine.verified_calibrations()
    confidence = engine.feedback_confidence
    classified = engine.classifier.stats
    categories = {
        name: CategoryStats(
            entries=s.entries,
            bytes=s.bytes,
            hits=s.hits,
            misses=s.misses,
            inserts=s.inserts,
            evictions=s.evictions,
            expirations=s.expirations,
            calibration=(
                _calibration(calibrations[name], confidence) if name in calibrations else None
            ),
            inferred=classified.inferred[name],
            below_floor=classified.below_floor[name],
            verified=s.verified,
            verified_hits=s.verified_hits,
            verify_seconds=s.verify_seconds,
            verified_calibration=(
                _calibration(verified[name], confidence) if name in verified else None
            ),
            relaxed_lookups=engine.load.counts[name].relaxed_lookups
            if name in engine.load.counts
            else 0,
            relaxed_hits=engine.load.counts[name].relaxed_hits if name in engine.load.counts else 0,
        )
        for name, s in engine.stats().items()
    }
    loads = [load_result(m) for m in engine.load.models()]
    return struct_response(
        SemanticStats(
            len(engine),
            categories,
            _classification(engine.classifier),
            _verification(engine),
            loads,
        )
    )


def _verification(engine: SemanticCache) -> VerificationStats:
    verifier = engine.verifier
    if verifier is None:
        return VerificationStats(enabled=False, reason=engine.verification_off_reason)
    return VerificationStats(
        enabled=True,
        model=verifier.name,
        embedding_model=verifier.embedding_model,
        band=list(verifier.band),
        threshold=verifier.threshold,
        token_cache_bytes=engine.token_bytes_held,
    )


def _classification(classifier: CategoryClassifier) -> ClassificationStats:
    current, counts = classifier.current, classifier.stats
    return ClassificationStats(
        enabled=current is not None,
        reason=classifier.off_reason,
        model=classifier.model,
        min_confidence=current.min_confidence if current is not None else 0.0,
        examples=dict(current.example_counts) if current is not None else {},
        unclassified=counts.unclassified,
        reloads=counts.reloads,
        reload_failures=counts.reload_failures,
        last_error=classifier.last_error,
    )
