"""A cheap learned one-bit predictor: Belady's discard rate per bucket of access history.

Every access falls in a *bucket*: how often its item was requested before (0-3, in
a history that forgets items idle for a few windows), how long ago the previous
request was and the mean gap between its requests since the first (each as the bit
length of a number of accesses, 0-21: a rate estimate that the last gap alone is too
noisy for), and, for sized caches, the item's size class.

:class:`BucketBits` keeps the last ``window`` accesses with their buckets. Each time
the window is full it labels its older half with Belady's discard bits
(:func:`~semcached.cachepolicy.labels.discard_labels`, replayed over the whole window
at the cache's current capacity, so the older half's futures are known), adds the
labels to exponentially decayed per-bucket counts, and rebuilds the table ``bucket ->
P(discard) >= threshold``. The bit of an access is then one table lookup: the
predictor is trained online, on the trace it serves, only from labels that have become
known, and never sees the future of the access it predicts.

Cost per access: O(1) on the request path (a dict lookup and a list index); the
labelling is O(window log window) once per half window, i.e. O(log window) amortised,
in a worker thread when ``background`` (the table swap is one reference assignment).
Memory: one small list per item seen in the last few windows, plus the window.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import Future
from typing import Any

import numpy as np

from semcached.cachepolicy.bits import Observation
from semcached.cachepolicy.labels import discard_labels
from semcached.cachepolicy.training import training_worker
from semcached.index.eviction import AccessFeatures

__all__ = ["COUNTS", "GAPS", "SIZES", "BucketBits", "BucketTable", "size_class"]

#: Request counts kept apart (0 = first request in the history, 3 = three or more).
COUNTS = 4
#: Gap classes: the bit length of a gap in accesses (0 = no earlier request), for the
#: gap since the previous request and the mean gap since the first one.
GAPS = 22
#: Size classes for sized caches (two powers of two each, from 256 B).
SIZES = 8

# Every observation of this predictor carries its bit, so two shared ones do (never
# mutated: a follower only reads ``bit``).
_KEEP = Observation(bit=False)
_DISCARD = Observation(bit=True)


def size_class(size: int) -> int:
    """0 up to 511 B, then one class per factor of four, capped at ``SIZES - 1``."""
    return min(max(size.bit_length() - 8, 0) // 2, SIZES - 1)


class BucketTable:
    """The trained half of :class:`BucketBits`: the table ``bucket -> bit`` and its
    training from labelled windows. Shared with the compiled follower
    (:class:`semcached.ext.onebit.GuardedFollower`), which keeps its own history and
    window and hands full windows here.

    ``window``: accesses kept for labelling; None scales it with the capacity
    (``window_factor`` x capacity, within ``[min_window, max_window]``).
    ``decay``: weight of the older counts each time a half window is added.
    ``sized``: labels with sized Belady, capacities in bytes.
    """

    def __init__(
        self,
        *,
        window: int | None = None,
        window_factor: int = 8,
        min_window: int = 4096,
        max_window: int = 1 << 18,
        decay: float = 0.5,
        threshold: float = 0.5,
        sized: bool = False,
        background: bool = True,
    ) -> None:
        if not 0 <= decay < 1:
            raise ValueError("decay must be in [0, 1)")
        self._fixed_window = window
        self._window_factor = window_factor
        self._min_window = min_window
        self._max_window = max_window
        self._decay = decay
        self._threshold = threshold
        self.sized = sized
        self._background = background
        self.buckets = COUNTS * GAPS * GAPS * (SIZES if sized else 1)
        # Written by the trainer (worker thread or inline), read on the request path:
        # a bucket never seen keeps bit 0 (keep), so a follower is LRU there.
        self.table: list[bool] = [False] * self.buckets
        self._discards = np.zeros(self.buckets)
        self._seen = np.zeros(self.buckets)
        self._job: Future[None] | None = None
        self.fits = 0
        self.labelled = 0
        self.train_seconds = 0.0

    @property
    def trained(self) -> bool:
        return self.fits > 0

    def window_length(self, capacity: int, sizes: int, size_sum: int) -> int:
        """The window for a cache of ``capacity`` (bytes when sized: turned into items
        at the mean of the ``sizes`` sizes, summing to ``size_sum``, seen lately)."""
        if self._fixed_window is not None:
            return self._fixed_window
        items = max(capacity, 1)
        if self.sized and sizes:
            items = capacity * sizes // max(size_sum, 1)
        return min(max(self._window_factor * items, self._min_window), self._max_window)

    def train(
        self, keys: list[int], buckets: list[int], sizes: list[int], half: int, capacity: int
    ) -> None:
        """Label the older ``half`` of a full window and rebuild the table: inline, or
        in the shared worker (skipped while the previous window is still in work)."""
        if not self._background:
            self._learn(keys, buckets, sizes, half, capacity)
            return
        if self._job is not None and not self._job.done():
            return  # the trainer is behind: skip this window rather than queue up
        self._job = training_worker().submit(self._learn, keys, buckets, sizes, half, capacity)

    def wait(self) -> None:
        """Block until background labelling in flight is done (tests, benchmarks)."""
        job = self._job
        if job is not None:
            job.result()

    def _learn(
        self, keys: list[int], buckets: list[int], sizes: list[int], half: int, capacity: int
    ) -> None:
        started = time.perf_counter()
        labels = discard_labels(keys, capacity, sizes if self.sized else None)[:half]
        b = np.asarray(buckets[:half], dtype=np.int64)
        discards = self._decay * self._discards + np.bincount(
            b, weights=labels, minlength=self.buckets
        )
        seen = self._decay * self._seen + np.bincount(b, minlength=self.buckets)
        self._discards, self._seen = discards, seen
        rate = np.divide(discards, seen, out=np.zeros_like(discards), where=seen > 0)
        self.table = (rate >= self._threshold).tolist()
        self.fits += 1
        self.labelled += half
        self.train_seconds += time.perf_counter() - started


class BucketBits:
    """Discard bits from a per-bucket table of Belady's labels on past windows: the
    per-access half (history, buckets, the window) over a :class:`BucketTable`.

    Keyword arguments are the table's (see :class:`BucketTable`); ``sized`` also adds
    the item's size class to the bucket, and the ``capacity`` the policy passes is
    then in bytes. Until the first labels arrive every bit is 0 (a follower is LRU).
    """

    def __init__(self, *, sized: bool = False, **table: Any) -> None:
        self.table = BucketTable(sized=sized, **table)
        self._sized = sized
        self._tick = 0
        self._history: dict[int, list[int]] = {}  # key -> [last tick, requests, first tick]
        self._keys: list[int] = []
        self._bucket_of: list[int] = []
        self._sizes: list[int] = []  # only when sized
        self._size_sum = 0
        self._capacity = 1
        self._next_slide = 0

    @property
    def window(self) -> int:
        return self.table.window_length(self._capacity, len(self._sizes), self._size_sum)

    @property
    def sized(self) -> bool:
        """Whether buckets and labels count bytes: ``capacity`` is then in bytes."""
        return self._sized

    @property
    def trained(self) -> bool:
        return self.table.trained

    @property
    def fits(self) -> int:
        return self.table.fits

    @property
    def labelled(self) -> int:
        return self.table.labelled

    @property
    def train_seconds(self) -> float:
        return self.table.train_seconds

    @property
    def observed(self) -> int:
        """Accesses seen so far."""
        return self._tick

    def bucket(self, key: int, size: int) -> int:
        """Record an access of ``key`` and return its bucket. O(1)."""
        self._tick += 1
        tick = self._tick
        seen = self._history.get(key)
        if seen is None:
            self._history[key] = [tick, 1, tick]
            bucket = 0
        else:
            last, count, first = seen
            gap_class = (tick - last).bit_length()
            mean_class = ((tick - first) // count).bit_length()
            bucket = (min(count, COUNTS - 1) * GAPS + min(gap_class, GAPS - 1)) * GAPS + min(
                mean_class, GAPS - 1
            )
            seen[0] = tick
            seen[1] = count + 1
        if self._sized:
            bucket = bucket * SIZES + size_class(size)
        return bucket

    def observe(
        self, key: int, size: int, features: AccessFeatures | None, capacity: int
    ) -> Observation:
        bucket = self.bucket(key, size)
        self._keys.append(key)
        self._bucket_of.append(bucket)
        if self._sized:
            self._sizes.append(size)
            self._size_sum += size
        self._capacity = capacity
        if len(self._keys) >= self._next_slide:  # the window's length, known lazily
            window = self.window
            if len(self._keys) >= window:
                self._slide()
            else:
                self._next_slide = window
        return _DISCARD if self.table.table[bucket] else _KEEP

    def predict(self, observations: Sequence[Observation]) -> list[bool]:
        return [bool(o.bit) for o in observations]

    def wait(self) -> None:
        """Block until background labelling in flight is done (tests, benchmarks)."""
        self.table.wait()

    def _slide(self) -> None:
        """Hand the window to the table, keep its newer half, forget idle items."""
        keys, buckets, sizes = self._keys, self._bucket_of, self._sizes
        half = len(keys) // 2
        self._keys, self._bucket_of, self._sizes = keys[half:], buckets[half:], sizes[half:]
        self._size_sum = sum(self._sizes)
        if len(self._history) > 4 * len(keys):
            cutoff = self._tick - 2 * len(keys)
            self._history = {k: v for k, v in self._history.items() if v[0] >= cutoff}
        self.table.train(keys, buckets, sizes, half, self._capacity)
