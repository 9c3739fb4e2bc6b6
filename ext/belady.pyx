# distutils: language = c++
"""Belady's discard labels in C: the compiled twins of
``semcached.cachepolicy.belady.belady_unit`` and ``belady_sized``, which the one-bit
predictor replays over every window of past accesses.

:func:`evicted_after` takes each request's next-request position (``n`` for never
again), runs furthest-next-request-first eviction at ``capacity`` items, and returns
which requests were their item's last while it stayed cached. Ties (items never
requested again) go to the smallest key first, as in the twin. O(n log capacity) time,
O(n) memory: positions stand in for keys, so no hash map is needed.
"""

import numpy as np

cimport numpy as cnp
from libc.stdint cimport int64_t, uint8_t
from libcpp.pair cimport pair
from libcpp.queue cimport priority_queue

cnp.import_array()

__all__ = ["evicted_after", "evicted_after_sized"]

ctypedef pair[pair[int64_t, int64_t], int64_t] Entry  # ((next, -key), position)


cdef object previous_requests(const int64_t[::1] nx):
    """The position of each request's previous request of the same key, or -1: the
    inverse of ``nx``. Positions stand in for keys, so the replays need no hash map."""
    cdef Py_ssize_t i, n = nx.shape[0]
    prev_arr = np.full(n, -1, dtype=np.int64)
    cdef int64_t[::1] prev = prev_arr
    with nogil:
        for i in range(n):
            if nx[i] < n:
                prev[nx[i]] = i
    return prev_arr


def evicted_after(keys, nxt, int64_t capacity):
    """``(misses, evicted_after)`` of Belady over ``keys`` (int64) whose next-request
    positions are ``nxt`` (int64, ``len(keys)`` for never again)."""
    if capacity < 1:
        raise ValueError("capacity must be positive")
    cdef const int64_t[::1] k = np.ascontiguousarray(keys, dtype=np.int64)
    cdef const int64_t[::1] nx = np.ascontiguousarray(nxt, dtype=np.int64)
    cdef Py_ssize_t n = k.shape[0]
    if nx.shape[0] != n:
        raise ValueError("keys and nxt differ in length")
    out = np.zeros(n, dtype=np.uint8)
    cdef uint8_t[::1] evicted = out
    live_arr = np.zeros(n, dtype=np.uint8)  # the position holding its item's live entry
    cdef uint8_t[::1] live = live_arr
    cdef const int64_t[::1] prev = previous_requests(nx)
    cdef Py_ssize_t i
    cdef int64_t p, cached = 0, misses = 0
    cdef priority_queue[Entry] heap
    cdef Entry top
    with nogil:
        for i in range(n):
            p = prev[i]
            if p >= 0 and live[p]:  # a hit: the item's entry moves to this request
                live[p] = 0
            else:
                misses += 1
                if cached >= capacity:
                    while True:
                        top = heap.top()
                        heap.pop()
                        if live[top.second]:
                            break
                    live[top.second] = 0
                    evicted[top.second] = 1
                    cached -= 1
                cached += 1
            live[i] = 1
            heap.push(Entry(pair[int64_t, int64_t](nx[i], -k[i]), i))
    return misses, out.view(np.bool_)


def evicted_after_sized(keys, sizes, nxt, int64_t capacity):
    """``(misses, byte_misses, evicted_after)`` of the sized rule of
    ``semcached.cachepolicy.belady.belady_sized`` (its compiled twin): an item larger
    than the cache is not admitted; otherwise cached items go furthest-next-request
    first until it fits. An item's size is that of its latest request."""
    if capacity < 1:
        raise ValueError("capacity must be positive")
    cdef const int64_t[::1] k = np.ascontiguousarray(keys, dtype=np.int64)
    cdef const int64_t[::1] sz = np.ascontiguousarray(sizes, dtype=np.int64)
    cdef const int64_t[::1] nx = np.ascontiguousarray(nxt, dtype=np.int64)
    cdef Py_ssize_t n = k.shape[0]
    if nx.shape[0] != n or sz.shape[0] != n:
        raise ValueError("keys, sizes and nxt differ in length")
    out = np.zeros(n, dtype=np.uint8)
    cdef uint8_t[::1] evicted = out
    live_arr = np.zeros(n, dtype=np.uint8)
    cdef uint8_t[::1] live = live_arr
    cdef const int64_t[::1] prev = previous_requests(nx)
    cdef Py_ssize_t i
    cdef int64_t p, used = 0, misses = 0, byte_misses = 0
    cdef priority_queue[Entry] heap
    cdef Entry top
    with nogil:
        for i in range(n):
            p = prev[i]
            if p >= 0 and live[p]:  # a hit: the size may change, nothing is evicted
                used += sz[i] - sz[p]
                live[p] = 0
            else:
                misses += 1
                byte_misses += sz[i]
                if sz[i] > capacity:
                    evicted[i] = 1
                    continue
                while used + sz[i] > capacity:
                    top = heap.top()
                    heap.pop()
                    if not live[top.second]:
                        continue
                    live[top.second] = 0
                    evicted[top.second] = 1
                    used -= sz[top.second]
                used += sz[i]
            live[i] = 1
            heap.push(Entry(pair[int64_t, int64_t](nx[i], -k[i]), i))
    return misses, byte_misses, out.view(np.bool_)
