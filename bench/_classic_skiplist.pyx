"""A classic skiplist (one key per node), a baseline for bench/bskiplist.py.

The same latch, the same deterministic key heights (promotion probability
1/2, up to 24 levels) and the same top-down hand-over-hand protocol as
``semcached.ext.bskiplist``, so the benchmark isolates what B keys per node
and the cached ``next_header`` buy. Each level is a list of one-key nodes with
a down pointer (the index-node layout of Java's ConcurrentSkipListMap);
deciding whether to move right means dereferencing the next node (its key is
immutable, and it cannot be freed while its predecessor is latched).

Batch lookups are sorted and keep the level-0 node latched between keys, as in
the B-skiplist; batch inserts keep it for height-0 keys; batch deletes run
the single-key path in key order. A bench baseline, not shipped: bench/_build.py
compiles it (with ext/_shared.pxi on the include path) on first use.
"""

from libc.stdint cimport uintptr_t

import numpy as np

include "_shared.pxi"

__all__ = ["ClassicSkipList"]

cdef enum:
    LEVELS = 24


cdef struct CNode:
    sc_latch_t latch
    uint8_t header
    CNode* next
    uint64_t key
    uint64_t slot       # the value on level 0, the node below elsewhere


cdef struct CTree:
    CNode* heads[LEVELS]
    int top             # highest level ever used (atomic, only grows)
    uint64_t count
    uint64_t batches


cdef extern from *:
    """
    static inline int cs_load_int(const int *p) { return __atomic_load_n(p, __ATOMIC_RELAXED); }
    static inline void cs_raise_int(int *p, int v) {
        int cur = __atomic_load_n(p, __ATOMIC_RELAXED);
        while (cur < v && !__atomic_compare_exchange_n(p, &cur, v, 1, __ATOMIC_RELAXED,
                                                       __ATOMIC_RELAXED)) {}
    }
    """
    int cs_load_int(const int* p) noexcept nogil
    void cs_raise_int(int* p, int v) noexcept nogil


cdef inline CNode* down(const CNode* x) noexcept nogil:
    return <CNode*><uintptr_t>x.slot


cdef inline int height(uint64_t k) noexcept nogil:
    cdef int h = sc_ctz64(sc_mix64(k))
    return h if h < LEVELS - 1 else LEVELS - 1


cdef inline void latch(CNode* x, bint write) noexcept nogil:
    sc_latch(&x.latch, write)


cdef inline void unlatch(CNode* x, bint write) noexcept nogil:
    sc_unlatch(&x.latch, write)


cdef inline CNode* step_right(CNode* x, uint64_t k, bint write) noexcept nogil:
    cdef CNode* nxt = x.next
    while nxt != NULL and nxt.key <= k:
        latch(nxt, write)
        unlatch(x, write)
        x = nxt
        nxt = x.next
    return x


cdef inline bint is_key(const CNode* x, uint64_t k) noexcept nogil:
    return not x.header and x.key == k


cdef CNode* new_node(uint64_t k, uint64_t slot) noexcept nogil:
    cdef CNode* x = <CNode*>malloc(sizeof(CNode))
    if x != NULL:
        x.latch = 0
        x.header = 0
        x.next = NULL
        x.key = k
        x.slot = slot
    return x


cdef CNode* descend(CTree* t, uint64_t k, int stop, bint write) noexcept nogil:
    """Latch (read, or write on level `stop`) the level-`stop` node with the
    largest key <= k; levels above are read-latched and released."""
    cdef int level = cs_load_int(&t.top)
    cdef CNode* x
    cdef CNode* c
    if level < stop:
        level = stop
    x = t.heads[level]
    latch(x, write and level == stop)
    while True:
        x = step_right(x, k, write and level == stop)
        if level == stop:
            return x
        c = down(x)
        latch(c, write and level - 1 == stop)
        sc_runlock(&x.latch)
        x = c
        level -= 1


cdef bint cs_get(CTree* t, uint64_t k, uint64_t* value) noexcept nogil:
    cdef CNode* x = descend(t, k, 0, False)
    cdef bint found = is_key(x, k)
    if found:
        value[0] = x.slot
    sc_runlock(&x.latch)
    return found


