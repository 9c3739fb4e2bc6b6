"""Chunk KV variants in Redis: the shared tier below every daemon's local disk tier.

Key layout (``P`` is ``shared.key_prefix``; ``T`` is ``{kv:<h>}`` where ``<h>`` is the
xxh3-128 hex digest of the *scoped* chunk key, tenant scope then client key, so every
variant of one chunk of one tenant lives on one Cluster slot)::

    P:T:v             hash: variant key (16 raw bytes) -> record (header + metadata)
    P:T:<variant>:<i> string: part i of the variant's blob (``part_bytes`` less 16 bytes,
                      so that a power-of-two part fills one allocator size class)

A record is ``magic "SKV1" | u32 parts | u64 nbytes | 16 B xxh3-128 of the blob |
f64 expires_at (Unix time)`` followed by the metadata exactly as the disk tier keeps it
(:func:`~semcached.index.kv_meta.encode_meta`). One ``MULTI`` writes a variant's parts,
its record and both TTLs, so a reader sees all of it or none; Redis 7.0 has no expiry
per hash field, hence ``expires_at`` in the record (readers ignore records past it,
and the hash itself expires a TTL after the chunk's last write).

A record that does not decode, a part that is missing or a blob whose length or
checksum differs from its record is a miss, counted in :attr:`KvBlobStore.skipped`;
a fetch that finds one removes the record. Network failures raise
:class:`SharedTierDown` (transient: the caller treats the tier as unreachable), any
other refusal :class:`~semcached.index.shared.target.SharedTierError`.
"""

from __future__ import annotations

import math
import struct
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import redis
import redis.exceptions as rex
import xxhash

from semcached.index.kv_meta import VariantMeta, decode_meta, encode_meta, record_key
from semcached.index.shared.target import SharedTierError, SyncRedis

__all__ = ["KvBlobStore", "SharedTierDown", "SharedVariant", "chunk_tag"]

T = TypeVar("T")

_MAGIC = b"SKV1"
_HEAD = struct.Struct("<4sIQ16sd")
# Redis keeps a string in one allocation of its bytes plus a header of up to 9 bytes and
# a NUL; jemalloc rounds a 4 MiB value up to its 5 MiB class (measured: 25 % lost). Parts
# of part_bytes less this slack fill exactly one class when part_bytes is a power of two.
_ALLOC_SLACK = 16
# Errors that mean "not reachable right now" rather than "refused": the caller backs off.
_TRANSIENT: tuple[type[BaseException], ...] = (
    rex.ConnectionError,
    rex.TimeoutError,
    rex.ClusterError,  # ClusterDownError, MasterDownError
    rex.RedisClusterException,  # no node reachable, slot not covered
    rex.TryAgainError,  # a multi-key command during a slot migration
    rex.ReadOnlyError,  # a replica just promoted, or a failover in progress
    rex.BusyLoadingError,
)


class SharedTierDown(SharedTierError):
    """Redis did not answer (refused, timed out, cluster down): a transient outage."""


@dataclass(frozen=True, slots=True)
class SharedVariant:
    """A variant's record in Redis: its metadata and how its blob is stored."""

    meta: VariantMeta
    parts: int
    nbytes: int
    digest: bytes  # xxh3-128 of the whole blob
    expires_at: float


def chunk_tag(prefix: str, stored_chunk: bytes) -> str:
    """The hash-tagged stem of every key of one scoped chunk (see the module docstring)."""
    return f"{prefix}:{{kv:{xxhash.xxh3_128_hexdigest(stored_chunk)}}}"


