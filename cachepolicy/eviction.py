"""Eviction policies: which cached item goes when a cache is over its quota.

Every cache of the daemon talks to eviction through :class:`EvictionPolicy`, so a
category (or, later, a KV tier) can switch policy by configuration. The policy
only tracks keys and decides; the cache does the removing and then calls
:meth:`EvictionPolicy.forget`.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Protocol

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

    Every operation is O(1) (an ordered dict kept in recency order).
    """

    def __init__(self) -> None:
        self._order: OrderedDict[int, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._order)

    def admit(self, key: int, size: int) -> None:
        self._order[key] = None
        self._order.move_to_end(key)

    def record_access(self, key: int) -> None:
        if key in self._order:
            self._order.move_to_end(key)

    def forget(self, key: int) -> None:
        self._order.pop(key, None)

    def choose_victim(self) -> int | None:
        return next(iter(self._order), None)