cdef bint cs_successor(CTree* t, uint64_t k, uint64_t* out) noexcept nogil:
    cdef CNode* x = descend(t, k, 0, False)
    cdef bint found = True
    if is_key(x, k):
        out[0] = k
    elif x.next != NULL:
        out[0] = x.next.key
    else:
        found = False
    sc_runlock(&x.latch)
    return found


cdef int cs_insert(CTree* t, uint64_t k, uint64_t v) noexcept nogil:
    """1 if new, 0 if overwritten, -1 if out of memory."""
    cdef int h = height(k)
    cdef CNode* fresh[LEVELS]
    cdef CNode* x
    cdef CNode* c
    cdef int j, level
    for j in range(h + 1):
        fresh[j] = new_node(k, v if j == 0 else <uint64_t><uintptr_t>fresh[j - 1])
        if fresh[j] == NULL:
            while j > 0:
                j -= 1
                free(fresh[j])
            return -1
        fresh[j].latch = SC_WRITER    # reachable from above before it is linked
    cs_raise_int(&t.top, h)
    level = cs_load_int(&t.top)
    x = t.heads[level]
    latch(x, level <= h)
    while level > h:
        x = step_right(x, k, False)
        c = down(x)
        latch(c, level - 1 <= h)
        sc_runlock(&x.latch)
        x = c
        level -= 1
    x = step_right(x, k, True)
    if is_key(x, k):
        for j in range(h + 1):
            free(fresh[j])
        while level > 0:
            c = down(x)
            sc_wlock(&c.latch)
            sc_wunlock(&x.latch)
            x = c
            level -= 1
        x.slot = v
        sc_wunlock(&x.latch)
        return 0
    while True:
        fresh[level].next = x.next
        x.next = fresh[level]
        sc_wunlock(&fresh[level].latch)
        if level == 0:
            sc_count_add(&t.count, 1)
            sc_wunlock(&x.latch)
            return 1
        c = down(x)
        sc_wlock(&c.latch)
        sc_wunlock(&x.latch)
        x = step_right(c, k, True)
        level -= 1


cdef bint cs_delete(CTree* t, uint64_t k, uint64_t* value) noexcept nogil:
    cdef int h = height(k)
    cdef int level = cs_load_int(&t.top)
    cdef CNode* prev = NULL
    cdef CNode* x
    cdef CNode* c
    cdef CNode* nxt
    cdef CNode* left
    cdef CNode* target
    if h > level:
        return False        # every key of height h raised top to h first
    x = t.heads[level]
    latch(x, level <= h)
    while level > h:
        x = step_right(x, k, False)
        c = down(x)
        latch(c, level - 1 <= h)
        sc_runlock(&x.latch)
        x = c
        level -= 1
    # Level h: walk keeping the predecessor, which must drop k's node.
    while x.next != NULL and x.next.key <= k:
        nxt = x.next
        sc_wlock(&nxt.latch)
        if prev != NULL:
            sc_wunlock(&prev.latch)
        prev = x
        x = nxt
    if not is_key(x, k):
        sc_wunlock(&x.latch)
        if prev != NULL:
            sc_wunlock(&prev.latch)
        return False
    # k's top node was reached from prev: no node above points down at it.
    left = prev
    target = x
    while True:
        left.next = target.next
        if level == 0:
            value[0] = target.slot
            sc_count_add(&t.count, -1)
            free(target)
            sc_wunlock(&left.latch)
            return True
        nxt = down(target)
        c = down(left)
        sc_wlock(&c.latch)
        free(target)
        sc_wunlock(&left.latch)
        left = c
        target = nxt
        level -= 1
        while left.next != target:
            nxt = left.next
            sc_wlock(&nxt.latch)
            sc_wunlock(&left.latch)
            left = nxt
        sc_wlock(&target.latch)


cdef Py_ssize_t cs_scan(CTree* t, uint64_t lo, uint64_t hi, uint64_t* keys, uint64_t* values,
                        Py_ssize_t limit) noexcept nogil:
    cdef CNode* x = descend(t, lo, 0, False)
    cdef CNode* nxt
    cdef Py_ssize_t got = 0
    if is_key(x, lo) and limit > 0:
        keys[0] = x.key
        values[0] = x.slot
        got = 1
    while got < limit:
        nxt = x.next
        if nxt == NULL or nxt.key > hi:
            break
        sc_rlock(&nxt.latch)
        sc_runlock(&x.latch)
        x = nxt
        keys[got] = x.key
        values[got] = x.slot
        got += 1
    sc_runlock(&x.latch)
    return got


