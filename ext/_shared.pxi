# Shared by bskiplist.pyx and classic_skiplist.pyx (textual include, so both
# structures are measured with exactly the same latch): the per-node
# reader/writer latch, the few atomics, the key mixer and the conversion of
# batch arguments to uint64 arrays and the sort that orders a batch.
#
# The latch is one 32-bit word: bit 31 = a writer holds it, bit 30 = a writer
# is waiting (new readers stand back, so a stream of readers on a hot upper
# node cannot starve a writer), bits 0..29 = number of readers.  Waiting spins
# with `pause` for a short while, then yields the CPU: Python code may run more
# threads than cores, and a preempted latch holder must get the CPU back.
#
# Chosen over pthread_rwlock_t (56 bytes, measured in bench/bskiplist.py's
# notes): same uncontended cost (one atomic read-modify-write to lock, one to
# unlock), 4 bytes instead of 56, and the release is a single atomic operation
# after which the releasing thread never touches the word again, which is what
# lets a deleter free a node as soon as it has latched it exclusively (see
# bskiplist.pyx, "Memory reclamation").

from libc.stdint cimport int64_t, uint32_t, uint64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memset

cdef extern from *:
    """
    #include <stdint.h>
    #include <sched.h>
    #if defined(__x86_64__) || defined(__i386__)
    #include <immintrin.h>
    #define SC_CPU_RELAX() _mm_pause()
    #elif defined(__aarch64__)
    #define SC_CPU_RELAX() __asm__ __volatile__("yield" ::: "memory")
    #else
    #define SC_CPU_RELAX() ((void)0)
    #endif

    typedef uint32_t sc_latch_t;
    #define SC_WRITER 0x80000000u
    #define SC_PENDING 0x40000000u
    #define SC_SPINS_BEFORE_YIELD 128

    static inline void sc_wait(unsigned *spins) {
        if (*spins < SC_SPINS_BEFORE_YIELD) {
            ++*spins;
            SC_CPU_RELAX();
        } else {
            sched_yield();
        }
    }

    static inline void sc_rlock(sc_latch_t *l) {
        unsigned spins = 0;
        for (;;) {
            /* Optimistic increment: one atomic op on the fast path. */
            uint32_t v = __atomic_fetch_add(l, 1u, __ATOMIC_ACQUIRE);
            if (!(v & (SC_WRITER | SC_PENDING)))
                return;
            __atomic_fetch_sub(l, 1u, __ATOMIC_RELAXED);
            while (__atomic_load_n(l, __ATOMIC_RELAXED) & (SC_WRITER | SC_PENDING))
                sc_wait(&spins);
        }
    }

    static inline void sc_runlock(sc_latch_t *l) {
        __atomic_fetch_sub(l, 1u, __ATOMIC_RELEASE);
    }

    static inline void sc_wlock(sc_latch_t *l) {
        uint32_t v = 0;
        unsigned spins = 0;
        if (__atomic_compare_exchange_n(l, &v, SC_WRITER, 0, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED))
            return;
        for (;;) {
            v = __atomic_load_n(l, __ATOMIC_RELAXED);
            if ((v & ~SC_PENDING) == 0) {
                /* Free (perhaps with our own or another writer's PENDING bit):
                   take it; a writer still waiting sets PENDING again. */
                if (__atomic_compare_exchange_n(l, &v, SC_WRITER, 0,
                                                __ATOMIC_ACQUIRE, __ATOMIC_RELAXED))
                    return;
                continue;
            }
            if (!(v & SC_PENDING))
                __atomic_fetch_or(l, SC_PENDING, __ATOMIC_RELAXED);
            sc_wait(&spins);
        }
    }

    static inline void sc_wunlock(sc_latch_t *l) {
        __atomic_fetch_and(l, ~SC_WRITER, __ATOMIC_RELEASE);
    }

    static inline uint32_t sc_latch_peek(const sc_latch_t *l) {
        return __atomic_load_n(l, __ATOMIC_RELAXED);
    }

    static inline void sc_count_add(uint64_t *c, int64_t d) {
        __atomic_fetch_add(c, (uint64_t)d, __ATOMIC_RELAXED);
    }

    static inline uint64_t sc_count_load(const uint64_t *c) {
        return __atomic_load_n(c, __ATOMIC_RELAXED);
    }

    static inline void sc_count_store(uint64_t *c, uint64_t v) {
        __atomic_store_n(c, v, __ATOMIC_RELAXED);
    }

    /* splitmix64's output function: a bijective mixer, so a key's tower height
       is a fixed function of the key, yet sequential keys get unrelated heights. */
    static inline uint64_t sc_mix64(uint64_t x) {
        x += 0x9e3779b97f4a7c15ull;
        x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
        x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
        return x ^ (x >> 31);
    }

    static inline int sc_ctz64(uint64_t x) {
        return x ? __builtin_ctzll(x) : 64;
    }
    """
    ctypedef uint32_t sc_latch_t
    void sc_rlock(sc_latch_t* l) noexcept nogil
    void sc_runlock(sc_latch_t* l) noexcept nogil
    void sc_wlock(sc_latch_t* l) noexcept nogil
    void sc_wunlock(sc_latch_t* l) noexcept nogil
    uint32_t sc_latch_peek(const sc_latch_t* l) noexcept nogil
    void sc_count_add(uint64_t* c, int64_t d) noexcept nogil
    uint64_t sc_count_load(const uint64_t* c) noexcept nogil
    void sc_count_store(uint64_t* c, uint64_t v) noexcept nogil
    uint64_t sc_mix64(uint64_t x) noexcept nogil
    int sc_ctz64(uint64_t x) noexcept nogil
    uint32_t SC_WRITER


