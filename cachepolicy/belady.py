"""Belady's offline optimum (furthest next request first), exact and self-contained.

Belady needs the future, so it is a yardstick and a label source, never a policy of
the daemon: the benchmark compares against it, the one-bit labels are read off it
(:mod:`semcached.cachepolicy.labels`), and the learned predictor replays it over a
window of past accesses.

Two variants:

* :func:`belady_unit` — unit sizes, capacity in items. On a miss with a full cache it
  evicts the cached item requested again furthest in the future (never again counts
  as infinitely far). This is optimal: no policy has fewer misses.
* :func:`belady_sized` — sizes in bytes, capacity in bytes, the rule libCacheSim's
  ``Belady`` applies to sized traces: an item larger than the cache is not admitted;
  otherwise, before it is inserted, cached items are evicted furthest-next-request
  first until it fits. With sizes this rule is a heuristic (the sized problem is
  NP-hard); with unit sizes it is :func:`belady_unit`.

Both run in O(n log k) time and O(n) memory for a trace of n requests (a max-heap of
next-request positions with lazy deletion).
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from semcached.ext.belady import evicted_after, evicted_after_sized

__all__ = [
    "BeladyResult",
    "belady_sized",
    "belady_sized_python",
    "belady_unit",
    "belady_unit_python",
    "next_request",
]

IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True, slots=True)
class BeladyResult:
    """What one Belady run did.

    ``evicted_after[i]`` is True when the item requested at position ``i`` was
    evicted (or not admitted) before its next request, i.e. this request was its last
    while the item stayed cached: exactly the accesses an offline optimum would label
    "safe to evict".
    """

    misses: int
    byte_misses: int
    evicted_after: npt.NDArray[np.bool_]


def next_request(keys: Sequence[int] | npt.ArrayLike) -> IntArray:
    """For each position, the position of the next request of the same key, or ``n``.

    O(n log n) (a stable sort), vectorised.
    """
    arr = np.asarray(keys, dtype=np.int64)
    n = len(arr)
    out = np.full(n, n, dtype=np.int64)
    if n == 0:
        return out
    order = np.argsort(arr, kind="stable")
    same = arr[order[1:]] == arr[order[:-1]]
    out[order[:-1][same]] = order[1:][same]
    return out


def belady_unit(keys: Sequence[int] | npt.ArrayLike, capacity: int) -> BeladyResult:
    """Replay ``keys`` through an optimal cache of ``capacity`` unit-size items.

    Compiled (:func:`semcached.ext.belady.evicted_after`; about 15x the pure-Python
    twin :func:`belady_unit_python`, which the tests run beside it).
    O(n log capacity) time, O(n) memory.
    """
    if capacity < 1:
        raise ValueError("capacity must be positive")
    arr = np.asarray(keys, dtype=np.int64)
    misses, evicted = evicted_after(arr, next_request(arr), capacity)
    return BeladyResult(misses, misses, evicted)


def belady_unit_python(keys: Sequence[int] | npt.ArrayLike, capacity: int) -> BeladyResult:
    """:func:`belady_unit` in Python: a heap of next-request positions with lazy
    deletion. O(n log capacity) time, O(n) memory.
    """
    if capacity < 1:
        raise ValueError("capacity must be positive")
    arr = np.asarray(keys, dtype=np.int64)
    nxt = next_request(arr).tolist()
    key_list = arr.tolist()
    n = len(key_list)
    evicted_after = np.zeros(n, dtype=np.bool_)
    cached: dict[int, int] = {}  # key -> position of its latest request
    heap: list[tuple[int, int]] = []  # (-next request position, key); stale entries skipped
    misses = 0
    for i, key in enumerate(key_list):
        if key not in cached:
            misses += 1
            if len(cached) >= capacity:
                while True:
                    neg_next, victim = heapq.heappop(heap)
                    last = cached.get(victim)
                    if last is not None and nxt[last] == -neg_next:
                        break
                del cached[victim]
                evicted_after[last] = True
        cached[key] = i
        heapq.heappush(heap, (-nxt[i], key))
    return BeladyResult(misses, misses, evicted_after)


def belady_sized(
    keys: Sequence[int] | npt.ArrayLike,
    sizes: Sequence[int] | npt.ArrayLike,
    capacity_bytes: int,
) -> BeladyResult:
    """Replay ``keys`` (with per-request ``sizes``) through a furthest-next-request
    cache of ``capacity_bytes``; see the module docstring for the rule.

    An item's size is the size of its latest request. Compiled
    (:func:`semcached.ext.belady.evicted_after_sized`); the pure-Python twin is
    :func:`belady_sized_python`. O(n log n) time, O(n) memory.
    """
    if capacity_bytes < 1:
        raise ValueError("capacity must be positive")
    arr = np.asarray(keys, dtype=np.int64)
    size_arr = np.asarray(sizes, dtype=np.int64)
    if len(size_arr) != len(arr):
        raise ValueError("keys and sizes differ in length")
    misses, byte_misses, evicted = evicted_after_sized(
        arr, size_arr, next_request(arr), capacity_bytes
    )
    return BeladyResult(misses, byte_misses, evicted)


def belady_sized_python(
    keys: Sequence[int] | npt.ArrayLike,
    sizes: Sequence[int] | npt.ArrayLike,
    capacity_bytes: int,
) -> BeladyResult:
    """:func:`belady_sized` in Python. O(n log n) time, O(n) memory."""
    if capacity_bytes < 1:
        raise ValueError("capacity must be positive")
    arr = np.asarray(keys, dtype=np.int64)
    size_list = np.asarray(sizes, dtype=np.int64).tolist()
    if len(size_list) != len(arr):
        raise ValueError("keys and sizes differ in length")
    nxt = next_request(arr).tolist()
    key_list = arr.tolist()
    evicted_after = np.zeros(len(key_list), dtype=np.bool_)
    cached: dict[int, int] = {}
    heap: list[tuple[int, int]] = []
    used = 0
    misses = byte_misses = 0
    for i, key in enumerate(key_list):
        size = size_list[i]
        last = cached.get(key)
        if last is not None:
            used += size - size_list[last]
            cached[key] = i
            heapq.heappush(heap, (-nxt[i], key))
            continue
        misses += 1
        byte_misses += size
        if size > capacity_bytes:
            evicted_after[i] = True
            continue
        while used + size > capacity_bytes:
            neg_next, victim = heapq.heappop(heap)
            victim_last = cached.get(victim)
            if victim_last is None or nxt[victim_last] != -neg_next:
                continue
            del cached[victim]
            used -= size_list[victim_last]
            evicted_after[victim_last] = True
        cached[key] = i
        used += size
        heapq.heappush(heap, (-nxt[i], key))
    return BeladyResult(misses, byte_misses, evicted_after)