class KvBlobStore:
    """Chunk KV variants in Redis, through sync redis-py clients (standalone, Sentinel
    or Cluster). Thread-safe as the clients are; keeps no state but its counter.

    ``read_client`` (default: ``client``) serves :meth:`fetch` and :meth:`lookup`: give
    it no retries, so that a read on a request's path waits at most one socket timeout
    when Redis stops answering, while writes (in the background) keep their retries.
    """

    def __init__(
        self,
        client: SyncRedis,
        *,
        read_client: SyncRedis | None = None,
        prefix: str,
        part_bytes: int,
        ttl_s: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if part_bytes < 1:
            raise ValueError("part_bytes must be >= 1")
        self.client = client
        self.read_client = client if read_client is None else read_client
        self.prefix = prefix
        self.part_bytes = part_bytes
        # What one part carries (see _ALLOC_SLACK).
        self.part_payload = (
            part_bytes - _ALLOC_SLACK if part_bytes > 4 * _ALLOC_SLACK else part_bytes
        )
        self.ttl_s = ttl_s
        self._clock = clock
        self._skips = threading.Lock()
        self._skipped = 0

    @property
    def skipped(self) -> int:
        """Records and blobs skipped as corrupt so far."""
        return self._skipped

    def _skip(self) -> None:
        with self._skips:
            self._skipped += 1

    # -- keys ------------------------------------------------------------------------------

    def index_key(self, stored_chunk: bytes) -> str:
        return f"{chunk_tag(self.prefix, stored_chunk)}:v"

    def part_keys(self, stored_chunk: bytes, variant: bytes, parts: int) -> list[str]:
        stem = f"{chunk_tag(self.prefix, stored_chunk)}:{variant.hex()}"
        return [f"{stem}:{i}" for i in range(parts)]

    # -- writes ----------------------------------------------------------------------------

    def put(
        self,
        meta: VariantMeta,
        blob: bytes | bytearray | memoryview,
        *,
        record: bytes | None = None,
    ) -> int:
        """Write one variant (``record``: its :func:`encode_meta`, if already made) in one
        ``MULTI``, refreshing the TTLs; the bytes written. O(size)."""
        view = memoryview(blob).cast("B")
        nbytes = len(view)
        step = self.part_payload
        parts = max(1, math.ceil(nbytes / step))
        head = _HEAD.pack(
            _MAGIC, parts, nbytes, xxhash.xxh3_128_digest(view), self._clock() + self.ttl_s
        )
        stored = meta.stored_chunk
        ttl_ms = max(1, int(self.ttl_s * 1000))
        pipe = self.client.pipeline(transaction=True)
        for i, key in enumerate(self.part_keys(stored, meta.variant, parts)):
            pipe.set(key, view[i * step : (i + 1) * step], px=ttl_ms)
        index = self.index_key(stored)
        pipe.hset(index, meta.variant, head + (record or encode_meta(meta)))
        pipe.pexpire(index, ttl_ms)
        self._run(pipe.execute)
        return nbytes

    def delete(self, scope: bytes, chunk: bytes, variant: bytes | None = None) -> set[bytes]:
        """Remove one variant, or every variant of the chunk; the variant keys removed.
        Parts of records that no longer decode are left to their TTL."""
        stored = scope + chunk
        index = self.index_key(stored)
        records = self._records(stored, variant)
        if not records:
            return set()
        pipe = self.client.pipeline(transaction=True)
        for found in records:
            pipe.delete(*self.part_keys(stored, found.meta.variant, found.parts))
        pipe.hdel(index, *(found.meta.variant for found in records))
        self._run(pipe.execute)
        return {found.meta.variant for found in records}

    # -- reads -----------------------------------------------------------------------------

    def lookup(self, stored_chunks: Sequence[bytes]) -> dict[bytes, list[SharedVariant]]:
        """The live records of each scoped chunk that has any, in one pipelined round
        trip per node (for a plan). O(chunks + records)."""
        if not stored_chunks:
            return {}
        pipe = self.read_client.pipeline(transaction=False)
        for stored in stored_chunks:
            pipe.hgetall(self.index_key(stored))
        replies: list[dict[bytes, bytes]] = self._run(pipe.execute)
        found: dict[bytes, list[SharedVariant]] = {}
        for stored, fields in zip(stored_chunks, replies, strict=True):
            live = self._decode_all(stored, fields.items())
            if live:
                found[stored] = live
        return found

    def fetch(
        self, scope: bytes, chunk: bytes, variant: bytes | None = None
    ) -> tuple[SharedVariant, bytes] | None:
        """One variant and its verified bytes (the newest when ``variant`` is None), or
        None. Two round trips: the record, then every part in one ``MGET`` (one slot)."""
        stored = scope + chunk
        records = self._records(stored, variant)
        if not records:
            return None
        found = max(records, key=lambda r: r.meta.created_at)
        keys = self.part_keys(stored, found.meta.variant, found.parts)
        parts: list[bytes | None] = self._run(lambda: self.read_client.mget(keys))
        data = b"".join(p for p in parts if p is not None)
        if (
            any(p is None for p in parts)
            or len(data) != found.nbytes
            or xxhash.xxh3_128_digest(data) != found.digest
        ):
            # Expired, evicted by maxmemory, or damaged: drop the record so that plans
            # stop offering it (a rewrite racing this loses its record until the next).
            self._skip()
            # On the read client: this runs on a request's path too.
            self._run(lambda: self.read_client.hdel(self.index_key(stored), found.meta.variant))
            return None
        return found, data

    def ping(self) -> None:
        self._run(self.client.ping)

    def close(self) -> None:
        self.client.close()
        if self.read_client is not self.client:
            self.read_client.close()

    # -- internals -------------------------------------------------------------------------

    def _records(self, stored: bytes, variant: bytes | None) -> list[SharedVariant]:
        index = self.index_key(stored)
        if variant is None:
            fields: dict[bytes, bytes] = self._run(lambda: self.read_client.hgetall(index))
            return self._decode_all(stored, fields.items())
        value: bytes | None = self._run(lambda: self.read_client.hget(index, variant))
        return [] if value is None else self._decode_all(stored, [(variant, value)])

    def _decode_all(
        self, stored: bytes, fields: Iterable[tuple[bytes, bytes]]
    ) -> list[SharedVariant]:
        now = self._clock()
        live: list[SharedVariant] = []
        for variant, value in fields:
            found = self._decode(stored, variant, value)
            if found is None:
                self._skip()
            elif found.expires_at > now:
                live.append(found)
        return live

    def _decode(self, stored: bytes, variant: bytes, value: bytes) -> SharedVariant | None:
        try:
            magic, parts, nbytes, digest, expires_at = _HEAD.unpack_from(value)
            if magic != _MAGIC or parts < 1:
                return None
            meta = decode_meta(record_key(stored[-16:], variant, stored[:-16]), value[_HEAD.size :])
        except (ValueError, KeyError, TypeError, IndexError, struct.error):
            return None
        if meta.nbytes != nbytes:
            return None
        return SharedVariant(meta, parts, nbytes, digest, expires_at)

    def _run(self, call: Callable[[], Any]) -> Any:
        try:
            return call()
        except _TRANSIENT as exc:
            raise SharedTierDown(f"{type(exc).__name__}: {exc}") from exc
        except redis.RedisError as exc:
            raise SharedTierError(f"{type(exc).__name__}: {exc}") from exc
