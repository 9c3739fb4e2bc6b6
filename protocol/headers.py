"""Header names, header values and content types that the daemon and its clients share."""

from __future__ import annotations

from typing import Final

__all__ = [
    "CACHE_STATUS_BYPASS",
    "CACHE_STATUS_HEADER",
    "CACHE_STATUS_HIT",
    "CACHE_STATUS_MISS",
    "DAEMON_TOKEN_HEADER",
    "EVENT_STREAM",
    "JSON",
    "KV_META_HEADER",
    "KV_SOURCE_HEADER",
    "KV_STAGED_PREFIX",
    "MODEL_LOAD_HEADER",
    "NAMESPACE_HEADER",
    "OCTET_STREAM",
    "SIMILARITY_HEADER",
]

JSON: Final = "application/json"
OCTET_STREAM: Final = "application/octet-stream"
EVENT_STREAM: Final = "text/event-stream"

CACHE_STATUS_HEADER: Final = "X-Cache-Status"
"""On every semantic lookup answer: ``HIT`` or ``MISS`` (the gateway convention)."""
CACHE_STATUS_HIT: Final = "HIT"
CACHE_STATUS_MISS: Final = "MISS"
CACHE_STATUS_BYPASS: Final = "BYPASS"
"""The caching proxy's answer that neither looked up nor stored (uncacheable request)."""
SIMILARITY_HEADER: Final = "X-Semcached-Similarity"
"""The best candidate's cosine similarity, six decimals, when there was one."""

MODEL_LOAD_HEADER: Final = "X-Semcached-Model-Load"
"""On a lookup: a load report for the lookup's namespace, ``model=<name>`` then
``queue_depth=<n>`` and/or ``latency_ms=<ms>``, separated by ``;`` (e.g.
``model=gpt-4o; queue_depth=12``). Its model is the lookup's when the body names none."""

KV_META_HEADER: Final = "X-Semcached-KV-Meta"
"""A chunk put's metadata (JSON of :class:`~semcached.protocol.kv.ChunkPutMeta`), and a
chunk read's (JSON of :class:`~semcached.protocol.kv.ChunkMeta`). A header, not a
multipart part, so that the body is the blob as it is."""
KV_SOURCE_HEADER: Final = "X-Semcached-KV-Source"
"""``shm:<name>``: the put's bytes are staged in the file ``<name>`` of the daemon's
shared-memory directory instead of the body (same host only)."""
KV_STAGED_PREFIX: Final = "semcached-put-"
"""The only file names a staged put may name (never the daemon's own arena)."""

DAEMON_TOKEN_HEADER: Final = "X-Semcached-Token"
"""The daemon's own bearer token (``Bearer <token>`` or the bare token), taken before
``Authorization``: for the caching proxy, whose callers' Authorization is the upstream's."""
NAMESPACE_HEADER: Final = "X-Semcached-Namespace"
"""The caching proxy's namespace for one request (else ``proxy.namespace``)."""