cdef inline bint covers(const CNode* x, uint64_t k) noexcept nogil:
    return (x.header or x.key <= k) and (x.next == NULL or k < x.next.key)


cdef CNode* reposition(CTree* t, CNode* x, uint64_t k, bint write) noexcept nogil:
    if x != NULL:
        if covers(x, k):
            return x
        unlatch(x, write)
    return descend(t, k, 0, write)


cdef Py_ssize_t batch_insert(CTree* t, const KeyItem* s, Py_ssize_t m, Py_ssize_t start,
                             bint* oom) noexcept nogil:
    cdef CNode* x = NULL
    cdef CNode* n
    cdef Py_ssize_t i, j, added = 0
    cdef uint64_t k, v
    cdef int res
    for i in range(m):
        j = i + start if i < m - start else i + start - m
        k = s[j].key
        v = s[j].item
        if height(k) == 0:
            x = reposition(t, x, k, True)
            if is_key(x, k):
                x.slot = v
                continue
            n = new_node(k, v)
            if n == NULL:
                oom[0] = True
                break
            n.latch = SC_WRITER
            n.next = x.next
            x.next = n
            sc_count_add(&t.count, 1)
            sc_wunlock(&x.latch)
            x = n
            added += 1
            continue
        if x != NULL:
            sc_wunlock(&x.latch)
            x = NULL
        res = cs_insert(t, k, v)
        if res < 0:
            oom[0] = True
            break
        added += res
    if x != NULL:
        sc_wunlock(&x.latch)
    return added


cdef void batch_lookup(CTree* t, const KeyItem* s, Py_ssize_t m, Py_ssize_t start, uint64_t* out,
                       uint8_t* found, bint successor) noexcept nogil:
    cdef CNode* x = NULL
    cdef Py_ssize_t i, j
    cdef uint64_t k
    for i in range(m):
        j = i + start if i < m - start else i + start - m
        k = s[j].key
        x = reposition(t, x, k, False)
        if is_key(x, k):
            out[s[j].item] = k if successor else x.slot
            found[s[j].item] = 1
        elif successor and x.next != NULL:
            out[s[j].item] = x.next.key
            found[s[j].item] = 1
    if x != NULL:
        sc_runlock(&x.latch)


