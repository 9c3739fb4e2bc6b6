"""Eviction by reuse value: Greedy-Dual-Size-Frequency (Cherkasova 1998).

Cache-Craft ranks stored chunk variants by the compute they save times how often they
are used, per byte they occupy, and evicts the lowest first
(/work/shared/notes/cachecraft.md §1, "Storage and eviction"). GDSF is that ranking
with aging: an item's priority is

    H(key) = L + freq(key) · cost(key) / size(key)

where ``cost`` is the compute a hit saves (tokens not prefilled), ``freq`` counts the
admission and the hits, and L, the inflation clock, is the priority of the last item
evicted. L is added when an item is admitted or hit, so an item that was valuable
once but is no longer used keeps its old, ever lower relative priority and ages out
as L rises past it; pure frequency-per-byte (L = 0) would keep it forever.
"""

from __future__ import annotations

import heapq
import math

from semcached.index.eviction import AccessFeatures, EvictionPolicy

__all__ = ["ReuseValuePolicy"]


class _Item:
    """What the policy keeps per tracked key."""

    __slots__ = ("base", "cost", "freq", "priority", "size", "stamp")

    def __init__(self, size: int, cost: float) -> None:
        self.size = size
        self.cost = cost
        self.freq = 1
        self.base = 0.0  # L when the item was admitted or last hit
        self.priority = 0.0
        self.stamp = 0  # the stamp of its live heap entry


def _check_cost(cost: float) -> float:
    cost = float(cost)
    if not math.isfinite(cost) or cost < 0:
        raise ValueError(f"cost must be finite and >= 0, got {cost!r}")
    return cost


class ReuseValuePolicy(EvictionPolicy):
    """GDSF: evict the item of least L + freq·cost/size, L = the last evicted priority.

    Priorities live in a binary heap of ``(priority, stamp, key)`` entries with lazy
    invalidation: a change of priority pushes a new entry with a fresh stamp and leaves
    the old one to be skipped when it surfaces, and the heap is rebuilt when stale
    entries outnumber live ones two to one. So ``admit``, ``record_access``,
    ``set_cost`` and ``forget`` are O(log n) amortised, ``choose_victim`` O(log n)
    amortised (each stale entry it pops was pushed once). Equal priorities go to the
    entry set earliest. Sizes count in bytes (at least 1); features are accepted and
    ignored.

    ``cost`` is the compute a hit saves, e.g. tokens of prefill: pass it to
    :meth:`admit` or later to :meth:`set_cost` (1.0 by default, so that a cache that
    knows no costs gets frequency per byte with aging).
    """

    def __init__(self) -> None:
        self._items: dict[int, _Item] = {}
        self._heap: list[tuple[float, int, int]] = []  # (priority, stamp, key)
        self._stamp = 0
        self._clock = 0.0  # L
        self._incoming: int | None = None  # admitted last: never the victim beside others
        self._chosen: int | None = None  # the victim named, until the state changes

    def __len__(self) -> int:
        return len(self._items)

    @property
    def clock(self) -> float:
        """L, the inflation clock: the priority of the last evicted item (0 at first).
        It never decreases."""
        return self._clock

    def priority(self, key: int) -> float | None:
        """The current priority of ``key``; None when it is not tracked. O(1)."""
        item = self._items.get(key)
        return None if item is None else item.priority

    def _set_priority(self, key: int, item: _Item) -> None:
        item.priority = item.base + item.freq * item.cost / item.size
        self._stamp += 1
        item.stamp = self._stamp
        heapq.heappush(self._heap, (item.priority, item.stamp, key))
        self._maybe_compact()

    def _maybe_compact(self) -> None:
        live = len(self._items)
        if len(self._heap) - live > 2 * live:
            self._heap = [(it.priority, it.stamp, k) for k, it in self._items.items()]
            heapq.heapify(self._heap)

    def admit(
        self,
        key: int,
        size: int,
        features: AccessFeatures | None = None,
        *,
        cost: float | None = None,
    ) -> None:
        """A new item, of ``size`` bytes, saving ``cost`` per hit (1.0 when not given).
        A key already tracked counts as a hit (and takes the cost if given)."""
        if key in self._items:
            if cost is not None:  # may lower its priority: a named victim is void
                self._items[key].cost = _check_cost(cost)
                self._chosen = None
            self.record_access(key, features)
            return
        item = _Item(max(int(size), 1), 1.0 if cost is None else _check_cost(cost))
        item.base = self._clock
        self._items[key] = item
        self._incoming = key
        self._chosen = None
        self._set_priority(key, item)

    def record_access(self, key: int, features: AccessFeatures | None = None) -> None:
        item = self._items.get(key)
        if item is None:
            return
        item.freq += 1
        item.base = self._clock
        # Another key's priority only rises (L never falls, freq grows) and it gets the
        # newest stamp, so a victim already named stays the minimum.
        if key == self._chosen:
            self._chosen = None
        self._set_priority(key, item)

    def set_cost(self, key: int, saved_tokens: float) -> None:
        """The compute a hit of ``key`` saves, e.g. tokens not prefilled. Not a hit: the
        priority keeps its L. Unknown keys are ignored; ValueError for a negative or
        non-finite cost. O(log n) amortised."""
        cost = _check_cost(saved_tokens)
        item = self._items.get(key)
        if item is None:
            return
        item.cost = cost
        self._chosen = None
        self._set_priority(key, item)

    def forget(self, key: int) -> None:
        """An item left. When it is the victim just named (an eviction), L advances to
        its priority (never backwards); any other removal leaves L alone."""
        item = self._items.pop(key, None)
        if item is None:
            return
        if key == self._chosen:
            self._clock = max(self._clock, item.priority)
        if key == self._incoming:
            self._incoming = None
        self._chosen = None
        self._maybe_compact()  # its heap entry is stale now

    def _drop_stale_top(self) -> None:
        heap = self._heap
        items = self._items
        while heap:
            _, stamp, key = heap[0]
            item = items.get(key)
            if item is not None and item.stamp == stamp:
                return
            heapq.heappop(heap)

    def choose_victim(self) -> int | None:
        if self._chosen is not None:
            return self._chosen
        if not self._items:
            return None
        heap = self._heap
        self._drop_stale_top()
        key = heap[0][2]
        if key == self._incoming and len(self._items) > 1:
            held = heapq.heappop(heap)  # look under the item admitted last
            self._drop_stale_top()
            key = heap[0][2]
            heapq.heappush(heap, held)
        self._chosen = key
        return key

    def _check(self) -> None:
        """Invariants: one live heap entry per item, carrying its priority; the heap
        property; stale entries at most twice the live ones; L above every base."""
        heap = self._heap
        assert all(heap[(i - 1) // 2] <= heap[i] for i in range(1, len(heap)))
        live = [(p, s, k) for p, s, k in heap if k in self._items and self._items[k].stamp == s]
        assert len(live) == len(self._items)
        assert len(heap) - len(live) <= 2 * len(self._items)
        for priority, stamp, key in live:
            item = self._items[key]
            assert item.priority == priority
            assert item.priority == item.base + item.freq * item.cost / item.size
            assert item.freq >= 1
            assert item.size >= 1
            assert item.cost >= 0
            assert item.base <= self._clock
            assert stamp <= self._stamp
        assert self._incoming is None or self._incoming in self._items
        assert self._chosen is None or self._chosen in self._items
        assert self._chosen is None or self._chosen != self._incoming or len(self._items) == 1
