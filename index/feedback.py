"""Durable feedback on semantic hits: per-category score-band counts, per-entry
confirmations, and the key that signs lookup ids.

One named database, ``sem.feedback``, in the data directory's
:class:`LmdbEnvironment`, with three kinds of key:

- ``b"secret"`` -> 32 random bytes, created at the first open: the HMAC key of lookup
  ids, so that ids handed out before a restart still verify after it;
- ``b"c:" + category`` -> the category's (right, wrong) counts per score band, as
  little-endian int64 (``2 * bands`` values), for hits decided on the cosine;
- ``b"v:" + category`` -> the same for hits the verifier decided (its probability is
  the score: the two are calibrated apart);
- ``b"e:" + entry id (8 bytes, big-endian)`` -> ``u32 confirmations | f64 lowest
  confirmed score``.

Everything is bounded: one fixed-size record per category, one per entry that got
feedback (pruned of entries gone, :meth:`FeedbackStore.prune_entries`). Each report is
one durable write transaction: feedback is rare next to lookups, and an acknowledged
report must survive ``kill -9`` like an acknowledged insert.
"""

from __future__ import annotations

import dataclasses
import secrets
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import lmdb
import numpy as np
from numpy.typing import NDArray

from semcached.index.lmdb_env import LmdbEnvironment
from semcached.index.shared.outbox import Outbox
from semcached.index.shared.records import Change

__all__ = ["BandCounts", "FeedbackState", "FeedbackStore"]

_SECRET = b"secret"
_CATEGORY = b"c:"
_VERIFIED = b"v:"
_ENTRY = b"e:"
_ENTRY_RECORD = struct.Struct("<Id")
_SECRET_BYTES = 32

BandCounts = tuple[NDArray[np.int64], NDArray[np.int64]]
"""(right, wrong) per score band."""


@dataclass(frozen=True, slots=True)
class FeedbackState:
    """What a store holds, as :meth:`FeedbackStore.load` reads it at open."""

    categories: Mapping[str, BandCounts]
    entries: Mapping[int, tuple[int, float]]  # id -> (confirmations, lowest score)
    verified: Mapping[str, BandCounts] = dataclasses.field(default_factory=dict)
    """The counts of verified hits (scored by the verifier), by category."""


def _entry_key(entry_id: int) -> bytes:
    return _ENTRY + entry_id.to_bytes(8, "big")


class FeedbackStore:
    """The ``sem.feedback`` database. Thread-safe; writes are durable when they return.

    Costs: :meth:`record` O(bands); :meth:`load` and :meth:`prune_entries` O(records).
    """

    def __init__(self, env: LmdbEnvironment, *, bands: int, outbox: Outbox | None = None) -> None:
        """``outbox``: where reports to share go, in the same transaction (None: none)."""
        self._env = env
        self.outbox = outbox
        self._db = env.database(b"sem.feedback")
        self._bands = bands

    def secret(self) -> bytes:
        """The lookup-id key, created (durably) on first use."""

        def run(txn: lmdb.Transaction) -> bytes:
            value = txn.get(_SECRET, db=self._db)
            if value is None:
                value = secrets.token_bytes(_SECRET_BYTES)
                txn.put(_SECRET, value, db=self._db)
            return bytes(value)

        existing = self._env.read(lambda txn: txn.get(_SECRET, db=self._db))
        return bytes(existing) if existing is not None else self._env.write(run)

    def load(self) -> FeedbackState:
        """Every category's counts and every entry's confirmations."""
        width = 8 * self._bands

        def run(txn: lmdb.Transaction) -> FeedbackState:
            categories: dict[str, BandCounts] = {}
            verified: dict[str, BandCounts] = {}
            entries: dict[int, tuple[int, float]] = {}
            for raw, value in txn.cursor(db=self._db):
                key = bytes(raw)
                kind = {_CATEGORY: categories, _VERIFIED: verified}.get(key[:2])
                if kind is not None and len(value) == 2 * width:
                    both = np.frombuffer(bytes(value), dtype="<i8").astype(np.int64)
                    kind[key[2:].decode("utf-8")] = (both[: self._bands], both[self._bands :])
                elif key.startswith(_ENTRY):
                    count, lowest = _ENTRY_RECORD.unpack(bytes(value))
                    entries[int.from_bytes(key[2:], "big")] = (count, lowest)
            return FeedbackState(categories, entries, verified)

        return self._env.read(run)

    def record(
        self,
        *,
        category: tuple[str, BandCounts] | None = None,
        entry: tuple[int, int, float] | None = None,
        forget_entry: int | None = None,
        verified: bool = False,
        ship: Change | None = None,
    ) -> None:
        """In one durable transaction: replace a category's counts (of verified hits
        when ``verified``), set an entry's (id, confirmations, lowest score), and/or
        drop an entry's record; and append ``ship`` to the outbox, if there is one."""
        value = None
        if category is not None:
            right, wrong = category[1]
            if right.shape != (self._bands,) or wrong.shape != (self._bands,):
                raise ValueError(f"counts must have {self._bands} bands")
            value = np.concatenate([right, wrong]).astype("<i8").tobytes()

        def run(txn: lmdb.Transaction) -> None:
            if category is not None and value is not None:
                prefix = _VERIFIED if verified else _CATEGORY
                txn.put(prefix + category[0].encode("utf-8"), value, db=self._db)
            if entry is not None:
                entry_id, count, lowest = entry
                txn.put(_entry_key(entry_id), _ENTRY_RECORD.pack(count, lowest), db=self._db)
            if forget_entry is not None:
                txn.delete(_entry_key(forget_entry), db=self._db)
            if ship is not None and self.outbox is not None:
                self.outbox.append(txn, [ship])

        self._env.write(run, reclaim=entry is None and category is None)

    def prune_entries(self, live: Callable[[int], bool]) -> int:
        """Drop the records of entries ``live`` says are gone; returns how many."""

        def dead(txn: lmdb.Transaction) -> list[bytes]:
            cursor = txn.cursor(db=self._db)
            out: list[bytes] = []
            if cursor.set_range(_ENTRY):
                for raw in cursor.iternext(keys=True, values=False):
                    key = bytes(raw)
                    if not key.startswith(_ENTRY):
                        break
                    if not live(int.from_bytes(key[2:], "big")):
                        out.append(key)
            return out

        keys = self._env.read(dead)
        for start in range(0, len(keys), 1024):
            batch = keys[start : start + 1024]

            def run(txn: lmdb.Transaction, batch: list[bytes] = batch) -> None:
                for key in batch:
                    txn.delete(key, db=self._db)

            self._env.write(run, reclaim=True)
        return len(keys)
