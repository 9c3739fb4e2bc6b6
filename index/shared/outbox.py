"""Semantic changes waiting to be shipped to the shared tier, and the consumers' state.

:class:`Outbox` is an LMDB database (``shared.outbox``) of changes keyed by a
sequence number (8 bytes, big-endian: key order is commit order). The document
store appends to it inside the transaction that makes the change, so a change is in
the outbox exactly when it is committed: a crash loses nothing acknowledged, and the
shipper (:mod:`semcached.service.shared.shipper`) removes records only once Redis
has acknowledged them. It holds at most ``max_records``: past that the oldest are
dropped (counted in :attr:`Outbox.dropped`, logged), since the local store is the
system of record and an unbounded outbox would fill the disk during a long outage.

:class:`ReplicaState` (``shared.state``) keeps this daemon's node id (so that it
recognises its own events after a restart) and, per namespace, where it is in the
stream (:class:`StreamOffset`).

Both are safe to call from several threads (each call is one LMDB transaction).
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Iterable, Mapping, Sequence
from typing import NamedTuple

import lmdb

from semcached.index.lmdb_env import LmdbEnvironment
from semcached.index.shared.records import Change

__all__ = ["Outbox", "ReplicaState", "StreamOffset"]

log = logging.getLogger(__name__)

_NODE = b"\x00node"
_OFFSET = b"offset:"


class Outbox:
    """Changes to ship, oldest first. Append O(log n + dropped); peek O(limit)."""

    def __init__(self, env: LmdbEnvironment, *, max_records: int = 1_000_000) -> None:
        if max_records < 1:
            raise ValueError("max_records must be at least 1")
        self._env = env
        self._db = env.database(b"shared.outbox")
        self.max_records = max_records
        self.dropped = 0  # records dropped at the bound since start (the metric)

    def append(self, txn: lmdb.Transaction, changes: Sequence[Change]) -> None:
        """Add ``changes`` in the caller's write transaction (committed with it)."""
        if not changes:
            return
        cursor = txn.cursor(db=self._db)
        seq = int.from_bytes(cursor.key(), "big") + 1 if cursor.last() else 1
        for change in changes:
            txn.put(seq.to_bytes(8, "big"), change.outbox_value(), db=self._db, append=True)
            seq += 1
        over = txn.stat(self._db)["entries"] - self.max_records
        if over > 0:
            cursor = txn.cursor(db=self._db)
            cursor.first()
            for _ in range(over):
                cursor.delete()
            if self.dropped == 0 or (self.dropped + over) // 10_000 > self.dropped // 10_000:
                log.warning(
                    "shared tier outbox full (%d records): dropped the oldest %d changes "
                    "unshipped (%d so far); the local store keeps them",
                    self.max_records,
                    over,
                    self.dropped + over,
                )
            self.dropped += over

    def peek(self, limit: int) -> list[tuple[int, Change]]:
        """Up to ``limit`` oldest (sequence, change) pairs, left in place."""

        def run(txn: lmdb.Transaction) -> list[tuple[int, bytes]]:
            out: list[tuple[int, bytes]] = []
            for key, value in txn.cursor(db=self._db):
                out.append((int.from_bytes(key, "big"), bytes(value)))
                if len(out) == limit:
                    break
            return out

        return [(seq, Change.from_outbox(value)) for seq, value in self._env.read(run)]

    def remove(self, seqs: Iterable[int]) -> None:
        """Delete shipped records (absent ones are skipped), durably."""
        keys = [s.to_bytes(8, "big") for s in seqs]

        def run(txn: lmdb.Transaction) -> None:
            for key in keys:
                txn.delete(key, db=self._db)

        if keys:
            self._env.write(run, reclaim=True)

    def __len__(self) -> int:
        return int(self._env.read(lambda txn: txn.stat(self._db)["entries"]))


class StreamOffset(NamedTuple):
    """Where a daemon is in a stream: the id of the last event it applied, and how
    many events the stream had added up to it (Redis's ``entries-added``), which tells
    whether the stream was trimmed past it."""

    last_id: bytes
    position: int


class ReplicaState:
    """This daemon's node id and the stream offsets it has applied."""

    def __init__(self, env: LmdbEnvironment) -> None:
        self._env = env
        self._db = env.database(b"shared.state")

    def node_id(self) -> str:
        """A random id made once per data directory (16 hex digits)."""

        def run(txn: lmdb.Transaction) -> str:
            found = txn.get(_NODE, db=self._db)
            if found is not None:
                return bytes(found).decode()
            made = secrets.token_hex(8)
            txn.put(_NODE, made.encode(), db=self._db)
            return made

        return self._env.write(run)

    def offsets(self) -> dict[str, StreamOffset]:
        """Namespace -> where this daemon is in its stream."""

        def run(txn: lmdb.Transaction) -> dict[str, StreamOffset]:
            cursor = txn.cursor(db=self._db)
            out: dict[str, StreamOffset] = {}
            if cursor.set_range(_OFFSET):
                for key, value in cursor:
                    if not bytes(key).startswith(_OFFSET):
                        break
                    last, _, position = bytes(value).partition(b"|")
                    name = bytes(key)[len(_OFFSET) :].decode("utf-8")
                    out[name] = StreamOffset(last, int(position or 0))
            return out

        return self._env.read(run)

    def save_offsets(self, offsets: Mapping[str, StreamOffset]) -> None:
        def run(txn: lmdb.Transaction) -> None:
            for namespace, offset in offsets.items():
                value = offset.last_id + b"|" + str(offset.position).encode()
                txn.put(_OFFSET + namespace.encode("utf-8"), value, db=self._db)

        if offsets:
            self._env.write(run)

    def forget_offset(self, namespace: str) -> None:
        self._env.write(lambda txn: txn.delete(_OFFSET + namespace.encode("utf-8"), db=self._db))
