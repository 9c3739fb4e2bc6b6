"""Eviction policies: which cached item goes when a cache is over its quota.

Every cache of the daemon talks to eviction through :class:`EvictionPolicy`, so a
category (or, later, a KV tier) can switch policy by configuration. The policy
only tracks keys and decides; the cache does the removing and then calls
:meth:`EvictionPolicy.forget`.
"""

from __future__ import annotations

from typing import Protocol

from semcached.ext.bskiplist import BSkipList

__all__ = ["EvictionPolicy", "LruPolicy"]


class EvictionPolicy(Protocol):
    """Tracks the keys of one cache and names the next victim."""

    def admit(self, key: int, size: int) -> None:
        """A new item entered the cache."""

    def record_access(self, key: int) -> None:
        """An item was read (a cache hit)."""

    def forget(self, key: int) -> None:
        """An item left the cache (evicted, expired or deleted); unknown keys are ignored."""

    def choose_victim(self) -> int | None:
        """The key to evict next, without removing it; None when nothing is tracked."""

    def __len__(self) -> int: ...


class LruPolicy:
    """Least recently used: evict the item whose last admission or hit is oldest.

    The recency order lives in the B-skiplist, keyed by a logical clock that ticks on
    every admission and hit, so the victim is the minimum. ``admit``,
    ``record_access`` and ``forget`` are O(log n); ``choose_victim`` is O(1).
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

    def admit(self, key: int, size: int) -> None:
        self._touch(key)

    def record_access(self, key: int) -> None:
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
