"""Lookup ids: what a served hit hands the gateway so that it can report on it later.

A lookup id is a signed token, not a server-side record: no memory grows per lookup,
and an id issued before a restart still resolves after it (the key is in LMDB,
:meth:`~semcached.index.feedback.FeedbackStore.secret`). It carries what the feedback
needs and what must not be forged: the namespace (the tenant check), the category,
the entry, the score the hit decision used and which kind it was (a cosine, or the
verifier's probability for a verified hit: they are calibrated apart), whether the hit
was exact, and when it was served. Layout (little-endian), then base64url without padding::

    u8 version | u8 flags (1: exact, 2: verified) | u64 entry id | f64 score | u32 issued (unix s)
    | u64 nonce | u16 len | namespace | u16 len | category
    | 16 bytes of HMAC-SHA256 over the rest

The random nonce makes every hit's id its own, so that two hits of the same entry at
the same score in the same second are two reports, not one reported twice.

A token of another daemon (another key), altered, or truncated fails verification and
resolves to nothing, exactly like an unknown one.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import struct
from dataclasses import dataclass

__all__ = ["LookupIdSigner", "SignedLookup"]

_VERSION = 1
_HEAD = struct.Struct("<BBQdIQ")
_LEN = struct.Struct("<H")
_MAC_BYTES = 16
_EXACT = 1
_VERIFIED = 2


@dataclass(frozen=True, slots=True)
class SignedLookup:
    """What a lookup id says about the hit it was issued for."""

    namespace: str
    category: str
    entry_id: int
    score: float
    exact: bool
    issued_at: int
    verified: bool = False
    """The score is the verifier's probability, not the cosine."""


class LookupIdSigner:
    """Issues and verifies lookup ids under one key. O(len(id)) each way."""

    def __init__(self, key: bytes) -> None:
        if len(key) < 16:
            raise ValueError("the lookup id key must have at least 16 bytes")
        self._key = key

    def _mac(self, body: bytes) -> bytes:
        return hmac.new(self._key, body, hashlib.sha256).digest()[:_MAC_BYTES]

    def issue(self, hit: SignedLookup) -> str:
        namespace = hit.namespace.encode("utf-8")
        category = hit.category.encode("utf-8")
        body = b"".join(
            (
                _HEAD.pack(
                    _VERSION,
                    (_EXACT if hit.exact else 0) | (_VERIFIED if hit.verified else 0),
                    hit.entry_id,
                    hit.score,
                    max(0, min(hit.issued_at, 0xFFFFFFFF)),
                    secrets.randbits(64),
                ),
                _LEN.pack(len(namespace)),
                namespace,
                _LEN.pack(len(category)),
                category,
            )
        )
        return base64.urlsafe_b64encode(body + self._mac(body)).rstrip(b"=").decode("ascii")

    def verify(self, token: str) -> SignedLookup | None:
        """What the id says, or None when it is not one this key issued."""
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        except (binascii.Error, ValueError):
            return None
        if len(raw) < _HEAD.size + 2 * _LEN.size + _MAC_BYTES:
            return None
        body, mac = raw[:-_MAC_BYTES], raw[-_MAC_BYTES:]
        if not hmac.compare_digest(mac, self._mac(body)):
            return None
        version, flags, entry_id, score, issued, _ = _HEAD.unpack_from(body)
        if version != _VERSION:
            return None
        try:
            namespace, offset = _string(body, _HEAD.size)
            category, offset = _string(body, offset)
        except (struct.error, UnicodeDecodeError, ValueError):
            return None
        if offset != len(body):
            return None
        return SignedLookup(
            namespace,
            category,
            entry_id,
            score,
            bool(flags & _EXACT),
            issued,
            verified=bool(flags & _VERIFIED),
        )


def _string(body: bytes, offset: int) -> tuple[str, int]:
    (length,) = _LEN.unpack_from(body, offset)
    start = offset + _LEN.size
    if start + length > len(body):
        raise ValueError("truncated")
    return body[start : start + length].decode("utf-8"), start + length
