"""The LRU guard: its shadow counts exactly LRU's misses, it keeps the stated bound
against LRU under inner policies that are always wrong, it passes a good inner
policy's victims through, and it keeps its invariants under deletions and sizes."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from semcached.cachepolicy.belady import belady_unit
from semcached.cachepolicy.bits import OracleBits
from semcached.cachepolicy.labels import discard_labels
from semcached.cachepolicy.lru import LruPolicy
from semcached.cachepolicy.lru_guard import LruGuard
from semcached.cachepolicy.onebit import QueueFollower
from semcached.cachepolicy.replay import replay
from semcached.index.eviction import AccessFeatures, EvictionPolicy


class MostRecent(EvictionPolicy):
    """Evicts the most recently used item other than the incoming one: far worse than
    LRU on recency-friendly traces, the adversary the guard must contain."""

    def __init__(self) -> None:
        self._order: dict[int, None] = {}
        self._incoming: int | None = None

    def __len__(self) -> int:
        return len(self._order)

    def admit(self, key: int, size: int, features: AccessFeatures | None = None) -> None:
        self._order.pop(key, None)
        self._order[key] = None
        self._incoming = key

    def record_access(self, key: int, features: AccessFeatures | None = None) -> None:
        if key in self._order:
            del self._order[key]
            self._order[key] = None

    def forget(self, key: int) -> None:
        self._order.pop(key, None)

    def choose_victim(self) -> int | None:
        for key in reversed(self._order):
            if key != self._incoming or len(self._order) == 1:
                return key
        return None


def recency_trace(seed: int, n: int, objects: int) -> list[int]:
    """A working set that drifts slowly: LRU does well, MRU badly."""
    rng = np.random.default_rng(seed)
    centre = np.cumsum(rng.random(n) < 0.05)
    keys: list[int] = (centre + rng.integers(0, objects, size=n)).tolist()
    return keys


def test_the_shadow_counts_lrus_misses() -> None:
    keys = recency_trace(1, 20_000, 300)
    guard = LruGuard(MostRecent(), slack=1.0 - 1e-9)  # never intervenes
    replay(guard, keys, 100)
    assert guard.lru_misses == replay(LruPolicy(), keys, 100)
    assert guard.switches == 0


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    objects=st.integers(5, 400),
    capacity=st.integers(2, 120),
    slack=st.sampled_from([0.0, 0.005, 0.02, 0.1]),
)
def test_bound_against_lru_holds_under_an_adversarial_inner_policy(
    seed: int, objects: int, capacity: int, slack: float
) -> None:
    keys = recency_trace(seed, 4000, objects)
    guard = LruGuard(MostRecent(), slack=slack)
    misses = replay(guard, keys, capacity, check=guard._check)
    lru = replay(LruPolicy(), keys, capacity)
    # The docstring's bound: M <= L + slack * n + k + 1.
    assert misses <= lru + slack * len(keys) + capacity + 1


def test_the_guard_contains_always_wrong_bits() -> None:
    keys = recency_trace(3, 60_000, 2000)
    capacity = 500
    labels = discard_labels(keys, capacity)
    wrong = QueueFollower(OracleBits(labels, invert=True))
    unguarded = replay(wrong, keys, capacity)
    guard = LruGuard(QueueFollower(OracleBits(labels, invert=True)), slack=0.005)
    guarded = replay(guard, keys, capacity)
    lru = replay(LruPolicy(), keys, capacity)
    assert unguarded > lru + 0.05 * len(keys)  # the adversary is really bad
    assert guarded <= lru + 0.01 * len(keys)  # within 1 % of requests of LRU
    assert guard.switches >= 1


def test_a_better_inner_policy_passes_through() -> None:
    rng = np.random.default_rng(5)
    w = 1.0 / np.arange(1, 2001)
    keys: list[int] = rng.choice(2000, size=30_000, p=w / w.sum()).tolist()
    capacity = 100
    oracle = LruGuard(QueueFollower(OracleBits(discard_labels(keys, capacity))))
    assert replay(oracle, keys, capacity) == belady_unit(keys, capacity).misses
    assert oracle.switches == 0


def test_deletions_and_sizes_keep_the_invariants() -> None:
    rng = np.random.default_rng(7)
    guard = LruGuard(MostRecent(), slack=0.01)
    cached: dict[int, int] = {}
    used = 0
    capacity = 5000
    for _ in range(20_000):
        key = int(rng.integers(0, 300))
        if key in cached:
            if rng.random() < 0.1:  # deleted or expired, not evicted
                used -= cached.pop(key)
                guard.forget(key)
            else:
                guard.record_access(key)
        else:
            size = int(rng.integers(1, 400))
            cached[key] = size
            used += size
            guard.admit(key, size)
            while used > capacity:
                victim = guard.choose_victim()
                assert victim in cached
                used -= cached.pop(victim)
                guard.forget(victim)
        guard._check()
    assert len(guard) == len(cached)
