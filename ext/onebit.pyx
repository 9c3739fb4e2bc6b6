# cython: language_level=3
"""The compiled ``onebit`` eviction policy: the per-access work of
``LruGuard(QueueFollower(BucketBits(...)))`` (semcached.cachepolicy) in one class.

:class:`GuardedFollower` makes exactly the victim choices of that composition, its
pure-Python twin (the tests replay both side by side): the access history and its
buckets, the window handed to the trainer, the two recency queues of the discard
follower, and the LRU guard's shadow. Training is not here: full windows go to the
:class:`~semcached.cachepolicy.bucket_bits.BucketTable` passed in, whose ``table``
(a list of bits, swapped by its trainer) each access reads. See the twin's modules for
the algorithm and the guard's bound.

Every call is O(1) (amortised: a history prune is O(items) once per half window).
Keys are any hashable ints; the containers are Python dicts and ordered dicts, driven
from C.
"""

from collections import OrderedDict

from libc.stdint cimport int64_t, uint64_t

__all__ = ["GuardedFollower"]

cdef int COUNTS = 4
cdef int GAPS = 22
cdef int SIZES = 8


cdef extern from *:
    int __builtin_clzll(unsigned long long) nogil


cdef inline int bit_length(uint64_t x) noexcept:
    return 0 if x == 0 else 64 - __builtin_clzll(x)


cdef inline int size_class(int64_t size) noexcept:
    cdef int c = bit_length(<uint64_t>size) - 8 if size > 0 else 0
    if c < 0:
        c = 0
    c //= 2
    return c if c < SIZES - 1 else SIZES - 1


cdef class _Seen:
    """One item's history: last request, requests so far, first request (ticks)."""
    cdef int64_t last
    cdef int64_t count
    cdef int64_t first


