"""The measuring half of bench/bskiplist.py: the workload, one adapter per structure
(each runs insert, get, successor, range100 and delete on one instance, as single
calls or batches, and returns the best seconds per operation), and the thread runs.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

import numpy as np
from BTrees.LLBTree import LLBTree
from sortedcontainers import SortedDict

from semcached.ext.bskiplist import BSkipList

RANGE_LEN = 100
SIGN = np.uint64(1 << 63)
OPS = ("insert", "get", "successor", "range100", "delete")


@dataclass
class Workload:
    keys: np.ndarray  # distinct random uint64, insertion order
    values: np.ndarray
    lookups: np.ndarray  # the same keys, shuffled
    absent: np.ndarray  # random keys, almost surely absent
    starts: np.ndarray  # range scan starts
    deletes: np.ndarray  # the keys again, another order
    lists: dict[str, list[int]] = field(default_factory=dict)

    @classmethod
    def make(cls, n: int, seed: int) -> Workload:
        rng = np.random.default_rng(seed)
        keys = np.unique(rng.integers(0, 2**64, size=n + n // 100 + 16, dtype=np.uint64))
        keys = rng.permutation(keys)[:n]
        return cls(
            keys=keys,
            values=rng.integers(0, 2**64, size=n, dtype=np.uint64),
            lookups=rng.permutation(keys),
            absent=rng.integers(0, 2**64, size=n, dtype=np.uint64),
            starts=rng.integers(0, 2**64, size=max(n // RANGE_LEN, 1), dtype=np.uint64),
            deletes=rng.permutation(keys),
        )

    def as_list(self, name: str, signed: bool) -> list[int]:
        """A field as a list of Python ints (signed: mapped for LLBTree)."""
        tag = f"{name}:{signed}"
        if tag not in self.lists:
            arr: np.ndarray = getattr(self, name)
            if signed:
                arr = (arr ^ SIGN).view(np.int64)
            self.lists[tag] = arr.tolist()
        return self.lists[tag]


def clock(fn: Callable[[], object], repeat: int = 1) -> float:
    """Best wall time of `repeat` runs, in seconds."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


# ----------------------------------------------------------------- adapters
# Each returns {op: seconds} for one structure and mode, running the ops in
# order on one instance: insert builds it, delete empties it.


def run_skiplist(
    make: Callable[[], Any], w: Workload, batch: bool, repeat: int
) -> dict[str, float]:
    s = make()
    t: dict[str, float] = {}
    if batch:
        t["insert"] = clock(lambda: s.insert_many(w.keys, w.values))
        t["get"] = clock(lambda: s.get_many(w.lookups), repeat)
        t["successor"] = clock(lambda: s.successor_many(w.absent), repeat)
        if isinstance(s, BSkipList):
            t["range100"] = clock(
                lambda: [s.range_to_arrays(lo, None, RANGE_LEN) for lo in w.starts.tolist()],
                repeat,
            )
        else:
            top = 2**64 - 1
            t["range100"] = clock(
                lambda: [s.range_to_arrays(lo, top, RANGE_LEN) for lo in w.starts.tolist()],
                repeat,
            )
        t["delete"] = clock(lambda: s.delete_many(w.deletes))
    else:
        keys, values = w.as_list("keys", False), w.as_list("values", False)
        lookups, absent = w.as_list("lookups", False), w.as_list("absent", False)
        starts, deletes = w.as_list("starts", False), w.as_list("deletes", False)
        ins, get, succ, dele = s.insert, s.get, s.successor, s.delete
        t["insert"] = clock(lambda: list(map(ins, keys, values)))
        t["get"] = clock(lambda: list(map(get, lookups)), repeat)
        t["successor"] = clock(lambda: list(map(succ, absent)), repeat)
        if isinstance(s, BSkipList):
            t["range100"] = clock(
                lambda: [list(islice(s.items(lo), RANGE_LEN)) for lo in starts], repeat
            )
        t["delete"] = clock(lambda: list(map(dele, deletes)))
    assert len(s) == 0
    return t