cdef class ClassicSkipList:
    """Concurrent one-key-per-node skiplist, uint64 -> uint64 (benchmark baseline).

    Point operations O(log n) expected; a batch is grouped by key first, O(m).
    Like BSkipList, single-key methods keep the GIL and batches release it.
    """

    cdef CTree t

    def __cinit__(self):
        cdef int level
        for level in range(LEVELS):
            self.t.heads[level] = new_node(0, 0 if level == 0 else
                                           <uint64_t><uintptr_t>self.t.heads[level - 1])
            if self.t.heads[level] == NULL:
                raise MemoryError()
            self.t.heads[level].header = 1

    def __dealloc__(self):
        cdef int level
        cdef CNode* x
        cdef CNode* nxt
        for level in range(LEVELS):
            x = self.t.heads[level]
            while x != NULL:
                nxt = x.next
                free(x)
                x = nxt

    def __len__(self):
        return sc_count_load(&self.t.count)

    def insert(self, uint64_t key, uint64_t value):
        cdef int res
        res = cs_insert(&self.t, key, value)
        if res < 0:
            raise MemoryError()
        return res == 1

    def get(self, uint64_t key, default=None):
        cdef uint64_t value = 0
        cdef bint found
        found = cs_get(&self.t, key, &value)
        return value if found else default

    def successor(self, uint64_t key):
        cdef uint64_t out = 0
        cdef bint found
        found = cs_successor(&self.t, key, &out)
        return out if found else None

    def delete(self, uint64_t key):
        cdef uint64_t value
        cdef bint found
        found = cs_delete(&self.t, key, &value)
        return found

    def insert_many(self, keys, values):
        cdef cnp.ndarray ka = as_u64_array(keys, "keys")
        cdef cnp.ndarray va = as_u64_array(values, "values")
        cdef Py_ssize_t m = ka.shape[0], added = 0
        cdef const uint64_t* kp = u64_data(ka)
        cdef const uint64_t* vp = u64_data(va)
        cdef KeyItem* order = NULL
        cdef int shift
        cdef bint oom = False
        if va.shape[0] != m:
            raise ValueError("keys and values differ in length")
        if m == 0:
            return 0
        with nogil:
            order = sort_batch(kp, vp, m, &shift)
            if order != NULL:
                added = batch_insert(&self.t, order, m, batch_start(order, m, shift, &self.t.batches),
                                     &oom)
                free(order)
        if order == NULL or oom:
            raise MemoryError()
        return added

    cdef tuple _lookup_many(self, object keys, bint successor):
        cdef cnp.ndarray ka = as_u64_array(keys, "keys")
        cdef Py_ssize_t m = ka.shape[0]
        cdef cnp.ndarray out = new_array(m, cnp.NPY_UINT64)
        cdef cnp.ndarray found = new_array(m, cnp.NPY_BOOL)
        cdef const uint64_t* kp = u64_data(ka)
        cdef uint64_t* op = u64_data(out)
        cdef uint8_t* fp = bool_data(found)
        cdef KeyItem* order = NULL
        cdef int shift
        if m == 0:
            return out, found
        with nogil:
            order = sort_batch(kp, NULL, m, &shift)
            if order != NULL:
                batch_lookup(&self.t, order, m, batch_start(order, m, shift, &self.t.batches),
                             op, fp, successor)
                free(order)
        if order == NULL:
            raise MemoryError()
        return out, found

    def get_many(self, keys):
        """(values, found) in the order of keys."""
        return self._lookup_many(keys, False)

    def successor_many(self, keys):
        """(smallest stored key >= each key, found) in the order of keys."""
        return self._lookup_many(keys, True)

    def delete_many(self, keys):
        cdef cnp.ndarray ka = as_u64_array(keys, "keys")
        cdef Py_ssize_t j, m = ka.shape[0], removed = 0
        cdef const uint64_t* kp = u64_data(ka)
        cdef KeyItem* order = NULL
        cdef int shift
        cdef uint64_t value
        if m == 0:
            return 0
        with nogil:
            order = sort_batch(kp, NULL, m, &shift)
            if order != NULL:
                for j in range(m):
                    removed += cs_delete(&self.t, order[j].key, &value)
                free(order)
        if order == NULL:
            raise MemoryError()
        return removed

    def range_to_arrays(self, uint64_t lo, uint64_t hi_inclusive, Py_ssize_t limit):
        """Up to limit (key, value) pairs with lo <= key <= hi_inclusive."""
        cdef cnp.ndarray ka = new_array(max(limit, 1), cnp.NPY_UINT64)
        cdef cnp.ndarray va = new_array(max(limit, 1), cnp.NPY_UINT64)
        cdef uint64_t* kp = u64_data(ka)
        cdef uint64_t* vp = u64_data(va)
        cdef Py_ssize_t got
        with nogil:
            got = cs_scan(&self.t, lo, hi_inclusive, kp, vp, limit)
        return ka[:got], va[:got]

    def _check(self):
        """Levels sorted, level l+1 keys a subset of level l, count matches."""
        cdef int level
        cdef CNode* x
        prev_keys = None
        for level in range(LEVELS):
            keys = []
            x = self.t.heads[level].next
            while x != NULL:
                if sc_latch_peek(&x.latch) != 0:
                    raise AssertionError(f"level {level}: latch left held")
                if height(x.key) < level:
                    raise AssertionError(f"level {level}: key {x.key} too low")
                if level > 0 and down(x).key != x.key:
                    raise AssertionError(f"level {level}: key {x.key} points down elsewhere")
                keys.append(x.key)
                x = x.next
            if keys != sorted(set(keys)):
                raise AssertionError(f"level {level}: keys out of order")
            if prev_keys is not None and keys != [k for k in prev_keys if height(k) >= level]:
                raise AssertionError(f"level {level}: not the level-{level - 1} keys of its height")
            if level == 0 and len(keys) != <Py_ssize_t>sc_count_load(&self.t.count):
                raise AssertionError("count mismatch")
            prev_keys = keys
