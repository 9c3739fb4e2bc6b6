"""Entries ordered by expiry time, so the sweeper takes the expired ones from the front.

Backed by the B-skiplist: the key is the expiry time in milliseconds shifted left
by :data:`SEQ_BITS`, with a sequence number in the low bits so that entries expiring
in the same millisecond keep distinct keys; the value is the entry id.
"""

from __future__ import annotations

from semcached.ext.bskiplist import BSkipList

__all__ = ["SEQ_BITS", "ExpiryIndex"]

SEQ_BITS = 20
_SEQ_MASK = (1 << SEQ_BITS) - 1


class ExpiryIndex:
    """Entry ids by expiry time. Not thread-safe on its own: one owner mutates it.

    ``add`` and ``discard`` are O(log n); ``pop_expired`` is O(k log n) for k entries.
    """

    def __init__(self) -> None:
        self._tree = BSkipList()
        self._key_of: dict[int, int] = {}
        self._seq = 0

    def __len__(self) -> int:
        return len(self._key_of)

    def __contains__(self, entry_id: object) -> bool:
        return entry_id in self._key_of

    def add(self, entry_id: int, expires_at: float) -> None:
        """Track ``entry_id`` to expire at ``expires_at`` (unix seconds); re-adding moves it."""
        self.discard(entry_id)
        base = max(0, int(expires_at * 1000)) << SEQ_BITS
        while True:  # a free sequence number within this millisecond
            self._seq = (self._seq + 1) & _SEQ_MASK
            key = base | self._seq
            if key not in self._tree:
                break
        self._tree.insert(key, entry_id)
        self._key_of[entry_id] = key

    def discard(self, entry_id: int) -> None:
        key = self._key_of.pop(entry_id, None)
        if key is not None:
            self._tree.delete(key)

    def next_expiry(self) -> float | None:
        """When the earliest tracked entry expires, or None when empty."""
        if not self._key_of:
            return None
        return (self._tree.min() >> SEQ_BITS) / 1000.0

    def pop_expired(self, now: float, limit: int) -> list[int]:
        """Remove and return up to ``limit`` entries whose expiry is at or before ``now``."""
        # Past the last representable millisecond everything is due: no upper bound.
        bound = min((int(now * 1000) + 1) << SEQ_BITS, 1 << 64)
        keys, ids = self._tree.range_to_arrays(0, bound, limit)
        if len(keys):
            self._tree.delete_many(keys)
        expired = [int(i) for i in ids]
        for entry_id in expired:
            self._key_of.pop(entry_id, None)
        return expired
