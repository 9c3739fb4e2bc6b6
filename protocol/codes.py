"""The machine-readable ``code`` of every error document the daemon sends.

An error leaves the daemon as ``{"error": {"code", "message", "field"?}}`` with an
HTTP status (see :class:`semcached.errors.ApiError`). The codes are stable: clients
branch on them, so a code is added here, never renamed. A client built against an
older list may still receive a code it does not know; it keeps the raw string.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["ErrorCode"]


class ErrorCode(StrEnum):
    """Every code the daemon answers with; each member's comment says when."""

    # Any route
    INVALID_JSON = "invalid_json"  # the body (or a JSON header) does not parse
    INVALID_FIELD = "invalid_field"  # a field has the wrong type, range or form
    MISSING_FIELD = "missing_field"  # a required field is absent
    UNKNOWN_FIELD = "unknown_field"  # a field the route does not know (no silent typos)
    NOT_FOUND = "not_found"  # no such route, entry, chunk variant or lease
    METHOD_NOT_ALLOWED = "method_not_allowed"
    PAYLOAD_TOO_LARGE = "payload_too_large"  # the body is over server.max_body_bytes
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"  # a JSON route sent another type
    BODY_TIMEOUT = "body_timeout"  # 408: the body came too slowly (server.body_timeout_s)
    UNAUTHORIZED = "unauthorized"  # 401: missing, malformed or unknown bearer token
    NOT_READY = "not_ready"  # starting or shutting down; retry
    TOO_MANY_CONNECTIONS = "too_many_connections"  # past server.max_connections; retry
    INTERNAL_ERROR = "internal_error"  # the daemon's own fault
    # Semantic cache
    UNKNOWN_NAMESPACE = "unknown_namespace"
    UNKNOWN_CATEGORY = "unknown_category"
    CATEGORY_DISABLED = "category_disabled"
    INVALID_VECTOR = "invalid_vector"  # wrong dimension, NaN/Inf or all zeros
    EMBEDDING_DISABLED = "embedding_disabled"  # text without a vector, and no embedder
    EMBEDDING_OVERLOADED = "embedding_overloaded"
    EMBEDDING_TIMEOUT = "embedding_timeout"
    EMBEDDING_FAILED = "embedding_failed"
    EMBEDDING_UNAVAILABLE = "embedding_unavailable"  # the model could not be loaded
    TOO_MANY_MODELS = "too_many_models"  # 429: the tenant reports load of load.max_models
    # Chunk KV cache
    KV_DISABLED = "kv_disabled"
    BAD_KEY = "bad_key"  # a chunk or variant key is not 32 lower-case hex digits
    BAD_VARIANT = "bad_variant"  # the variant is not the hash of the prefix keys
    BAD_SHAPE = "bad_shape"
    MISSING_META = "missing_meta"  # a put without its metadata header
    INVALID_META = "invalid_meta"  # the metadata header is inconsistent
    UNKNOWN_MODEL = "unknown_model"
    LENGTH_REQUIRED = "length_required"
    LENGTH_MISMATCH = "length_mismatch"  # the blob's length is not its shape's
    TRUNCATED_BODY = "truncated_body"
    BLOB_TOO_LARGE = "blob_too_large"
    UPLOADS_BUSY = "uploads_busy"  # 503: kv.max_inflight_upload_bytes reached; retry
    BAD_SOURCE = "bad_source"  # the staged-put header names no acceptable file
    SHM_SOURCE_UNAVAILABLE = "shm_source_unavailable"
    SHM_DISABLED = "shm_disabled"
    GPU_TIER_OFF = "gpu_tier_off"  # device handles asked for, but the daemon has no GPU tier
    UNKNOWN_DEVICE = "unknown_device"  # a device that is not one of the GPU tier's
    BAD_TRANSFER = "bad_transfer"
    BAD_CHUNK_TOKENS = "bad_chunk_tokens"
    BAD_LEASE = "bad_lease"
    TOO_MANY_LEASES = "too_many_leases"
    HOST_TIER_FULL = "host_tier_full"  # retryable
    STORE_FULL = "store_full"  # 507: a store is full and nothing could be evicted (either cache)
    PUT_IN_PROGRESS = "put_in_progress"  # the same variant is being written; retry
    # Tenants and tokens
    INSUFFICIENT_SCOPE = "insufficient_scope"  # 403: the token lacks the route's scope
    NAMESPACE_FORBIDDEN = "namespace_forbidden"  # 403: a namespace outside the token's
    RATE_LIMITED = "rate_limited"  # 429: the tenant's requests per second; see Retry-After
    LEASE_QUOTA_EXCEEDED = "lease_quota_exceeded"  # 429: the tenant holds its most leases
    PIN_QUOTA_EXCEEDED = "pin_quota_exceeded"  # 429: the tenant's leases pin their most bytes
