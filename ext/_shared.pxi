# Shared by bskiplist.pyx and classic_skiplist.pyx (textual include, so both
# structures are measured with exactly the same latch): the per-node
# reader/writer latch, the few atomics, the key mixer and the conversion of
# batch arguments to uint64 arrays and the grouping of a batch by key.
#
# The latch is one 32-bit word: bit 31 = a writer holds it, bit 30 = a writer
# is waiting (new readers stand back, so a stream of readers on a hot upper
# node cannot starve a writer), bits 0..29 = number of readers.  Waiting spins
# with `pause` for a short while, then yields the CPU: Python code may run more
# threads than cores, and a preempted latch holder must get the CPU back.
#
# Chosen over pthread_rwlock_t (measured with the same B-skiplist built on
# each, one thread, B=64: a single get() from Python on a 1,000-key map took
# 276 ns with this latch and 345 ns with the pthread one; batches were equal):
# 4 bytes instead of 56 (the node header keeps its 64 bytes), no function
# call on the fast path, and a release is one atomic operation after which
# the releasing thread never touches the word again, which is what lets a
# deleter free a node as soon as it holds its write latch (see bskiplist.pyx,
# "Memory reclamation").

cimport numpy as cnp
from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memset

cnp.import_array()

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

    static inline uint64_t sc_ticket(uint64_t *c) {
        return __atomic_fetch_add(c, 1, __ATOMIC_RELAXED);
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

    /* Scratch buffers for batch sorting. Big ones are 2 MiB aligned and
       advised for transparent huge pages: a radix pass scatters into 2048
       places at once, which thrashes the TLB with 4 KiB pages. */
    #include <stdlib.h>
    #include <sys/mman.h>
    static inline void *sc_scratch(size_t bytes) {
        void *p = NULL;
        if (bytes < (4u << 20))
            return malloc(bytes);
        bytes = (bytes + (2u << 20) - 1) & ~(size_t)((2u << 20) - 1);
        if (posix_memalign(&p, 2u << 20, bytes) != 0)
            return NULL;
    #ifdef MADV_HUGEPAGE
        madvise(p, bytes, MADV_HUGEPAGE);
    #endif
        return p;
    }
    """
    ctypedef uint32_t sc_latch_t
    void sc_rlock(sc_latch_t* l) noexcept nogil
    void sc_runlock(sc_latch_t* l) noexcept nogil
    void sc_wlock(sc_latch_t* l) noexcept nogil
    void sc_wunlock(sc_latch_t* l) noexcept nogil
    uint32_t sc_latch_peek(const sc_latch_t* l) noexcept nogil
    void sc_count_add(uint64_t* c, int64_t d) noexcept nogil
    uint64_t sc_ticket(uint64_t* c) noexcept nogil
    uint64_t sc_count_load(const uint64_t* c) noexcept nogil
    void sc_count_store(uint64_t* c, uint64_t v) noexcept nogil
    uint64_t sc_mix64(uint64_t x) noexcept nogil
    int sc_ctz64(uint64_t x) noexcept nogil
    void* sc_scratch(size_t nbytes) noexcept nogil
    uint32_t SC_WRITER


cdef inline void sc_latch(sc_latch_t* l, bint write) noexcept nogil:
    if write:
        sc_wlock(l)
    else:
        sc_rlock(l)


cdef inline void sc_unlatch(sc_latch_t* l, bint write) noexcept nogil:
    if write:
        sc_wunlock(l)
    else:
        sc_runlock(l)


cdef struct KeyItem:
    uint64_t key
    uint64_t item       # the key's value (insert), else its position in the batch


cdef enum:
    DIGIT_BITS = 11
    DIGITS = 6                  # 6 * 11 >= 64
    RADIX = 1 << DIGIT_BITS


cdef KeyItem* sort_batch(const uint64_t* keys, const uint64_t* values, Py_ssize_t m,
                         int* group_shift) noexcept nogil:
    """The batch as (key, value) pairs, or (key, position) if values is NULL,
    grouped by key; malloc'd, caller frees.  Carrying the value along saves
    the inserts a random read of the values array per key.  Keys equal in
    their bits from *group_shift up form a group (0: fully sorted).

    The batch functions need only locality (keys that share a leaf arriving
    together) and, for duplicates, batch order: so this is a stable LSD radix
    sort (11-bit digits) on just the top ~log2(m) + 12 bits of the range the
    keys span.  Keys closer than that keep batch order; for m random keys that
    almost never happens, and a clustered batch degrades to batch order within
    a cluster, which the callers handle (only more slowly).  Sorted input and
    batches of up to 32 keys come out fully sorted.  NULL if out of memory.
    """
    cdef KeyItem* a = <KeyItem*>sc_scratch((m if m > 0 else 1) * sizeof(KeyItem))
    cdef KeyItem* b
    cdef KeyItem* swap
    cdef KeyItem item
    cdef Py_ssize_t* counts
    cdef Py_ssize_t* cnt
    cdef Py_ssize_t i, j, total, c
    cdef uint64_t k
    cdef int d, shift, top = -1, wanted = 2
    cdef bint ordered = True
    group_shift[0] = 0
    if a == NULL:
        return NULL
    for i in range(m):
        a[i].key = keys[i]
        a[i].item = values[i] if values != NULL else <uint64_t>i
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
    b = <KeyItem*>sc_scratch(m * sizeof(KeyItem))
    counts = <Py_ssize_t*>malloc(DIGITS * RADIX * sizeof(Py_ssize_t))
    if b == NULL or counts == NULL:
        free(a)
        free(b)
        free(counts)
        return NULL
    memset(counts, 0, DIGITS * RADIX * sizeof(Py_ssize_t))
    for i in range(m):
        k = keys[i]
        for d in range(DIGITS):
            counts[d * RADIX + ((k >> (d * DIGIT_BITS)) & (RADIX - 1))] += 1
    while (<Py_ssize_t>1 << (wanted * DIGIT_BITS - 12)) < m and wanted < DIGITS:
        wanted += 1
    for d in range(DIGITS):     # the highest digit that varies
        if counts[d * RADIX + ((a[0].key >> (d * DIGIT_BITS)) & (RADIX - 1))] != m:
            top = d
    group_shift[0] = max(top - wanted + 1, 0) * DIGIT_BITS
    for d in range(max(top - wanted + 1, 0), top + 1):
        shift = d * DIGIT_BITS
        cnt = counts + d * RADIX
        if cnt[(a[0].key >> shift) & (RADIX - 1)] == m:
            continue            # every key has this digit: nothing to move
        total = 0
        for j in range(RADIX):
            c = cnt[j]
            cnt[j] = total
            total += c
        for i in range(m):
            item = a[i]
            j = (item.key >> shift) & (RADIX - 1)
            b[cnt[j]] = item
            cnt[j] += 1
        swap = a
        a = b
        b = swap
    free(b)
    free(counts)
    return a


cdef Py_ssize_t batch_start(const KeyItem* s, Py_ssize_t m, int group_shift,
                            uint64_t* ticket) noexcept nogil:
    """Where a grouped batch starts (it wraps around to finish).

    Two threads with big batches over the same key range would otherwise
    sweep the same leaves in lockstep, fighting over their latches; each call
    starts at a golden-ratio-spaced fraction of its batch instead (the first
    call at 0).  Always at a group boundary, so equal keys keep their order.
    """
    cdef uint64_t fraction
    cdef Py_ssize_t start
    if m < 4096:
        return 0
    fraction = (sc_ticket(ticket) * 0x9E3779B97F4A7C15ull) >> 40      # 24 bits
    start = <Py_ssize_t>((fraction * <uint64_t>m) >> 24)
    while start > 0 and (s[start - 1].key >> group_shift) == (s[start].key >> group_shift):
        start -= 1
    return start


import operator as _operator

import numpy as _np


cdef cnp.ndarray as_u64_array(object obj, str name):
    """``obj`` as a 1-D C-contiguous uint64 array, refusing lossy input.

    Negative or >= 2**64 values raise OverflowError, non-integers TypeError.
    A fitting array is used as it is (no copy).
    """
    cdef cnp.ndarray arr
    cdef object view
    if type(obj) is cnp.ndarray:
        arr = <cnp.ndarray>obj
        if (cnp.PyArray_TYPE(arr) == cnp.NPY_UINT64 and cnp.PyArray_NDIM(arr) == 1
                and cnp.PyArray_IS_C_CONTIGUOUS(arr)):
            return arr
    else:
        arr = _np.asarray(obj)
        if cnp.PyArray_SIZE(arr) == 0:
            return new_array(0, cnp.NPY_UINT64)
        if (<object>arr).dtype.kind not in "iu":
            # Mixed or huge Python ints become float64/object: convert one by one.
            return _np.fromiter((_operator.index(x) for x in obj), dtype=_np.uint64)
    view = arr              # plain Python attribute access from here on
    if view.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {view.shape}")
    if view.dtype.kind == "u":
        return _np.ascontiguousarray(view, dtype=_np.uint64)
    if view.dtype.kind == "i":
        if view.size and view.min() < 0:
            raise OverflowError(f"{name} holds a negative value; keys and values are uint64")
        return _np.ascontiguousarray(view, dtype=_np.uint64)
    raise TypeError(f"{name} must hold integers, got dtype {view.dtype}")


cdef inline cnp.ndarray new_array(Py_ssize_t m, int typenum):
    """A zeroed 1-D array (NPY_UINT64 or NPY_BOOL) of m elements."""
    cdef cnp.npy_intp dims[1]
    dims[0] = m
    return cnp.PyArray_ZEROS(1, dims, typenum, 0)


cdef inline uint64_t* u64_data(cnp.ndarray a) noexcept:
    return <uint64_t*>cnp.PyArray_DATA(a)


cdef inline uint8_t* bool_data(cnp.ndarray a) noexcept:
    return <uint8_t*>cnp.PyArray_DATA(a)
