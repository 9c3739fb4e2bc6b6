"""What both sides of the wire agree on: the one place the daemon and the clients share.

- :mod:`~semcached.protocol.keys`: chunk and variant keys of the KV cache (xxh3-128);
- :mod:`~semcached.protocol.headers`: header names and values, content types;
- :mod:`~semcached.protocol.codes`: the error codes of the error document;
- :mod:`~semcached.protocol.kv`: chunk metadata as it travels (msgspec structs).

The exceptions both sides raise are in :mod:`semcached.errors`. This package imports
nothing else of semcached, so a client depends on the daemon through it alone.
"""

from semcached.protocol.codes import ErrorCode
from semcached.protocol.keys import KeyFormatError, chunk_key, key_hex, parse_key, variant_key
from semcached.protocol.kv import CacheCraftStats, ChunkMeta, ChunkPutMeta

__all__ = [
    "CacheCraftStats",
    "ChunkMeta",
    "ChunkPutMeta",
    "ErrorCode",
    "KeyFormatError",
    "chunk_key",
    "key_hex",
    "parse_key",
    "variant_key",
]