def run_btree(w: Workload, batch: bool, repeat: int) -> dict[str, float]:
    keys, values = w.as_list("keys", True), w.as_list("values", True)
    lookups, absent = w.as_list("lookups", True), w.as_list("absent", True)
    starts, deletes = w.as_list("starts", True), w.as_list("deletes", True)
    b = LLBTree()
    t: dict[str, float] = {}
    if batch:
        pairs = list(zip(keys, values, strict=True))
        t["insert"] = clock(lambda: b.update(pairs))
    else:

        def insert_all() -> None:
            for k, v in zip(keys, values, strict=True):
                b[k] = v

        t["insert"] = clock(insert_all)
    min_key = b.minKey

    def successor(k: int) -> int | None:
        try:
            return min_key(k)  # smallest key >= k
        except ValueError:
            return None

    t["get"] = clock(lambda: list(map(b.get, lookups)), repeat)
    t["successor"] = clock(lambda: list(map(successor, absent)), repeat)
    t["range100"] = clock(
        lambda: [list(islice(b.iteritems(lo), RANGE_LEN)) for lo in starts], repeat
    )
    t["delete"] = clock(lambda: list(map(b.__delitem__, deletes)))
    assert len(b) == 0
    return t


def run_sorteddict(w: Workload, batch: bool, repeat: int) -> dict[str, float]:
    keys, values = w.as_list("keys", False), w.as_list("values", False)
    lookups, absent = w.as_list("lookups", False), w.as_list("absent", False)
    starts, deletes = w.as_list("starts", False), w.as_list("deletes", False)
    d: SortedDict[int, int] = SortedDict()
    t: dict[str, float] = {}
    if batch:
        pairs = list(zip(keys, values, strict=True))
        t["insert"] = clock(lambda: d.update(pairs))
    else:
        t["insert"] = clock(lambda: list(map(d.__setitem__, keys, values)))
    sorted_keys = d.keys()
    n = len(d)

    def successor(k: int) -> int | None:
        i = d.bisect_left(k)
        return sorted_keys[i] if i < n else None

    items = d.items()
    t["get"] = clock(lambda: list(map(d.get, lookups)), repeat)
    t["successor"] = clock(lambda: list(map(successor, absent)), repeat)
    t["range100"] = clock(
        lambda: [items[d.bisect_left(lo) : d.bisect_left(lo) + RANGE_LEN] for lo in starts],
        repeat,
    )
    t["delete"] = clock(lambda: list(map(d.__delitem__, deletes)))
    assert len(d) == 0
    return t


# ----------------------------------------------------------------- threads


def in_threads(fn: Callable[..., object], arg_sets: Sequence[tuple[Any, ...]]) -> float:
    """Wall time for fn(*args), one thread per argument tuple, all started together."""
    barrier = threading.Barrier(len(arg_sets) + 1)

    def run(args: tuple[Any, ...]) -> None:
        barrier.wait()
        fn(*args)

    threads = [threading.Thread(target=run, args=(a,)) for a in arg_sets]
    for th in threads:
        th.start()
    barrier.wait()
    t0 = time.perf_counter()
    for th in threads:
        th.join()
    return time.perf_counter() - t0


def thread_scaling(make: Callable[[], Any], w: Workload, repeat: int) -> dict[str, list[float]]:
    """Best seconds for each batch op with 1 and with 2 threads (the work split
    in two). One- and two-thread runs alternate, so that a load change on the
    machine hits both alike."""
    best: dict[str, list[float]] = {
        op: [1e9, 1e9] for op in ("insert", "get", "successor", "delete")
    }

    def parts(k: int, *arrays: np.ndarray) -> list[tuple[np.ndarray, ...]]:
        return list(zip(*(np.array_split(a, k) for a in arrays), strict=True))

    def keep(op: str, k: int, seconds: float) -> None:
        best[op][k - 1] = min(best[op][k - 1], seconds)

    for _ in range(repeat):
        for k in (1, 2):
            s = make()
            keep("insert", k, in_threads(s.insert_many, parts(k, w.keys, w.values)))
            keep("delete", k, in_threads(s.delete_many, parts(k, w.deletes)))
        s = make()
        s.insert_many(w.keys, w.values)
        for k in (1, 2):
            keep("get", k, in_threads(s.get_many, parts(k, w.lookups)))
            keep("successor", k, in_threads(s.successor_many, parts(k, w.absent)))
    return best


def machine_parallelism(repeat: int) -> float:
    """Two-thread speedup of hashlib.sha256 (which releases the GIL): what this
    machine offers two threads right now, as a yardstick for the rows above."""
    data = bytes(32 << 20)

    def work(chunk: bytes) -> None:
        hashlib.sha256(chunk).digest()

    one = min(in_threads(work, [(data,)]) for _ in range(repeat))
    half = len(data) // 2
    two = min(in_threads(work, [(data[:half],), (data[half:],)]) for _ in range(repeat))
    return one / two
