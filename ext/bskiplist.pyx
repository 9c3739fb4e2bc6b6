"""A concurrent B-skiplist: an ordered map from uint64 keys to uint64 values.

(About 1250 lines, over the house's 400: one Cython extension type with its node
layout, latching protocol and iterators, which share C-level declarations that
cannot cross a module boundary without a .pxd and an indirection per call.)

After Luo, Hao, Wheatman, Pandey and Xu, "Bridging Cache-Friendliness and
Concurrency: A Locality-Optimized In-Memory B-Skiplist" (ICPP'25).

Layout.  Five levels (0 = leaves holding values, 1..4 = index levels holding
child pointers).  Every level is a singly linked list of nodes of up to B
sorted keys, starting at a header node whose slot 0 is a sentinel that stands
for minus infinity; a flag marks headers, so all 2**64 keys stay available.
Each node caches the first key of its successor (``next_header``), so deciding
whether to move right never touches the next node.  A key's height h (0..4)
is a fixed function of the key (trailing zero digits, base ~B/2, of a mixed
hash); the key is present on levels 0..h.  On level l+1 the child of key x is
the level-l node whose first key is x; nodes split off by overflow are
reached through ``next`` only.

Invariants (all checked by ``BSkipList._check``): keys ascend within and
across the nodes of a level; every non-header node is non-empty;
``next_header`` equals the next node's first key; level l holds exactly the
keys of height >= l; a key of height > l is the first key of its level-l node
and its level-(l+1) slot points at that node.

Concurrency.  Every operation descends top-down with hand-over-hand latch
coupling (the child or right neighbour is latched before the current node is
released), read latches above the key's height and write latches at and
below it.  Insertion splits on the way down (an overflow split at the key's
own level, a split at the key on each level below, both only ever adding a
node to the right), deletion never merges, so no operation climbs back up,
upgrades a latch or restarts.  Latches are taken in one global order (levels
top-down, each level left to right; the pre-allocated nodes of an insertion
are latched before they become reachable and are reached only through the
inserter's own path), so the scheme cannot deadlock.

Memory reclamation.  A node is freed only by the deletion that empties it,
after it has been unlinked while its predecessor (the only node pointing at
it, since its first key was the deleted one, no parent points at it any more)
was write-latched, and after the deleter has write-latched the node itself.
Every traversal latches a node while still holding the latch of the node it
came from, so at that point no thread holds, or is waiting for, the freed
node's latch: immediate ``free`` is safe without deferred reclamation.
"""

from libc.stdint cimport uint16_t, uintptr_t
from libc.string cimport memmove

import numpy as np

include "_shared.pxi"

__all__ = ["DEFAULT_NODE_SIZE", "HEIGHT", "MAX_KEY", "BSkipList"]

cdef extern from *:
    """
    #include <stddef.h>
    #include <stdlib.h>
    typedef struct bs_node {
        sc_latch_t latch;
        uint16_t n;            /* keys in use, sentinel included */
        uint8_t level;
        uint8_t header;        /* 1 for a level's header: keys[0] is -infinity */
        struct bs_node *next;
        uint64_t next_header;  /* next->keys[0], valid when next != NULL */
        char pad_[64 - 24];    /* keys start on their own cache line */
        uint64_t keys[];       /* keys[0..B), then slots[0..B): values or children */
    } bs_node;
    _Static_assert(offsetof(bs_node, keys) == 64, "bs_node header must be 64 bytes");

    static inline bs_node *bs_alloc(size_t bytes) {
        return (bs_node *)aligned_alloc(64, bytes);
    }
    """
    cdef struct bs_node:
        sc_latch_t latch
        uint16_t n
        uint8_t level
        uint8_t header
        bs_node* next
        uint64_t next_header
        uint64_t keys[1]
    bs_node* bs_alloc(size_t nbytes) noexcept nogil
    void __builtin_prefetch(const void* p) noexcept nogil

ctypedef bs_node Node

cdef enum:
    H = 5             # levels, fixed as in the paper

HEIGHT = H
MAX_KEY = 0xFFFFFFFFFFFFFFFF
# From bench/bskiplist.py's sweep of B = 32/64/128 at 1M keys: B=64 gave the
# fastest single-key get/successor (~10 % ahead of 32 and 128) and was within
# run-to-run noise of B=128 on batches; smaller nodes also shorten the shifts
# done under a write latch.
DEFAULT_NODE_SIZE = 64

cdef int MIN_NODE_SIZE = 4
cdef int MAX_NODE_SIZE = 4096

cdef enum:
    SCAN_CHUNK = 512    # entries an iterator reads per latched pass
    KEYS = 0
    VALUES = 1
    ITEMS = 2


cdef struct Tree:
    Node* heads[H]
    int B             # keys per node
    int bits          # log2 of the promotion base: P(height >= l) = 2**(-bits*l)
    size_t node_bytes
    uint64_t count    # atomic; changed under the leaf's write latch
    uint64_t batches  # atomic ticket, spreads concurrent batches (batch_start)


# ---------------------------------------------------------------- node helpers

cdef inline uint64_t* slots(const Tree* t, Node* x) noexcept nogil:
    return x.keys + t.B


cdef inline Node* child(const Tree* t, Node* x, int i) noexcept nogil:
    return <Node*><uintptr_t>x.keys[t.B + i]


cdef inline void prefetch_keys(const Tree* t, const Node* x) noexcept nogil:
    # The node's key lines are fetched in parallel with its latch line, so a
    # node costs about one memory latency rather than one per probe.
    cdef int i
    for i in range(0, t.B, 8):
        __builtin_prefetch(x.keys + i)


cdef inline void latch(Node* x, bint write) noexcept nogil:
    sc_latch(&x.latch, write)


