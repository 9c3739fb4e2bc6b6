"""LRU: evict the item whose last admission or hit is oldest."""

from __future__ import annotations

from semcached.ext.bskiplist import BSkipList
from semcached.index.eviction import AccessFeatures, EvictionPolicy

__all__ = ["LruPolicy"]


class LruPolicy(EvictionPolicy):
    """Least recently used: evict the item whose last admission or hit is oldest.

    The recency order lives in the B-skiplist, keyed by a logical clock that ticks on
    every admission and hit, so the victim is the minimum. ``admit``,
    ``record_access`` and ``forget`` are O(log n); ``choose_victim`` is O(1).
    Features are accepted and ignored.
    """

    def __init__(self) -> None:
        self._order = BSkipList()  # tick -> key
        self._tick_of: dict[int, int] = {}  # key -> its current tick
        self._clock = 0

    def __len__(self) -> int:
        return len(self._tick_of)

    def _touch(self, key: int) -> None:
        old = self._tick_of.get(key)
        if old is not None:
            self._order.delete(old)
        self._clock += 1
        self._order.insert(self._clock, key)
        self._tick_of[key] = self._clock

    def admit(self, key: int, size: int, features: AccessFeatures | None = None) -> None:
        self._touch(key)

    def record_access(self, key: int, features: AccessFeatures | None = None) -> None:
        if key in self._tick_of:
            self._touch(key)

    def forget(self, key: int) -> None:
        tick = self._tick_of.pop(key, None)
        if tick is not None:
            self._order.delete(tick)

    def choose_victim(self) -> int | None:
        if not self._tick_of:
            return None
        return self._order.get(self._order.min())

    def _check(self) -> None:
        """Invariants: the order holds exactly one tick per key, ticks below the clock."""
        pairs = list(self._order.items())
        assert len(pairs) == len(self._tick_of)
        assert {key: tick for tick, key in pairs} == self._tick_of
        assert all(tick <= self._clock for tick, _ in pairs)
