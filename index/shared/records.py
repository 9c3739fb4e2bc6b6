"""The byte forms of a semantic change: in the outbox, in a stream event, in a record key.

An *entry record* is what another daemon needs to hold the entry as its origin
does: the encoded document (:mod:`~semcached.index.docstore`'s format), its vector
(little-endian float32) and its packed token embeddings::

    u32 len(document) | u32 len(vector) | document | vector | tokens (the rest)

A :class:`Change` is one shipped change (an entry put or deleted, a feedback report
on an entry): its outbox value is a fixed header, the namespace and the record (a
report's is :func:`pack_feedback`'s)::

    u8 op | f64 at | f64 expires_at | u64 entry_id | u16 len(namespace) | namespace | record

and its stream event is the same fields as a flat map (:meth:`Change.event`), read
back by :func:`change_from_event`, which refuses malformed events with
:class:`MalformedChange` (the consumer skips and counts them).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from semcached.errors import SemcachedError

__all__ = [
    "Change",
    "MalformedChange",
    "change_from_event",
    "pack_feedback",
    "pack_record",
    "unpack_feedback",
    "unpack_record",
]

Op = Literal["put", "del", "fb"]
_OPS: tuple[Op, ...] = ("put", "del", "fb")
_FEEDBACK = struct.Struct("<??d")  # correct, verified, score (NaN: none)
_OUTBOX = struct.Struct("<BddQH")
_RECORD = struct.Struct("<II")
_EVENT_VERSION = b"1"
_MAX_ID = (1 << 63) - 1


class MalformedChange(SemcachedError, ValueError):
    """A stream event or record that cannot be a change this daemon wrote."""


def pack_record(document: bytes, vector: bytes, tokens: bytes) -> bytes:
    return b"".join((_RECORD.pack(len(document), len(vector)), document, vector, tokens))


def unpack_record(record: bytes) -> tuple[bytes, bytes, bytes]:
    """(document, vector, tokens) of an entry record; :class:`MalformedChange` if torn."""
    if len(record) < _RECORD.size:
        raise MalformedChange("entry record too short")
    n_doc, n_vec = _RECORD.unpack_from(record)
    end = _RECORD.size + n_doc + n_vec
    if n_doc == 0 or n_vec == 0 or n_vec % 4 or end > len(record):
        raise MalformedChange("entry record lengths do not add up")
    start = _RECORD.size
    return record[start : start + n_doc], record[start + n_doc : end], record[end:]


def pack_feedback(category: str, score: float | None, correct: bool, verified: bool) -> bytes:
    """A feedback report's record: the category's calibration evidence, no prompt."""
    value = math.nan if score is None else score
    return _FEEDBACK.pack(correct, verified, value) + category.encode("utf-8")


def unpack_feedback(record: bytes) -> tuple[str, float | None, bool, bool]:
    """(category, score, correct, verified); :class:`MalformedChange` if unreadable."""
    try:
        correct, verified, score = _FEEDBACK.unpack_from(record)
        category = record[_FEEDBACK.size :].decode("utf-8")
    except (struct.error, UnicodeDecodeError) as exc:
        raise MalformedChange(f"feedback record: {exc}") from None
    if not category or math.isinf(score):
        raise MalformedChange("feedback record without a category or with an infinite score")
    return category, None if math.isnan(score) else score, correct, verified


@dataclass(frozen=True, slots=True)
class Change:
    """One change to ship: ``put`` carries the entry record, ``del`` nothing, ``fb``
    a feedback report (:func:`pack_feedback`) on the entry.

    ``at`` is when the origin committed it (seconds since the epoch; the replication
    lag is measured from it); ``expires_at`` is the entry's (``put`` only).
    """

    op: Op
    namespace: str
    entry_id: int
    at: float
    expires_at: float = math.inf
    record: bytes = b""

    def outbox_value(self) -> bytes:
        ns = self.namespace.encode("utf-8")
        header = _OUTBOX.pack(_OPS.index(self.op), self.at, self.expires_at, self.entry_id, len(ns))
        return b"".join((header, ns, self.record))

    @classmethod
    def from_outbox(cls, value: bytes) -> Change:
        op, at, expires_at, entry_id, n_ns = _OUTBOX.unpack_from(value)
        start = _OUTBOX.size
        namespace = value[start : start + n_ns].decode("utf-8")
        return cls(_OPS[op], namespace, entry_id, at, expires_at, value[start + n_ns :])

    def event(self, origin: str) -> dict[bytes, bytes]:
        """The stream event's fields (``origin``: the shipping daemon's node id)."""
        fields = {
            b"v": _EVENT_VERSION,
            b"op": self.op.encode(),
            b"o": origin.encode(),
            b"at": repr(self.at).encode(),
            b"id": str(self.entry_id).encode(),
        }
        if self.op == "put":
            fields[b"exp"] = repr(self.expires_at).encode()
        if self.record:
            fields[b"rec"] = self.record
        return fields


def change_from_event(namespace: str, fields: Mapping[bytes, bytes]) -> tuple[str, Change]:
    """(origin, change) of a stream event read from ``namespace``'s stream.

    Checks what a consumer relies on: the version, the op, an id in range, finite
    times and, for a put, a record whose lengths add up. Whether the document inside
    decodes (and names this namespace) is the store's check, at apply time.
    """
    try:
        if fields.get(b"v") != _EVENT_VERSION:
            raise MalformedChange(f"unknown event version {fields.get(b'v')!r}")
        op = fields[b"op"].decode()
        if op not in _OPS:
            raise MalformedChange(f"unknown op {op!r}")
        entry_id = int(fields[b"id"])
        at = float(fields[b"at"])
        origin = fields[b"o"].decode()
        expires_at = float(fields.get(b"exp", b"inf"))
        record = fields.get(b"rec", b"")
    except (KeyError, ValueError, UnicodeDecodeError) as exc:
        if isinstance(exc, MalformedChange):
            raise
        raise MalformedChange(f"bad event field: {exc!r}") from None
    if not 1 <= entry_id <= _MAX_ID or not math.isfinite(at) or math.isnan(expires_at):
        raise MalformedChange("event id or times out of range")
    if op == "put":
        unpack_record(record)
    elif op == "fb":
        unpack_feedback(record)
    return origin, Change(op, namespace, entry_id, at, expires_at, record)