cdef inline void unlatch(Node* x, bint write) noexcept nogil:
    sc_unlatch(&x.latch, write)


cdef inline int key_height(const Tree* t, uint64_t k) noexcept nogil:
    cdef int h = sc_ctz64(sc_mix64(k)) // t.bits
    return h if h < H - 1 else H - 1


cdef inline int upper(const Node* x, uint64_t k) noexcept nogil:
    """Index of the first key > k in x (the sentinel counts as -infinity)."""
    # Branch-free binary search: the comparison feeds a conditional move.
    cdef const uint64_t* base = x.keys + x.header
    cdef int n = x.n - x.header
    cdef int half
    if n <= 0:
        return x.header
    while n > 1:
        half = n >> 1
        base = base + half if base[half] <= k else base
        n -= half
    return <int>(base - x.keys) + (base[0] <= k)


cdef inline bint holds(const Node* x, int r, uint64_t k) noexcept nogil:
    """Whether slot r of x is the real key k (not the sentinel)."""
    return r >= x.header and x.keys[r] == k


cdef Node* new_node(const Tree* t, int level, bint header) noexcept nogil:
    cdef Node* x = bs_alloc(t.node_bytes)
    if x != NULL:
        x.latch = 0
        x.n = 0
        x.level = <uint8_t>level
        x.header = header
        x.next = NULL
        x.next_header = 0
    return x


cdef inline Node* step_right(Node* x, uint64_t k, bint write) noexcept nogil:
    """Latch-couple rightwards while the next node starts at or below k."""
    cdef Node* nxt
    while x.next != NULL and x.next_header <= k:
        nxt = x.next
        latch(nxt, write)
        unlatch(x, write)
        x = nxt
    return x


cdef inline void insert_at(const Tree* t, Node* x, int i, uint64_t k, uint64_t slot) noexcept nogil:
    cdef uint64_t* s = slots(t, x)
    cdef int tail = x.n - i
    if tail > 0:
        memmove(x.keys + i + 1, x.keys + i, tail * sizeof(uint64_t))
        memmove(s + i + 1, s + i, tail * sizeof(uint64_t))
    x.keys[i] = k
    s[i] = slot
    x.n += 1


cdef inline void remove_at(const Tree* t, Node* x, int i) noexcept nogil:
    cdef uint64_t* s = slots(t, x)
    cdef int tail = x.n - i - 1
    if tail > 0:
        memmove(x.keys + i, x.keys + i + 1, tail * sizeof(uint64_t))
        memmove(s + i, s + i + 1, tail * sizeof(uint64_t))
    x.n -= 1


cdef inline void move_tail(const Tree* t, Node* src, int start, Node* dst) noexcept nogil:
    """Append src's entries [start, n) to dst and cut them from src."""
    cdef int cnt = src.n - start
    if cnt > 0:
        memmove(dst.keys + dst.n, src.keys + start, cnt * sizeof(uint64_t))
        memmove(slots(t, dst) + dst.n, slots(t, src) + start, cnt * sizeof(uint64_t))
        dst.n += cnt
        src.n = <uint16_t>start


cdef inline void link_after(Node* x, Node* m) noexcept nogil:
    m.next = x.next
    m.next_header = x.next_header
    x.next = m
    x.next_header = m.keys[0]


# ---------------------------------------------------------------- operations
# All run without the GIL; each takes and releases its own latches.

cdef Node* descend(const Tree* t, uint64_t k, int* pos, bint write_leaf) noexcept nogil:
    """Latch the leaf covering k (write-latched if write_leaf, else read).

    Upper levels are read-latched. *pos = rank of the largest key <= k; for a
    header leaf, *pos == 0 means no key <= k exists.
    """
    cdef Node* x = t.heads[H - 1]
    cdef Node* c
    cdef int level = H - 1
    cdef int r
    cdef bint found = False
    sc_rlock(&x.latch)
    while True:
        x = step_right(x, k, write_leaf and level == 0)
        if found:
            r = 0           # found higher up: this node starts with k
        else:
            r = upper(x, k) - 1
            found = holds(x, r, k)
        if level == 0:
            pos[0] = r
            return x
        c = child(t, x, r)
        prefetch_keys(t, c)
        latch(c, write_leaf and level == 1)
        sc_runlock(&x.latch)
        x = c
        level -= 1


cdef bint bs_get(const Tree* t, uint64_t k, uint64_t* value) noexcept nogil:
    cdef int r
    cdef Node* leaf = descend(t, k, &r, False)
    cdef bint found = holds(leaf, r, k)
    if found:
        value[0] = slots(t, leaf)[r]
    sc_runlock(&leaf.latch)
    return found


cdef bint bs_predecessor(const Tree* t, uint64_t k, uint64_t* key) noexcept nogil:
    cdef int r
    cdef Node* leaf = descend(t, k, &r, False)
    cdef bint found = r >= leaf.header
    if found:
        key[0] = leaf.keys[r]
    sc_runlock(&leaf.latch)
    return found


cdef Py_ssize_t bs_scan(const Tree* t, uint64_t lo, uint64_t hi, uint64_t* keys,
                        uint64_t* values, Py_ssize_t limit) noexcept nogil:
    """Copy up to limit entries with lo <= key <= hi, in key order.

    Each leaf is read under its latch; leaves are visited hand over hand.
    """
    cdef int r
    cdef Node* x = descend(t, lo, &r, False)
    cdef Node* nxt
    cdef Py_ssize_t got = 0
    cdef int i = r if holds(x, r, lo) else r + 1
    cdef uint64_t* s
    while got < limit:
        s = slots(t, x)
        while i < x.n and got < limit:
            if x.keys[i] > hi:
                sc_runlock(&x.latch)
                return got
            keys[got] = x.keys[i]
            if values != NULL:
                values[got] = s[i]
            got += 1
            i += 1
        nxt = x.next
        if got == limit or nxt == NULL or x.next_header > hi:
            break
        sc_rlock(&nxt.latch)
        sc_runlock(&x.latch)
        x = nxt
        i = 0
    sc_runlock(&x.latch)
    return got