cdef struct KeyIndex:
    uint64_t key
    uint64_t index      # position in the caller's batch


cdef KeyIndex* sort_batch(const uint64_t* keys, Py_ssize_t m) noexcept nogil:
    """The batch as (key, index) pairs in key order; malloc'd, caller frees.

    Stable, so equal keys keep their batch order (the last insert wins).
    Sorted input is detected in the first pass; otherwise an LSD radix sort
    on 8-bit digits skips digits that all keys share. NULL if out of memory.
    """
    cdef KeyIndex* a = <KeyIndex*>malloc((m if m > 0 else 1) * sizeof(KeyIndex))
    cdef KeyIndex* b
    cdef KeyIndex* swap
    cdef KeyIndex item
    cdef Py_ssize_t counts[8][256]
    cdef Py_ssize_t i, j, total, c
    cdef uint64_t k
    cdef int d, shift
    cdef bint ordered = True
    if a == NULL:
        return NULL
    for i in range(m):
        a[i].key = keys[i]
        a[i].index = i
        if i > 0 and keys[i] < keys[i - 1]:
            ordered = False
    if ordered:
        return a
    if m <= 32:
        for i in range(1, m):
            item = a[i]
            j = i
            while j > 0 and a[j - 1].key > item.key:
                a[j] = a[j - 1]
                j -= 1
            a[j] = item
        return a
    b = <KeyIndex*>malloc(m * sizeof(KeyIndex))
    if b == NULL:
        free(a)
        return NULL
    memset(counts, 0, sizeof(counts))
    for i in range(m):
        k = keys[i]
        for d in range(8):
            counts[d][(k >> (8 * d)) & 0xFF] += 1
    for d in range(8):
        shift = 8 * d
        if counts[d][(a[0].key >> shift) & 0xFF] == m:
            continue
        total = 0
        for j in range(256):
            c = counts[d][j]
            counts[d][j] = total
            total += c
        for i in range(m):
            item = a[i]
            j = (item.key >> shift) & 0xFF
            b[counts[d][j]] = item
            counts[d][j] += 1
        swap = a
        a = b
        b = swap
    free(b)
    return a


import operator as _operator

import numpy as _np


def _u64_array(obj, str name):
    """Return ``obj`` as a 1-D C-contiguous uint64 array, refusing lossy input.

    Negative or >= 2**64 values raise OverflowError, non-integers TypeError.
    """
    cdef object arr
    if not isinstance(obj, _np.ndarray):
        arr = _np.asarray(obj)
        if arr.size == 0:
            return _np.empty(0, dtype=_np.uint64)
        if arr.dtype.kind not in "iu":
            # Mixed or huge Python ints become float64/object: convert one by one.
            return _np.fromiter((_operator.index(x) for x in obj), dtype=_np.uint64)
        obj = arr
    arr = obj
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {arr.shape}")
    if arr.dtype == _np.uint64:
        return _np.ascontiguousarray(arr)
    if arr.dtype.kind == "u":
        return arr.astype(_np.uint64)
    if arr.dtype.kind == "i":
        if arr.size and arr.min() < 0:
            raise OverflowError(f"{name} holds a negative value; keys and values are uint64")
        return arr.astype(_np.uint64)
    raise TypeError(f"{name} must hold integers, got dtype {arr.dtype}")
