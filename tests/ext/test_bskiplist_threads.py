"""BSkipList under several threads: exact final contents, no deadlock, no lost updates."""

from __future__ import annotations

import random
import threading
from collections.abc import Callable

import numpy as np
import pytest

from semcached.ext.bskiplist import MAX_KEY, BSkipList

THREADS = 4
JOIN_TIMEOUT_S = 120  # generous: only a deadlock should ever reach it
SHARED = 4_000  # keys 0 .. SHARED-1: even ones inserted by all, odd ones deleted by all
OWN_LO, OWN_HI = 10_000, 40_000  # interleaved: thread t owns k % THREADS == t
BLOCK = 1_000_000  # disjoint: thread t owns [BLOCK*(t+1), BLOCK*(t+1) + 5000)


def shared_value(k: int) -> int:
    return (k * 0x9E3779B97F4A7C15) & MAX_KEY


def run_threads(targets: list[Callable[[], None]]) -> None:
    errors: list[BaseException] = []

    def wrap(fn: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                fn()
            except BaseException as exc:  # reported in the main thread
                errors.append(exc)

        return run

    threads = [threading.Thread(target=wrap(fn), daemon=True) for fn in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join(JOIN_TIMEOUT_S)
    assert not any(t.is_alive() for t in threads), "threads still running: deadlock?"
    if errors:
        raise errors[0]


class Worker:
    """One thread's random mix of single and batch operations.

    Its own keys (interleaved with the other threads' and in a disjoint block)
    are written only by it, so it can check reads of them exactly. Shared even
    keys are only ever inserted (same value by everyone), shared odd keys
    (inserted up front) only ever deleted; ``planted``/``doomed`` record them.
    """

    def __init__(self, sl: BSkipList, tid: int, seed: int) -> None:
        self.sl = sl
        self.tid = tid
        self.rng = random.Random(seed * 101 + tid)
        base = BLOCK * (tid + 1)
        interleaved = [k for k in range(OWN_LO, OWN_HI) if k % THREADS == tid]
        self.pool = interleaved + list(range(base, base + 5_000))
        self.mine: dict[int, int] = {}
        self.planted: set[int] = set()
        self.doomed: set[int] = set()
        self.step = 0

    def run(self, ops: int) -> None:
        actions = [
            self.single_write,
            self.batch_insert,
            self.batch_delete,
            self.read_own,
            self.plant_batch,
            self.plant_one,
            self.doom,
            self.scan_own,
            self.successors,
            self.neighbours,
        ]
        for self.step in range(ops):
            self.rng.choice(actions)()

    def single_write(self) -> None:
        k = self.rng.choice(self.pool)
        if self.rng.random() < 0.6:
            assert self.sl.insert(k, self.step) == (k not in self.mine)
            self.mine[k] = self.step
        else:
            assert self.sl.delete(k) == (k in self.mine)
            self.mine.pop(k, None)

    def batch_insert(self) -> None:
        ks = self.rng.sample(self.pool, self.rng.randrange(1, 200))
        new = sum(k not in self.mine for k in ks)
        assert self.sl.insert_many(ks, [self.step] * len(ks)) == new
        self.mine.update(dict.fromkeys(ks, self.step))

    def batch_delete(self) -> None:
        ks = self.rng.sample(self.pool, self.rng.randrange(1, 200))
        assert self.sl.delete_many(ks) == sum(k in self.mine for k in ks)
        for k in ks:
            self.mine.pop(k, None)

    def read_own(self) -> None:
        ks = self.rng.sample(self.pool, 100)
        values, found = self.sl.get_many(ks)
        assert found.tolist() == [k in self.mine for k in ks]
        assert values.tolist() == [self.mine.get(k, 0) for k in ks]

    def plant_batch(self) -> None:
        ks = [2 * self.rng.randrange(SHARED // 2) for _ in range(self.rng.randrange(1, 100))]
        self.sl.insert_many(ks, [shared_value(k) for k in ks])
        self.planted.update(ks)

    def plant_one(self) -> None:
        k = 2 * self.rng.randrange(SHARED // 2)
        self.sl.insert(k, shared_value(k))
        self.planted.add(k)
        assert self.sl.get(k) == shared_value(k)  # never deleted once in

    def doom(self) -> None:
        ks = [2 * self.rng.randrange(SHARED // 2) + 1 for _ in range(self.rng.randrange(1, 100))]
        self.sl.delete_many(ks)
        self.sl.delete(ks[0])
        self.doomed.update(ks)

    def scan_own(self) -> None:
        lo = self.rng.randrange(OWN_LO, OWN_HI)
        keys, values = self.sl.range_to_arrays(lo, lo + 400)
        klist = keys.tolist()
        assert klist == sorted(set(klist))
        assert all(lo <= k < lo + 400 for k in klist)
        own = {k: v for k, v in zip(klist, values.tolist(), strict=True) if k % THREADS == self.tid}
        assert own == {k: v for k, v in self.mine.items() if lo <= k < lo + 400}

    def successors(self) -> None:
        probe = [self.rng.randrange(0, 2 * BLOCK * THREADS) for _ in range(50)]
        succ, found = self.sl.successor_many(probe)
        for p, s, f in zip(probe, succ.tolist(), found.tolist(), strict=True):
            assert not f or s >= p

    def neighbours(self) -> None:
        k = self.rng.randrange(SHARED)
        p = self.sl.predecessor(k)
        s = self.sl.successor(k)
        assert p is None or p <= k
        assert s is None or s >= k
        assert all(k <= x < k + 50 for x in self.sl.keys(k, k + 50))


def stress(node_size: int, seed: int, ops: int) -> None:
    sl = BSkipList(node_size)
    odd = np.arange(1, SHARED, 2, dtype=np.uint64)
    sl.insert_many(odd, odd)
    workers = [Worker(sl, tid, seed) for tid in range(THREADS)]
    run_threads([lambda w=w: w.run(ops) for w in workers])
    sl._check()
    expect = {k: k for k in odd.tolist()}
    for w in workers:
        for k in w.doomed:
            expect.pop(k, None)
    for w in workers:
        expect.update(w.mine)
        expect.update((k, shared_value(k)) for k in w.planted)
    assert list(sl.items()) == sorted(expect.items())
    assert len(sl) == len(expect)


@pytest.mark.parametrize(("node_size", "seed"), [(4, 1), (16, 2), (64, 3)])
def test_threaded_stress(node_size: int, seed: int) -> None:
    stress(node_size, seed, ops=600)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(10))
@pytest.mark.parametrize("node_size", [4, 7, 64, 128])
def test_threaded_stress_long(node_size: int, seed: int) -> None:
    stress(node_size, seed, ops=3_000)


def test_batch_readers_progress_while_a_writer_inserts() -> None:
    sl = BSkipList(32)
    base = np.arange(0, 400_000, 4, dtype=np.uint64)
    sl.insert_many(base, base)
    stop = threading.Event()
    rounds = [0, 0]
    inserted = [0]

    def reader(slot: int) -> Callable[[], None]:
        def run() -> None:
            rng = np.random.default_rng(slot)
            while not stop.is_set() or rounds[slot] < 5:
                probe = rng.choice(base, size=20_000)
                values, found = sl.get_many(probe)
                assert found.all()  # base keys are never deleted
                assert np.array_equal(values, probe)
                rounds[slot] += 1

        return run

    def writer() -> None:
        rng = np.random.default_rng(9)
        try:
            for _ in range(40):
                ks = rng.integers(0, 400_000, size=5_000, dtype=np.uint64) * 4 + 1
                sl.insert_many(ks, ks)
                sl.delete_many(ks[::2])
                inserted[0] += 1
        finally:
            stop.set()

    run_threads([reader(0), reader(1), writer])
    assert rounds[0] >= 5
    assert rounds[1] >= 5
    assert inserted[0] == 40
    sl._check()


def test_concurrent_pop_min_hands_out_each_key_once() -> None:
    sl = BSkipList(8)
    n = 20_000
    sl.insert_many(np.arange(n, dtype=np.uint64), np.arange(n, dtype=np.uint64) + 1)
    popped: list[list[tuple[int, int]]] = [[] for _ in range(THREADS)]

    def make(tid: int) -> Callable[[], None]:
        def run() -> None:
            while True:
                try:
                    popped[tid].append(sl.pop_min())
                except KeyError:
                    return

        return run

    run_threads([make(t) for t in range(THREADS)])
    everything = sorted(p for part in popped for p in part)
    assert everything == [(k, k + 1) for k in range(n)]
    for part in popped:  # each thread saw an increasing sequence
        assert part == sorted(part)
    assert len(sl) == 0
    sl._check()


def test_clear_races_with_writers_and_readers() -> None:
    sl = BSkipList(8)
    rounds = 30

    def writer(tid: int) -> Callable[[], None]:
        def run() -> None:
            rng = np.random.default_rng(tid)
            for _ in range(rounds):
                ks = rng.integers(0, 50_000, size=2_000, dtype=np.uint64)
                sl.insert_many(ks, ks)
                sl.delete_many(ks[::3])
                values, found = sl.get_many(ks)
                assert np.array_equal(values[found], ks[found])
                keys = sl.range_to_arrays(0, None)[0]
                assert np.all(keys[1:] > keys[:-1])

        return run

    def clearer() -> None:
        for _ in range(rounds):
            sl.clear()
            assert sl.get(MAX_KEY) is None

    run_threads([writer(0), writer(1), writer(2), clearer])
    sl._check()
    assert len(sl) == len(list(sl))