cdef void free_nodes(Node** nodes, int count) noexcept nogil:
    cdef int j
    for j in range(count):
        free(nodes[j])


cdef Node* split_full(const Tree* t, Node* x, uint64_t k) noexcept nogil:
    """Overflow split of the write-latched full node x (k not in it).

    Moves the upper half to a new right neighbour and returns whichever half
    covers k, still write-latched (the other is released). Out of memory:
    releases x and returns NULL.
    """
    cdef Node* m = new_node(t, x.level, False)
    if m == NULL:
        sc_wunlock(&x.latch)
        return NULL
    m.latch = SC_WRITER
    move_tail(t, x, t.B // 2, m)
    link_after(x, m)
    if k >= m.keys[0]:
        sc_wunlock(&x.latch)
        return m
    sc_wunlock(&m.latch)
    return x


cdef int bs_insert(Tree* t, uint64_t k, uint64_t v) noexcept nogil:
    """Insert or overwrite. Returns 1 if k is new, 0 if overwritten, -1 if out of memory."""
    cdef int h = key_height(t, k)
    cdef Node* fresh[H]     # fresh[j]: the node k will start on level j < h
    cdef Node* x
    cdef Node* c
    cdef Node* m
    cdef int j, r
    cdef int level = H - 1

    # Allocate (and write-latch) the promotion nodes before taking any latch.
    for j in range(h):
        fresh[j] = new_node(t, j, False)
        if fresh[j] == NULL:
            free_nodes(fresh, j)
            return -1
        fresh[j].latch = SC_WRITER
        fresh[j].n = 1
        fresh[j].keys[0] = k
        slots(t, fresh[j])[0] = v if j == 0 else <uint64_t><uintptr_t>fresh[j - 1]

    x = t.heads[H - 1]
    latch(x, level <= h)
    while level > h:        # pass through with read latches
        x = step_right(x, k, False)
        c = child(t, x, upper(x, k) - 1)
        latch(c, level - 1 <= h)
        sc_runlock(&x.latch)
        x = c
        level -= 1

    # Level h: k goes in here, unless it is already present.
    x = step_right(x, k, True)
    r = upper(x, k) - 1
    if holds(x, r, k):
        free_nodes(fresh, h)
        while level > 0:    # present on every level below: follow its first slots
            c = child(t, x, r)
            sc_wlock(&c.latch)
            sc_wunlock(&x.latch)
            x = c
            r = 0
            level -= 1
        slots(t, x)[r] = v
        sc_wunlock(&x.latch)
        return 0
    if x.n == t.B:
        # Nothing is modified yet, so running out of memory can still back out.
        x = split_full(t, x, k)
        if x == NULL:
            free_nodes(fresh, h)
            return -1
        r = upper(x, k) - 1
    insert_at(t, x, r + 1, k, v if level == 0 else <uint64_t><uintptr_t>fresh[level - 1])

    # Levels below h: split the covering node at k; the tail goes to fresh[level].
    while level > 0:
        c = child(t, x, r)
        sc_wlock(&c.latch)
        sc_wunlock(&x.latch)
        x = c
        level -= 1
        x = step_right(x, k, True)
        r = upper(x, k) - 1
        m = fresh[level]
        move_tail(t, x, r + 1, m)
        link_after(x, m)
        sc_wunlock(&m.latch)
    sc_count_add(&t.count, 1)
    sc_wunlock(&x.latch)
    return 1


cdef bint bs_delete(Tree* t, uint64_t k, uint64_t* value) noexcept nogil:
    """Remove k; store its value. Returns whether k was present."""
    cdef int h = key_height(t, k)
    cdef int level = H - 1
    cdef int r
    cdef Node* x = t.heads[H - 1]
    cdef Node* prev = NULL
    cdef Node* c
    cdef Node* nxt
    cdef Node* left
    cdef Node* target
    cdef Node* left_below = NULL
    cdef Node* target_below = NULL
    cdef Node* dead = NULL

    latch(x, level <= h)
    while level > h:
        x = step_right(x, k, False)
        c = child(t, x, upper(x, k) - 1)
        latch(c, level - 1 <= h)
        sc_runlock(&x.latch)
        x = c
        level -= 1

    # Level h: walk right keeping the predecessor latched too, in case k
    # heads its node and the predecessor's next_header must change.
    while x.next != NULL and x.next_header <= k:
        nxt = x.next
        sc_wlock(&nxt.latch)
        if prev != NULL:
            sc_wunlock(&prev.latch)
        prev = x
        x = nxt
    r = upper(x, k) - 1
    if not holds(x, r, k):
        sc_wunlock(&x.latch)
        if prev != NULL:
            sc_wunlock(&prev.latch)
        return False
    if level == 0:
        value[0] = slots(t, x)[r]
    else:
        target_below = child(t, x, r)
        # The level-(h-1) node just left of k's child hangs below k's left neighbour.
        left_below = child(t, x, r - 1) if r > 0 else child(t, prev, prev.n - 1)
    remove_at(t, x, r)
    if r == 0:
        # k headed x (so x is no header and was reached from prev, and no
        # parent points at it): fix prev's cache, or unlink the now empty x.
        if x.n == 0:
            prev.next = x.next
            prev.next_header = x.next_header
            dead = x
        else:
            prev.next_header = x.keys[0]
    if level == 0:
        sc_count_add(&t.count, -1)
    else:
        sc_wlock(&left_below.latch)
    if dead != NULL:
        free(dead)
    else:
        sc_wunlock(&x.latch)
    if prev != NULL:
        sc_wunlock(&prev.latch)
    if level == 0:
        return True

    # Levels below h: k heads target; remove it, fixing the left neighbour.
    left = left_below
    target = target_below
    while True:
        level -= 1
        while left.next != target:
            nxt = left.next
            sc_wlock(&nxt.latch)
            sc_wunlock(&left.latch)
            left = nxt
        sc_wlock(&target.latch)
        if level == 0:
            value[0] = slots(t, target)[0]
        else:
            target_below = child(t, target, 0)
            left_below = child(t, left, left.n - 1)
        remove_at(t, target, 0)
        if target.n == 0:
            left.next = target.next
            left.next_header = target.next_header
            free(target)
        else:
            left.next_header = target.keys[0]
            sc_wunlock(&target.latch)
        if level == 0:
            sc_count_add(&t.count, -1)
            sc_wunlock(&left.latch)
            return True
        sc_wlock(&left_below.latch)
        sc_wunlock(&left.latch)
        left = left_below
        target = target_below


# ---------------------------------------------------------------- batches
# A batch is first grouped by key (sort_batch: a stable radix sort on the high
# bits), then applied keeping the leaf of the previous key latched while the
# next key falls into it, so a dense batch costs little more than a merge
# with the leaf level. Order within a leaf does not matter for correctness,
# only for speed. Keys of height > 0, and deletions of a leaf's first key
# without its left neighbour at hand, take the full single-key path. The
# held leaf is always released before a descent starts at the top, which
# keeps latch acquisition in the global top-down order.

cdef inline bint covers(const Node* x, uint64_t k) noexcept nogil:
    return (x.header or x.keys[0] <= k) and (x.next == NULL or k < x.next_header)


cdef Node* reposition(const Tree* t, Node* x, uint64_t k, bint write) noexcept nogil:
    """Return a latched leaf covering k, reusing the latched leaf x (or NULL)
    when it or its right neighbour covers k, else descending afresh."""
    cdef Node* nxt
    cdef int r
    if x != NULL:
        if covers(x, k):
            return x
        if x.next != NULL and k >= x.next_header:
            nxt = x.next
            latch(nxt, write)
            unlatch(x, write)
            x = nxt
            if x.next == NULL or k < x.next_header:
                return x
        unlatch(x, write)
    return descend(t, k, &r, write)


cdef Py_ssize_t batch_insert(Tree* t, const KeyItem* s, Py_ssize_t m, Py_ssize_t start,
                             bint* oom) noexcept nogil:
    cdef Node* x = NULL
    cdef Py_ssize_t i, j, added = 0
    cdef uint64_t k, v
    cdef int r, res
    for i in range(m):
        j = i + start if i < m - start else i + start - m
        k = s[j].key
        v = s[j].item
        if key_height(t, k) > 0:
            if x != NULL:
                sc_wunlock(&x.latch)
                x = NULL
            res = bs_insert(t, k, v)
            if res < 0:
                oom[0] = True
                return added
            added += res
            continue
        x = reposition(t, x, k, True)
        r = upper(x, k) - 1
        if holds(x, r, k):
            slots(t, x)[r] = v
            continue
        if x.n == t.B:
            x = split_full(t, x, k)
            if x == NULL:
                oom[0] = True
                return added
            r = upper(x, k) - 1
        insert_at(t, x, r + 1, k, v)
        sc_count_add(&t.count, 1)
        added += 1
    if x != NULL:
        sc_wunlock(&x.latch)
    return added


cdef Py_ssize_t batch_delete(Tree* t, const KeyItem* s, Py_ssize_t m,
                             Py_ssize_t start) noexcept nogil:
    # The finger is a pair: leaf x and, when known, its left neighbour prev
    # (prev.next == x whenever prev is set), both write-latched, so deleting
    # x's first key (every key, when a sorted run empties a leaf) can fix
    # prev's next_header, or unlink x, in place.
    cdef Node* prev = NULL
    cdef Node* x = NULL
    cdef Node* nxt
    cdef Py_ssize_t i, j, removed = 0
    cdef uint64_t k, value
    cdef int r
    for i in range(m):
        j = i + start if i < m - start else i + start - m
        k = s[j].key
        if key_height(t, k) == 0 and k > 0:
            if x != NULL and not covers(x, k):
                if x.next != NULL and k >= x.next_header:
                    nxt = x.next
                    sc_wlock(&nxt.latch)
                    if prev != NULL:
                        sc_wunlock(&prev.latch)
                    prev = x
                    x = nxt
                if not covers(x, k):
                    release_pair(prev, x)
                    prev = x = NULL
            if x == NULL:
                # The leaf covering k - 1 holds k, or is the left neighbour
                # of the leaf that k heads.
                x = descend(t, k - 1, &r, True)
                if not covers(x, k):
                    prev = x
                    x = prev.next
                    sc_wlock(&x.latch)
            r = upper(x, k) - 1
            if not holds(x, r, k):
                continue
            if r > 0 or prev != NULL:
                remove_at(t, x, r)
                sc_count_add(&t.count, -1)
                removed += 1
                if r == 0 and x.n == 0:
                    prev.next = x.next
                    prev.next_header = x.next_header
                    free(x)
                    x = prev
                    prev = NULL
                elif r == 0:
                    prev.next_header = x.keys[0]
                continue
        # Promoted keys (and leaf heads with no left neighbour at hand).
        release_pair(prev, x)
        prev = x = NULL
        removed += bs_delete(t, k, &value)
    release_pair(prev, x)
    return removed


cdef inline void release_pair(Node* prev, Node* x) noexcept nogil:
    if prev != NULL:
        sc_wunlock(&prev.latch)
    if x != NULL:
        sc_wunlock(&x.latch)


cdef void batch_get(const Tree* t, const KeyItem* s, Py_ssize_t m, Py_ssize_t start,
                    uint64_t* values, uint8_t* found) noexcept nogil:
    cdef Node* x = NULL
    cdef Py_ssize_t i, j
    cdef uint64_t k
    cdef int r
    for i in range(m):
        j = i + start if i < m - start else i + start - m
        k = s[j].key
        x = reposition(t, x, k, False)
        r = upper(x, k) - 1
        if holds(x, r, k):
            values[s[j].item] = slots(t, x)[r]
            found[s[j].item] = 1
    if x != NULL:
        sc_runlock(&x.latch)


cdef void batch_successor(const Tree* t, const KeyItem* s, Py_ssize_t m, Py_ssize_t start,
                          uint64_t* out, uint8_t* found) noexcept nogil:
    cdef Node* x = NULL
    cdef Py_ssize_t i, j
    cdef uint64_t k
    cdef int pos
    for i in range(m):
        j = i + start if i < m - start else i + start - m
        k = s[j].key
        x = reposition(t, x, k, False)
        pos = upper(x, k) - 1
        if not holds(x, pos, k):
            pos += 1
        if pos < x.n:
            out[s[j].item] = x.keys[pos]
            found[s[j].item] = 1
        elif x.next != NULL:    # the cached first key of the next leaf
            out[s[j].item] = x.next_header
            found[s[j].item] = 1
    if x != NULL:
        sc_runlock(&x.latch)


cdef void bs_clear(Tree* t) noexcept nogil:
    """Empty the map while other threads may be operating on it.

    Holding the top header's write latch keeps new operations out. Each level
    is then swept left to right with write latches; operations already inside
    only move down and right, so the sweep waits behind them and never frees a
    node one of them holds or is about to latch.
    """
    cdef int level
    cdef Node* hd
    cdef Node* x
    cdef Node* nxt
    sc_wlock(&t.heads[H - 1].latch)
    for level in range(H - 1, -1, -1):
        hd = t.heads[level]
        if level < H - 1:
            sc_wlock(&hd.latch)
        x = hd.next
        if x != NULL:
            sc_wlock(&x.latch)
            while x.next != NULL:
                nxt = x.next
                sc_wlock(&nxt.latch)
                free(x)
                x = nxt
            free(x)
        hd.next = NULL
        hd.n = 1
        if level < H - 1:
            sc_wunlock(&hd.latch)
    sc_count_store(&t.count, 0)
    sc_wunlock(&t.heads[H - 1].latch)


cdef void free_all(Tree* t) noexcept nogil:
    cdef int level
    cdef Node* x
    cdef Node* nxt
    for level in range(H):
        x = t.heads[level]
        while x != NULL:
            nxt = x.next
            free(x)
            x = nxt
        t.heads[level] = NULL


# ---------------------------------------------------------------- Python API

cdef inline uint64_t as_key(object o) except? 0:
    """A Python int (or __index__ object) as uint64; OverflowError out of range."""
    # Explicit because Cython's own argument conversion would accept floats.
    if type(o) is not int:
        o = _operator.index(o)
    return o

cdef inline uint64_t hi_inclusive(object hi, bint* empty) except? 0:
    """Map an exclusive Python bound (None = unbounded) to an inclusive uint64."""
    if hi is None or hi == 2 ** 64:
        return 0xFFFFFFFFFFFFFFFF
    if hi < 0 or hi > 2 ** 64:
        raise OverflowError(f"range bound {hi!r} outside 0 .. 2**64")
    if hi == 0:
        empty[0] = True
        return 0
    return <uint64_t>(hi - 1)


cdef class BSkipList:
    """Concurrent ordered map from uint64 keys to uint64 values (a B-skiplist).

    ``BSkipList(node_size=64)``: ``node_size`` (B, 4 .. 4096) is the number of
    keys per node; a key reaches level l with probability (2/B)**l (rounded
    to a power of two), as in the paper, so nodes fill to about B/2.

    Keys and values are Python ints in 0 .. 2**64-1; anything else raises
    OverflowError (or TypeError for non-integers).  Batch methods take and
    return numpy uint64 arrays and run the whole batch without the GIL;
    single-key methods run the same GIL-free code but keep the GIL, which is
    cheaper for one key (see the comment at ``insert``).

    Thread safety: every method may be called from any number of threads at
    once.  Single-key operations are linearizable.  ``len()`` is exact: the
    count changes under the leaf latch of each insert/delete.  Scans
    (``range``, ``keys``, ``items``, ``values``, iteration,
    ``range_to_arrays``) are consistent per leaf node, not a snapshot: keys
    come out strictly ascending, each at most once, every key present for
    the whole scan is seen, and keys inserted or deleted during the scan may
    or may not be.  Python-level iterators read the map in chunks and never
    hold a latch between two ``next()`` calls.  ``clear()`` is safe against
    concurrent operations (it waits for those already inside).  Batches are
    not atomic: each key is one operation.

    Complexity: with n keys, every point operation visits five levels,
    O(log B) per node for the search plus O(B) for shifting within a node on
    insert/delete; the expected number of nodes walked on the top level is
    about 1 + n * (2/B)**5, so up to roughly (B/2)**5 keys (3.3e7 at B=64)
    a point operation costs O(B + log n).
    """

    cdef Tree t

    def __cinit__(self, int node_size=DEFAULT_NODE_SIZE):
        cdef int level, bits = 0
        if not MIN_NODE_SIZE <= node_size <= MAX_NODE_SIZE:
            raise ValueError(
                f"node_size must be in {MIN_NODE_SIZE} .. {MAX_NODE_SIZE}, got {node_size}")
        while (2 << bits) <= node_size:
            bits += 1
        self.t.B = node_size
        self.t.bits = bits - 1          # base 2**(floor(log2 B) - 1) ~ B/2
        self.t.node_bytes = (64 + 16 * <size_t>node_size + 63) // 64 * 64
        for level in range(H):
            self.t.heads[level] = new_node(&self.t, level, True)
            if self.t.heads[level] == NULL:
                raise MemoryError()
            self.t.heads[level].n = 1
            self.t.heads[level].keys[0] = 0
            slots(&self.t, self.t.heads[level])[0] = (
                0 if level == 0 else <uint64_t><uintptr_t>self.t.heads[level - 1])

    def __dealloc__(self):
        # No other thread can be inside: each running method holds a reference.
        free_all(&self.t)

    @property
    def node_size(self) -> int:
        """B, the number of keys a node holds."""
        return self.t.B

    def __repr__(self):
        return f"BSkipList(len={len(self)}, node_size={self.t.B})"

    def __len__(self):
        """Number of keys. O(1), exact under concurrency."""
        return sc_count_load(&self.t.count)

    def __bool__(self):
        return sc_count_load(&self.t.count) != 0

    # ------------------------------------------------------------ single keys
    # These call their GIL-free core without releasing the GIL: releasing and
    # retaking it costs about 70 ns, a third of a cached lookup, and invites
    # the convoy effect (another thread takes the GIL and may keep it for a
    # whole switch interval).  It cannot deadlock: no thread ever waits for
    # the GIL while holding a latch.  Batches, range_to_arrays() and clear()
    # release the GIL.

    def insert(self, key, value):
        """Map key to value; return True if key was new, False if overwritten.

        O(B + log n).
        """
        cdef uint64_t k = as_key(key), v = as_key(value)
        cdef int res
        res = bs_insert(&self.t, k, v)
        if res < 0:
            raise MemoryError()
        return res == 1

    def get(self, key, default=None):
        """Return the value of key, or default if absent. O(log n)."""
        cdef uint64_t k = as_key(key), value = 0
        cdef bint found
        found = bs_get(&self.t, k, &value)
        return value if found else default

    def __contains__(self, key):
        """Whether key is present. O(log n)."""
        cdef uint64_t k, value
        cdef bint found
        try:
            k = as_key(key)
        except (OverflowError, TypeError):
            return False
        found = bs_get(&self.t, k, &value)
        return found

    def delete(self, key):
        """Remove key; return whether it was present. O(B + log n)."""
        cdef uint64_t k = as_key(key), value
        cdef bint found
        found = bs_delete(&self.t, k, &value)
        return found

    def pop_min(self):
        """Remove and return the (key, value) pair with the smallest key.

        Raises KeyError when empty.  Under concurrency it returns a pair that
        was the minimum when looked up and that this call removed (a smaller
        key inserted meanwhile may remain).  O(B + log n).
        """
        cdef uint64_t k, value
        cdef Py_ssize_t got
        cdef bint removed = False
        while True:
            got = bs_scan(&self.t, 0, 0xFFFFFFFFFFFFFFFF, &k, NULL, 1)
            if got == 0:
                break
            if bs_delete(&self.t, k, &value):
                removed = True
                break
        if not removed:
            raise KeyError("pop_min from an empty BSkipList")
        return k, value

    def min(self):
        """Smallest key. Raises ValueError when empty. O(log n)."""
        result = self.successor(0)
        if result is None:
            raise ValueError("min() of an empty BSkipList")
        return result

    def max(self):
        """Largest key. Raises ValueError when empty. O(log n)."""
        result = self.predecessor(MAX_KEY)
        if result is None:
            raise ValueError("max() of an empty BSkipList")
        return result

    def successor(self, key):
        """Smallest key >= key (inclusive lower bound), or None. O(log n)."""
        cdef uint64_t q = as_key(key), k
        cdef Py_ssize_t got
        got = bs_scan(&self.t, q, 0xFFFFFFFFFFFFFFFF, &k, NULL, 1)
        return k if got else None

    def predecessor(self, key):
        """Largest key <= key (inclusive), or None. O(log n)."""
        cdef uint64_t q = as_key(key), k
        cdef bint found
        found = bs_predecessor(&self.t, q, &k)
        return k if found else None

    def clear(self):
        """Remove every key. Safe under concurrency (waits for operations in
        progress, blocks new ones meanwhile). O(n)."""
        with nogil:
            bs_clear(&self.t)

    # ------------------------------------------------------------ iteration

    cdef _scan(self, object lo, object hi, int what):
        cdef _Scan it = _Scan.__new__(_Scan)
        cdef bint empty = False
        it.owner = self
        it.t = &self.t
        it.hi = hi_inclusive(hi, &empty)
        it.cur = as_key(lo)
        it.what = what
        it.cap = 32             # small first read: callers often stop early
        it.done = empty or it.cur > it.hi
        return it

    def range(self, lo=0, hi=None):
        """Iterate (key, value) pairs with lo <= key < hi, ascending.

        ``hi`` is exclusive; None (or 2**64) means no upper bound.  Consistent
        per node, not a snapshot (see the class docstring).  O(log n + m) for
        m pairs.
        """
        return self._scan(lo, hi, ITEMS)

    def items(self, lo=0, hi=None):
        """Iterate (key, value) pairs with lo <= key < hi. O(log n + m)."""
        return self._scan(lo, hi, ITEMS)

    def keys(self, lo=0, hi=None):
        """Iterate keys with lo <= key < hi, ascending. O(log n + m)."""
        return self._scan(lo, hi, KEYS)

    def values(self, lo=0, hi=None):
        """Iterate values in key order, for lo <= key < hi. O(log n + m)."""
        return self._scan(lo, hi, VALUES)

    def __iter__(self):
        """Iterate all keys ascending. O(n)."""
        return self._scan(0, None, KEYS)

    # ------------------------------------------------------------ batches

    def insert_many(self, keys, values):
        """Insert or overwrite each (keys[i], values[i]) without the GIL;
        return how many keys were new.

        The batch is applied grouped by key (a stable radix sort, so for a key
        given twice the later value wins); each key is one atomic insert, the
        batch as a whole is not.  O(m) to group plus, per key, O(B) when it
        lands in the leaf of the previous key, else O(B + log n).
        """
        cdef cnp.ndarray ka = as_u64_array(keys, "keys")
        cdef cnp.ndarray va = as_u64_array(values, "values")
        cdef Py_ssize_t m = ka.shape[0]
        cdef Py_ssize_t added = 0
        cdef const uint64_t* kp = u64_data(ka)
        cdef const uint64_t* vp = u64_data(va)
        cdef KeyItem* order
        cdef bint oom = False
        cdef int shift
        if va.shape[0] != m:
            raise ValueError(f"keys and values differ in length: {m} != {va.shape[0]}")
        if m == 0:
            return 0
        with nogil:
            order = sort_batch(kp, vp, m, &shift)
            if order != NULL:
                added = batch_insert(&self.t, order, m,
                                     batch_start(order, m, shift, &self.t.batches), &oom)
                free(order)
        if order == NULL or oom:
            raise MemoryError(f"out of memory; {added} of {m} keys were added")
        return added

    def get_many(self, keys):
        """Look up every key without the GIL.

        Returns (values, found): uint64 values (0 where absent) and a bool
        mask, in the order of ``keys``.  O(m + m log n), much less per key
        when keys are dense (a key in the previous key's leaf costs O(log B)).
        """
        return self._lookup_many(keys, False)

    def successor_many(self, keys):
        """For every key, the smallest stored key >= it, without the GIL.

        Returns (successors, found): uint64 keys (0 where none) and a bool
        mask, in the order of ``keys``.  Complexity as ``get_many``.
        """
        return self._lookup_many(keys, True)

    cdef tuple _lookup_many(self, object keys, bint successor):
        cdef cnp.ndarray ka = as_u64_array(keys, "keys")
        cdef Py_ssize_t m = ka.shape[0]
        cdef cnp.ndarray out = new_array(m, cnp.NPY_UINT64)
        cdef cnp.ndarray found = new_array(m, cnp.NPY_BOOL)
        cdef const uint64_t* kp = u64_data(ka)
        cdef uint64_t* op = u64_data(out)
        cdef uint8_t* fp = bool_data(found)
        cdef KeyItem* order
        cdef int shift
        if m == 0:
            return out, found
        with nogil:
            order = sort_batch(kp, NULL, m, &shift)
            if order != NULL:
                if successor:
                    batch_successor(&self.t, order, m,
                                    batch_start(order, m, shift, &self.t.batches), op, fp)
                else:
                    batch_get(&self.t, order, m,
                              batch_start(order, m, shift, &self.t.batches), op, fp)
                free(order)
        if order == NULL:
            raise MemoryError()
        return out, found

    def delete_many(self, keys):
        """Delete every key without the GIL; return how many were present.

        Applied grouped by key; each key is one atomic delete.  Complexity as
        ``insert_many``.
        """
        cdef cnp.ndarray ka = as_u64_array(keys, "keys")
        cdef Py_ssize_t m = ka.shape[0]
        cdef Py_ssize_t removed = 0
        cdef const uint64_t* kp = u64_data(ka)
        cdef KeyItem* order
        cdef int shift
        if m == 0:
            return 0
        with nogil:
            order = sort_batch(kp, NULL, m, &shift)
            if order != NULL:
                removed = batch_delete(&self.t, order, m,
                                       batch_start(order, m, shift, &self.t.batches))
                free(order)
        if order == NULL:
            raise MemoryError()
        return removed

    def range_to_arrays(self, lo=0, hi=None, limit=None):
        """Keys and values with lo <= key < hi (at most ``limit``), as uint64
        arrays, scanned without the GIL.  Per-node consistency, as ``range``.
        O(log n + m)."""
        cdef bint empty = False
        cdef uint64_t hi_incl = hi_inclusive(hi, &empty)
        cdef uint64_t cur = as_key(lo)
        cdef Py_ssize_t remaining, cap, got
        cdef cnp.ndarray ka, va
        cdef uint64_t* kp
        cdef uint64_t* vp
        if limit is None:
            remaining = <Py_ssize_t>(<size_t>-1 >> 1)
        else:
            remaining = limit
            if remaining < 0:
                raise ValueError(f"limit must be >= 0, got {limit}")
        if empty or cur > hi_incl or remaining == 0:
            return new_array(0, cnp.NPY_UINT64), new_array(0, cnp.NPY_UINT64)
        # Sized from len() (grown if the map grows meanwhile); trimmed at the end.
        cap = min(remaining, max(<Py_ssize_t>sc_count_load(&self.t.count), 16))
        key_parts = []
        value_parts = []
        while True:
            ka = cnp.PyArray_EMPTY(1, [cap], cnp.NPY_UINT64, 0)
            va = cnp.PyArray_EMPTY(1, [cap], cnp.NPY_UINT64, 0)
            kp = u64_data(ka)
            vp = u64_data(va)
            with nogil:
                got = bs_scan(&self.t, cur, hi_incl, kp, vp, cap)
            key_parts.append(ka[:got])
            value_parts.append(va[:got])
            remaining -= got
            if got < cap or remaining == 0 or kp[got - 1] >= hi_incl:
                break
            cur = kp[got - 1] + 1
            cap = min(remaining, 2 * cap)
        if len(key_parts) == 1:
            return key_parts[0], value_parts[0]
        return np.concatenate(key_parts), np.concatenate(value_parts)

    # ------------------------------------------------------------ checking

    def _check(self):
        """Verify every structural invariant; raise AssertionError if broken.

        Returns [(nodes, keys)] per level, leaves first.  Needs quiescence:
        call it only while no other thread uses the map.  O(n).
        """
        cdef const Tree* t = &self.t
        cdef int level, i, first
        cdef Node* x
        cdef Node* up
        cdef Node* c
        cdef Py_ssize_t nodes, nkeys, pos
        cdef uint64_t prev_key, k
        cdef bint have_prev
        stats = []
        below = set()       # addresses of the nodes on the level below
        for level in range(H):
            x = t.heads[level]
            here = set()
            nodes = 0
            nkeys = 0
            have_prev = False
            prev_key = 0
            while x != NULL:
                where = f"level {level}, node {nodes}"
                if sc_latch_peek(&x.latch) != 0:
                    raise AssertionError(f"{where}: latch left held ({sc_latch_peek(&x.latch):#x})")
                if x.level != level:
                    raise AssertionError(f"{where}: node says level {x.level}")
                if x.header != (nodes == 0):
                    raise AssertionError(f"{where}: header flag {x.header} out of place")
                if not x.header <= x.n <= t.B or (not x.header and x.n == 0):
                    raise AssertionError(f"{where}: holds {x.n} keys (B={t.B})")
                if x.header and level > 0 and child(t, x, 0) != t.heads[level - 1]:
                    raise AssertionError(f"{where}: sentinel child is not the header below")
                for i in range(x.header, x.n):
                    k = x.keys[i]
                    if have_prev and k <= prev_key:
                        raise AssertionError(
                            f"{where}, slot {i}: key {k} not above previous key {prev_key}")
                    have_prev = True
                    prev_key = k
                    if key_height(t, k) < level:
                        raise AssertionError(
                            f"{where}: key {k} of height {key_height(t, k)} on level {level}")
                    if key_height(t, k) > level and i != 0:
                        raise AssertionError(
                            f"{where}: key {k} of height {key_height(t, k)} is not its "
                            f"node's first key (slot {i})")
                    if level > 0:
                        c = child(t, x, i)
                        if <uintptr_t>c not in below:
                            raise AssertionError(
                                f"{where}: child of key {k} is not on level {level - 1}")
                        if c.level != level - 1 or c.header or c.n == 0 or c.keys[0] != k:
                            raise AssertionError(
                                f"{where}: child of key {k} does not start with it")
                    nkeys += 1
                if x.next != NULL:
                    if x.next.n == 0 or x.next_header != x.next.keys[0]:
                        raise AssertionError(
                            f"{where}: next_header {x.next_header} is not the next node's "
                            f"first key")
                here.add(<uintptr_t>x)
                nodes += 1
                x = x.next
            stats.append((nodes, nkeys))
            below = here
        # Level l must hold exactly the level-(l-1) keys of height >= l, in order.
        for level in range(1, H):
            up = t.heads[level]
            pos = up.header
            nkeys = 0
            x = t.heads[level - 1]
            while x != NULL:
                for i in range(x.header, x.n):
                    if key_height(t, x.keys[i]) < level:
                        continue
                    while up != NULL and pos >= up.n:
                        up = up.next
                        pos = 0
                    if up == NULL or up.keys[pos] != x.keys[i]:
                        raise AssertionError(
                            f"key {x.keys[i]} of height {key_height(t, x.keys[i])} "
                            f"missing from level {level}")
                    pos += 1
                    nkeys += 1
                x = x.next
            if nkeys != stats[level][1]:
                raise AssertionError(
                    f"level {level} holds {stats[level][1]} keys, but only {nkeys} keys "
                    f"below it have height >= {level}")
        if stats[0][1] != sc_count_load(&t.count):
            raise AssertionError(
                f"len() says {sc_count_load(&t.count)} but the leaves hold {stats[0][1]} keys")
        return stats


cdef class _Scan:
    """Iterator over a key range, reading SCAN_CHUNK entries per pass (fewer
    at first, as callers often stop early) and holding no latch in between."""

    cdef object owner           # keeps the map alive
    cdef Tree* t
    cdef uint64_t cur           # next key to read from
    cdef uint64_t hi            # inclusive
    cdef int what
    cdef bint done
    cdef Py_ssize_t pos, got, cap
    cdef uint64_t keys[SCAN_CHUNK]
    cdef uint64_t values[SCAN_CHUNK]

    def __iter__(self):
        return self

    def __next__(self):
        cdef Py_ssize_t i
        if self.pos == self.got:
            if self.done:
                raise StopIteration
            self.got = bs_scan(self.t, self.cur, self.hi, self.keys, self.values, self.cap)
            self.pos = 0
            if self.got < self.cap or self.keys[self.got - 1] >= self.hi:
                self.done = True
            else:
                self.cur = self.keys[self.got - 1] + 1
            self.cap = min(4 * self.cap, SCAN_CHUNK)
            if self.got == 0:
                raise StopIteration
        i = self.pos
        self.pos += 1
        if self.what == KEYS:
            return self.keys[i]
        if self.what == VALUES:
            return self.values[i]
        return (self.keys[i], self.values[i])
