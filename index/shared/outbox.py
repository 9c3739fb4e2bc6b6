"""Semantic changes waiting to be shipped to the shared tier, and the consumers' state.

:class:`Outbox` is an LMDB database (``shared.outbox``) of changes keyed by a
sequence number (8 bytes, big-endian: key order is commit order). The document
store appends to it inside the transaction that makes the change, so a change is in
the outbox exactly when it is committed: a crash loses nothing acknowledged, and the
shipper (:mod:`semcached.service.shared.shipper`) marks records shipped only once
Redis has acknowledged them. It holds at most ``max_records``: past that the oldest are
dropped (counted in :attr:`Outbox.dropped`, logged), since the local store is the
system of record and an unbounded outbox would fill the disk during a long outage.
Shipped records are deleted lazily, without a commit of their own (:class:`Outbox`).

:class:`ReplicaState` (``shared.state``) keeps this daemon's node id (so that it
recognises its own events after a restart) and, per namespace, where it is in the
stream (:class:`StreamOffset`).

Both are safe to call from several threads (each call is one LMDB transaction).
"""

from __future__ import annotations

import logging
import secrets
import threading
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import lmdb

from semcached.index.lmdb_env import LmdbEnvironment
from semcached.index.shared.records import Change

__all__ = ["Outbox", "ReplicaState", "StreamOffset"]

log = logging.getLogger(__name__)

_NODE = b"\x00node"
_OFFSET = b"offset:"


class Outbox:
    """Changes to ship, oldest first. Append O(log n + dropped); peek O(limit).

    Shipped records are not deleted in a transaction of their own (a second fsync
    per shipped batch, measured to cost a third of the insert rate): :meth:`shipped`
    moves a watermark in memory, and the records at or below it go in the next
    append's transaction, or in :meth:`compact` when no append comes. A crash forgets
    the watermark, so records shipped but not yet deleted are shipped again: delivery
    is at least once, and applying a change twice is harmless.
    """

    def __init__(self, env: LmdbEnvironment, *, max_records: int = 1_000_000) -> None:
        if max_records < 1:
            raise ValueError("max_records must be at least 1")
        self._env = env
        self._db = env.database(b"shared.outbox")
        self.max_records = max_records
        self.dropped = 0  # records dropped at the bound since start (the metric)
        self._lock = threading.Lock()
        self._shipped_upto = 0  # every record at or below this sequence was shipped

    def append(self, txn: lmdb.Transaction, changes: Sequence[Change]) -> None:
        """Add ``changes`` in the caller's write transaction (committed with it), and
        delete the shipped records there too."""
        if not changes:
            return
        self._drop_shipped(txn)
        cursor = txn.cursor(db=self._db)
        seq = int.from_bytes(cursor.key(), "big") + 1 if cursor.last() else 1
        seq = max(seq, self._shipped_upto + 1)  # never reuse a sequence shipped already
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

    def _drop_shipped(self, txn: lmdb.Transaction) -> int:
        """Delete the records at or below the watermark in ``txn``; how many."""
        upto = self._shipped_upto
        cursor = txn.cursor(db=self._db)
        dropped = 0
        if not cursor.first():
            return 0
        while (key := cursor.key()) and int.from_bytes(key, "big") <= upto:
            if not cursor.delete():  # on success the cursor moves to the next record
                break
            dropped += 1
        return dropped

    def peek(self, limit: int) -> list[tuple[int, Change]]:
        """Up to ``limit`` oldest unshipped (sequence, change) pairs, left in place."""
        start = (self._shipped_upto + 1).to_bytes(8, "big")

        def run(txn: lmdb.Transaction) -> list[tuple[int, bytes]]:
            out: list[tuple[int, bytes]] = []
            cursor = txn.cursor(db=self._db)
            if not cursor.set_range(start):
                return out
            for key, value in cursor:
                out.append((int.from_bytes(key, "big"), bytes(value)))
                if len(out) == limit:
                    break
            return out

        return [(seq, Change.from_outbox(value)) for seq, value in self._env.read(run)]

    def shipped(self, upto: int) -> None:
        """Every record up to sequence ``upto`` was shipped (they leave lazily)."""
        with self._lock:
            self._shipped_upto = max(self._shipped_upto, upto)

    def compact(self) -> int:
        """Delete the shipped records now, durably; how many. For an idle outbox."""
        oldest = self._oldest()
        if not oldest or oldest > self._shipped_upto:
            return 0
        return self._env.write(self._drop_shipped, reclaim=True)

    def _oldest(self) -> int:
        def run(txn: lmdb.Transaction) -> int:
            cursor = txn.cursor(db=self._db)
            return int.from_bytes(cursor.key(), "big") if cursor.first() else 0

        return self._env.read(run)

    def __len__(self) -> int:
        """Records not shipped yet. O(shipped records not yet deleted)."""
        upto = self._shipped_upto

        def run(txn: lmdb.Transaction) -> int:
            entries = int(txn.stat(self._db)["entries"])
            cursor = txn.cursor(db=self._db)
            if cursor.first():
                for key in cursor.iternext(keys=True, values=False):
                    if int.from_bytes(key, "big") > upto:
                        break
                    entries -= 1
            return entries

        return self._env.read(run)


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
