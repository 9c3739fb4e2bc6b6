"""What both sides of the wire agree on: the one place the daemon and the clients share.

- :mod:`~semcached.protocol.keys`: chunk and variant keys of the KV cache (xxh3-128);
- :mod:`~semcached.protocol.headers`: header names and values, content types;
- :mod:`~semcached.protocol.codes`: the error codes of the error document;
- :mod:`~semcached.protocol.semantic`: the semantic cache's request and response bodies;
- :mod:`~semcached.protocol.kv`: the chunk KV cache's metadata, replies and plans.
- :mod:`~semcached.protocol.chat`: the cache key of an OpenAI-style chat or text request;
- :mod:`~semcached.protocol.chat_replay`: streamed chunks <-> the completion document.

The bodies are msgspec structs: the daemon validates requests and generates its
OpenAPI document with them, a client builds and reads them. The exceptions both sides
raise are in :mod:`semcached.errors`. This package imports nothing else of semcached,
so a client depends on the daemon through it alone.
"""

from semcached.protocol.codes import ErrorCode
from semcached.protocol.keys import KeyFormatError, chunk_key, key_hex, parse_key, variant_key
from semcached.protocol.kv import (
    CacheCraftStats,
    ChunkMeta,
    ChunkPutMeta,
    KvDeleted,
    KvFetch,
    KvLease,
    KvLeasedChunk,
    KvModel,
    KvModels,
    KvPlan,
    KvPlanChunk,
    KvPlanRequest,
    KvPutResult,
    KvShmHandle,
    KvStats,
    KvTierStats,
)
from semcached.protocol.semantic import (
    CategoryStats,
    SemanticEntry,
    SemanticInsert,
    SemanticInsertResult,
    SemanticLookup,
    SemanticLookupBatch,
    SemanticLookupResult,
    SemanticLookupResults,
    SemanticPurge,
    SemanticPurgeResult,
    SemanticStats,
)

__all__ = [
    "CacheCraftStats",
    "CategoryStats",
    "ChunkMeta",
    "ChunkPutMeta",
    "ErrorCode",
    "KeyFormatError",
    "KvDeleted",
    "KvFetch",
    "KvLease",
    "KvLeasedChunk",
    "KvModel",
    "KvModels",
    "KvPlan",
    "KvPlanChunk",
    "KvPlanRequest",
    "KvPutResult",
    "KvShmHandle",
    "KvStats",
    "KvTierStats",
    "SemanticEntry",
    "SemanticInsert",
    "SemanticInsertResult",
    "SemanticLookup",
    "SemanticLookupBatch",
    "SemanticLookupResult",
    "SemanticLookupResults",
    "SemanticPurge",
    "SemanticPurgeResult",
    "SemanticStats",
    "chunk_key",
    "key_hex",
    "parse_key",
    "variant_key",
]
