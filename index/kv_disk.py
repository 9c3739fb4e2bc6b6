"""The chunk KV cache's durable store: blobs and their metadata in LMDB.

Two named databases in the KV cache's own :class:`LmdbEnvironment` (its own map and
cap, apart from the semantic cache's documents):

- ``kv.blobs``: chunk key + variant key (32 bytes) -> the KV bytes;
- ``kv.meta``: the same key -> the encoded :class:`~semcached.index.kv_meta.VariantMeta`.

A put writes both in one durable transaction, so after ``kill -9`` a variant is there
whole or not at all; concurrent writers share transactions through a
:class:`GroupCommitter` (one fsync for several puts). Deletions ride in the same
transactions, so an eviction and the put that caused it commit together.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TypeVar, cast

import lmdb

from semcached.index.group_commit import GroupCommitter
from semcached.index.kv_meta import VariantMeta, decode_meta, encode_meta
from semcached.index.lmdb_env import LmdbEnvironment

__all__ = ["BlobWrite", "KvDiskStore"]

log = logging.getLogger(__name__)

T = TypeVar("T")

_BLOBS = b"kv.blobs"
_META = b"kv.meta"


@dataclass(frozen=True, slots=True)
class BlobWrite:
    """One change in a transaction: a variant to store (``meta`` and ``blob``) or, when
    both are None, the key to delete.

    The metadata's record is encoded here, in the caller's thread, so a variant that
    cannot be stored raises ValueError to its own caller and never reaches a
    transaction shared with other writers.
    """

    key: bytes
    meta: VariantMeta | None = None
    blob: bytes | bytearray | memoryview | None = None
    record: bytes = field(init=False, default=b"")

    def __post_init__(self) -> None:
        if self.meta is not None:
            object.__setattr__(self, "record", encode_meta(self.meta))


class KvDiskStore:
    """Thread-safe; every write is durable when its call returns."""

    def __init__(self, env: LmdbEnvironment, *, group_max_bytes: int = 64 << 20) -> None:
        self.env = env
        self._blobs = env.database(_BLOBS)
        self._meta = env.database(_META)
        self._committer: GroupCommitter[BlobWrite] = GroupCommitter(
            self._commit, max_bytes=group_max_bytes
        )

    @property
    def capacity_bytes(self) -> int:
        """The most the store can hold (:meth:`LmdbEnvironment.capacity_bytes`)."""
        return self.env.capacity_bytes()

    def write(self, changes: Sequence[BlobWrite]) -> None:
        """Apply ``changes`` in one durable transaction (shared with concurrent callers).

        Deletes alone commit on their own and may use the environment's reserve, so
        that evictions work when the map is at its cap. Raises
        :class:`~semcached.index.lmdb_env.StoreFullError` when the store is full.
        """
        if all(c.meta is None for c in changes):
            self.env.write(lambda txn: self._apply(txn, changes), reclaim=True)
            return
        nbytes = sum(len(c.blob) for c in changes if c.blob is not None)
        self._committer.submit(changes, nbytes)

    def _commit(self, changes: list[BlobWrite]) -> None:
        self.env.write(lambda txn: self._apply(txn, changes))

    def _apply(self, txn: lmdb.Transaction, changes: Sequence[BlobWrite]) -> None:
        for change in changes:
            if change.meta is None:
                txn.delete(change.key, db=self._blobs)
                txn.delete(change.key, db=self._meta)
            else:
                assert change.blob is not None
                txn.put(change.key, change.blob, db=self._blobs)
                txn.put(change.key, change.record, db=self._meta)

    def read_blob(self, key: bytes) -> bytes | None:
        """A copy of the blob under ``key``, or None."""

        def read(txn: lmdb.Transaction) -> bytes | None:
            value = txn.get(key, db=self._blobs)
            return None if value is None else bytes(value)

        return self.env.read(read)

    def read_with(self, key: bytes, use: Callable[[memoryview], T]) -> T | None:
        """``use(blob)`` with the blob under ``key`` as a view into LMDB's map (no copy;
        valid only during the call), or None when the key is absent."""

        def read(txn: lmdb.Transaction) -> T | None:
            value = txn.get(key, db=self._blobs)
            return None if value is None else use(cast(memoryview, value))

        return self.env.read(read, buffers=True)

    def scan(self) -> Iterator[VariantMeta]:
        """Every stored variant's metadata, in key order; corrupt records are logged and
        skipped (their blobs are then orphans and are deleted)."""
        records = cast(
            list[tuple[bytes, bytes]],
            self.env.read(lambda txn: list(txn.cursor(db=self._meta).iternext())),
        )
        corrupt: list[bytes] = []
        for key, record in records:
            try:
                yield decode_meta(key, record)
            except (ValueError, KeyError, TypeError, IndexError) as exc:
                log.error("dropping corrupt chunk metadata %s: %s", key.hex(), exc)
                corrupt.append(key)
        if corrupt:
            self.write([BlobWrite(key) for key in corrupt])

    def orphan_blobs(self) -> list[bytes]:
        """Keys with a blob but no metadata (none in a healthy store; a repair aid)."""

        def find(txn: lmdb.Transaction) -> list[bytes]:
            meta = txn.cursor(db=self._meta)
            keys = cast(list[bytes], list(txn.cursor(db=self._blobs).iternext(values=False)))
            return [k for k in keys if not meta.set_key(k)]

        return self.env.read(find)

    def save_access(self, metas: Sequence[VariantMeta]) -> None:
        """Persist access counts (at close; counts since the last save are lost on kill -9)."""

        def apply(txn: lmdb.Transaction) -> None:
            for meta in metas:
                if txn.get(meta.key, db=self._meta) is not None:
                    txn.put(meta.key, encode_meta(meta), db=self._meta)

        if metas:
            self.env.write(apply)