cdef class GuardedFollower:
    """``onebit``: learned discard bits, a two-queue follower, the LRU guard."""

    cdef object _trainer
    cdef bint _sized
    cdef double _slack
    # The cache's keys and sizes; the follower's queues (oldest first).
    cdef dict _size
    cdef int64_t _bytes
    cdef object _discard
    cdef object _keep
    cdef object _incoming
    cdef object _chosen
    # The predictor's history and window.
    cdef int64_t _tick
    cdef dict _history
    cdef list _keys
    cdef list _buckets
    cdef list _sizes
    cdef int64_t _size_sum
    cdef int64_t _next_slide
    # The guard's LRU shadow and the cached keys it no longer holds.
    cdef object _shadow
    cdef int64_t _shadow_bytes
    cdef object _outside
    cdef readonly int64_t requests
    cdef readonly int64_t misses
    cdef readonly int64_t lru_misses
    cdef readonly int64_t switches
    cdef readonly bint following_lru

    def __init__(self, trainer, *, double slack=0.005):
        if not 0 <= slack < 1:
            raise ValueError("slack must be in [0, 1)")
        self._trainer = trainer
        self._sized = bool(trainer.sized)
        self._slack = slack
        self._size = {}
        self._bytes = 0
        self._discard = OrderedDict()
        self._keep = OrderedDict()
        self._incoming = None
        self._chosen = None
        self._tick = 0
        self._history = {}
        self._keys = []
        self._buckets = []
        self._sizes = []
        self._size_sum = 0
        self._next_slide = 0
        self._shadow = OrderedDict()
        self._shadow_bytes = 0
        self._outside = OrderedDict()
        self.requests = 0
        self.misses = 0
        self.lru_misses = 0
        self.switches = 0
        self.following_lru = False

    @property
    def trainer(self):
        return self._trainer

    @property
    def observed(self):
        return self._tick

    def __len__(self):
        return len(self._size)

    # -- the protocol --------------------------------------------------------------------

    def admit(self, key, size, features=None):
        if key in self._size:
            self.record_access(key, features)
            return
        cdef int64_t n = size if size > 1 else 1
        self._chosen = None
        self._size[key] = n
        self._bytes += n
        self.requests += 1
        self.misses += 1
        self._shadow_access(key, n)
        self._incoming = key
        self._place(key, n)
        self._steer()

    def record_access(self, key, features=None):
        size = self._size.get(key)
        if size is None:
            return
        cdef int64_t n = size
        self._chosen = None
        self.requests += 1
        if self._shadow.get(key) == size:  # an LRU hit too: the common case
            self._shadow.move_to_end(key)
            self._unplace(key)
            self._place(key, n)
            return
        self._shadow_access(key, n)
        self._unplace(key)
        self._place(key, n)
        self._steer()

    def forget(self, key):
        size = self._size.pop(key, None)
        if size is None:
            return
        cdef bint evicted = key == self._chosen
        self._chosen = None
        self._bytes -= <int64_t>size
        self._outside.pop(key, None)
        if key == self._incoming:
            self._incoming = None
        if not evicted:  # expired or deleted: gone from LRU's cache too
            shadow_size = self._shadow.pop(key, None)
            if shadow_size is not None:
                self._shadow_bytes -= <int64_t>shadow_size
        self._unplace(key)
        self._trim_shadow()

    def choose_victim(self):
        if self._chosen is not None:
            return self._chosen
        if not self._size:
            return None
        victim = self._lru_victim() if self.following_lru else self._follower_victim()
        self._chosen = victim
        return victim

    def set_cost(self, key, saved):
        return None

    # -- the follower --------------------------------------------------------------------

    cdef inline void _unplace(self, key) except *:
        if key in self._discard:
            del self._discard[key]
        else:
            del self._keep[key]

    cdef void _place(self, key, int64_t size) except *:
        cdef int64_t bucket = self._bucket(key, size)
        self._keys.append(key)
        self._buckets.append(bucket)
        if self._sized:
            self._sizes.append(size)
            self._size_sum += size
        cdef int64_t capacity = self._bytes if self._sized else len(self._size)
        cdef int64_t window
        if len(self._keys) >= self._next_slide:
            window = self._trainer.window_length(capacity, len(self._sizes), self._size_sum)
            if len(self._keys) >= window:
                self._slide(capacity)
            else:
                self._next_slide = window
        if self._trainer.table[bucket]:
            self._discard[key] = None
        else:
            self._keep[key] = None

    cdef object _follower_victim(self):
        incoming = self._incoming if len(self._size) > 1 else None
        for queue in (self._discard, self._keep):
            for key in queue:
                if key != incoming:
                    return key
                break
            if len(queue) > 1:  # the oldest was the incoming key: take the next
                keys = iter(queue)
                next(keys)
                return next(keys)
        return self._incoming

    # -- the predictor's history ---------------------------------------------------------

    cdef int64_t _bucket(self, key, int64_t size) except -1:
        self._tick += 1
        cdef int64_t tick = self._tick
        cdef _Seen seen = self._history.get(key)
        cdef int64_t bucket, count, gap_class, mean_class
        if seen is None:
            seen = _Seen()
            seen.last = seen.first = tick
            seen.count = 1
            self._history[key] = seen
            bucket = 0
        else:
            count = seen.count
            gap_class = bit_length(<uint64_t>(tick - seen.last))
            mean_class = bit_length(<uint64_t>((tick - seen.first) // count))
            bucket = (
                (count if count < COUNTS - 1 else COUNTS - 1) * GAPS
                + (gap_class if gap_class < GAPS - 1 else GAPS - 1)
            ) * GAPS + (mean_class if mean_class < GAPS - 1 else GAPS - 1)
            seen.last = tick
            seen.count = count + 1
        if self._sized:
            bucket = bucket * SIZES + size_class(size)
        return bucket

    cdef void _slide(self, int64_t capacity) except *:
        keys, buckets, sizes = self._keys, self._buckets, self._sizes
        cdef Py_ssize_t half = len(keys) // 2
        self._keys, self._buckets, self._sizes = keys[half:], buckets[half:], sizes[half:]
        self._size_sum = sum(self._sizes)
        cdef int64_t cutoff
        cdef _Seen seen
        if len(self._history) > 4 * len(keys):
            cutoff = self._tick - 2 * len(keys)
            kept = {}
            for k, v in self._history.items():
                seen = v
                if seen.last >= cutoff:
                    kept[k] = v
            self._history = kept
        self._trainer.train(keys, buckets, sizes, half, capacity)

    # -- the guard -----------------------------------------------------------------------

    cdef void _shadow_access(self, key, int64_t size) except *:
        old = self._shadow.get(key)
        if old is not None:
            self._shadow.move_to_end(key)
            self._shadow_bytes += size - <int64_t>old
            self._shadow[key] = size
        else:
            self.lru_misses += 1
            self._shadow[key] = size
            self._shadow_bytes += size
            self._outside.pop(key, None)
        self._trim_shadow()

    cdef void _trim_shadow(self) except *:
        while self._shadow_bytes > self._bytes:
            key, size = self._shadow.popitem(last=False)
            self._shadow_bytes -= <int64_t>size
            if key in self._size:
                self._outside[key] = None

    cdef void _steer(self):
        cdef int64_t excess = self.misses - self.lru_misses
        cdef double allowance = self._slack * self.requests
        if not self.following_lru:
            if excess > allowance:
                self.following_lru = True
                self.switches += 1
        elif excess <= allowance / 2:
            self.following_lru = False

    cdef object _lru_victim(self):
        incoming = self._incoming if len(self._size) > 1 else None
        for key in self._outside:
            if key != incoming:
                return key
        for key in self._shadow:
            if key in self._size and key != incoming:
                return key
        return self._follower_victim()

    def _check(self):
        """Invariants between the cache's keys, the queues, the shadow and the window."""
        assert self._bytes == sum(self._size.values())
        assert set(self._discard).isdisjoint(self._keep)
        assert set(self._discard) | set(self._keep) == set(self._size)
        assert self._shadow_bytes == sum(self._shadow.values())
        assert set(self._outside) == set(self._size) - set(self._shadow)
        assert len(self._keys) == len(self._buckets)
        assert self._chosen is None or self._chosen in self._size
        assert self._incoming is None or self._incoming in self._size
