"""S3-FIFO: hand-made traces, a state machine beside a plain reference model, and
closeness to libCacheSim's S3FIFO."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from semcached.cachepolicy.lru import LruPolicy
from semcached.cachepolicy.replay import replay
from semcached.cachepolicy.s3fifo import S3FifoPolicy

sys.path.insert(0, str(Path(__file__).parents[2] / "bench"))
from _eviction_traces import Trace, libcachesim_miss_ratios, zipf_trace


def test_one_hit_items_leave_through_the_small_queue() -> None:
    # capacity 20: 1..9 hot (hit once each after admission), then a scan of new ids:
    # every scan item is evicted from S, the hot items were promoted and stay.
    policy = S3FifoPolicy()
    hot = list(range(1, 10))
    trace = hot + hot + list(range(100, 140)) + hot
    misses = replay(policy, trace, 20, check=policy._check)
    assert misses == 9 + 40
    assert set(policy._main) == set(hot)  # the hot set never misses again after its first requests


def test_scan_resistance_beats_lru() -> None:
    hot = list(range(1, 9))
    trace = (hot * 3 + list(range(1000, 1020))) * 20
    trace = [k if k < 1000 else k + 20 * (i // 44) for i, k in enumerate(trace)]
    # capacity 20: LRU loses the hot set to every scan (8 + 20 misses a round); S3-FIFO
    # keeps it in M after the first round and only the scans miss.
    assert replay(LruPolicy(), trace, 20) == 20 * (8 + 20)
    assert replay(S3FifoPolicy(), trace, 20) == 8 + 20 * 20


def test_ghost_hit_goes_to_main() -> None:
    policy = S3FifoPolicy()
    # capacity 2: 1 2 miss; 3 evicts 1 from S (no hit) -> ghost; 1 again -> main.
    replay(policy, [1, 2, 3, 1], 2, check=policy._check)
    assert 1 in policy._main


def test_empty_and_unknown_keys() -> None:
    policy = S3FifoPolicy()
    assert policy.choose_victim() is None
    policy.forget(3)
    policy.record_access(3)
    policy.admit(3, 5)
    assert policy.choose_victim() == 3  # the only item
    policy._check()
    with pytest.raises(ValueError, match="small_ratio"):
        S3FifoPolicy(small_ratio=1.5)


class Reference:
    """S3-FIFO written as plainly as possible: lists, oldest first."""

    def __init__(self) -> None:
        self.small: list[int] = []
        self.main: list[int] = []
        self.ghost: list[int] = []
        self.size: dict[int, int] = {}
        self.freq: dict[int, int] = {}
        self.incoming: int | None = None

    def admit(self, key: int, size: int) -> None:
        if key in self.size:
            self.access(key)
            return
        self.size[key], self.freq[key] = size, 0
        if key in self.ghost:
            self.ghost.remove(key)
            self.main.append(key)
        else:
            self.small.append(key)
        self.incoming = key

    def access(self, key: int) -> None:
        if key in self.freq:
            self.freq[key] = min(self.freq[key] + 1, 3)

    def victim(self) -> int:
        total = sum(self.size.values())
        while True:
            small_other = sum(self.size[k] for k in self.small if k != self.incoming)
            main_other = [k for k in self.main if k != self.incoming]
            if small_other > 0 and (small_other >= 0.1 * total or not main_other):
                key = self.small[0]
                if self.freq[key] > 0:
                    self.small.pop(0)
                    self.main.append(key)
                    self.freq[key] = 0
                    continue
                return key
            if main_other:
                key = self.main[0]
                if key == self.incoming or self.freq[key] > 0:
                    if key != self.incoming:
                        self.freq[key] -= 1
                    self.main.append(self.main.pop(0))
                    continue
                return key
            return (self.small + self.main)[0]

    def evict(self, key: int) -> None:
        if key in self.small:
            self.small.remove(key)
            self.ghost.append(key)
            while len(self.ghost) > max(len(self.main), 1):
                self.ghost.pop(0)
        else:
            self.main.remove(key)
        self.drop(key)

    def forget(self, key: int) -> None:
        if key in self.size:
            (self.small if key in self.small else self.main).remove(key)
            self.drop(key)

    def drop(self, key: int) -> None:
        del self.size[key], self.freq[key]
        if key == self.incoming:
            self.incoming = None


class S3FifoVersusReference(RuleBasedStateMachine):
    @initialize()
    def start(self) -> None:
        self.policy = S3FifoPolicy()
        self.ref = Reference()

    @rule(key=st.integers(0, 20), size=st.integers(1, 5))
    def admit(self, key: int, size: int) -> None:
        self.policy.admit(key, size)
        self.ref.admit(key, size)

    @rule(key=st.integers(0, 20))
    def access(self, key: int) -> None:
        self.policy.record_access(key)
        self.ref.access(key)

    @rule(key=st.integers(0, 20))
    def forget(self, key: int) -> None:
        self.policy.forget(key)
        self.ref.forget(key)

    @rule()
    def evict(self) -> None:
        victim = self.policy.choose_victim()
        if not self.ref.size:
            assert victim is None
            return
        assert victim == self.ref.victim()
        assert victim == self.policy.choose_victim()
        self.policy.forget(victim)
        self.ref.evict(victim)

    @invariant()
    def same_state(self) -> None:
        if hasattr(self, "policy"):
            self.policy._check()
            assert list(self.policy._small) == self.ref.small
            assert list(self.policy._main) == self.ref.main
            assert list(self.policy._ghost) == self.ref.ghost


TestS3FifoVersusReference = S3FifoVersusReference.TestCase
TestS3FifoVersusReference.settings = settings(
    max_examples=60, stateful_step_count=60, deadline=None
)


@pytest.mark.parametrize("alpha", [0.8, 1.2])
def test_close_to_libcachesim(tmp_path: Path, alpha: float) -> None:
    trace = zipf_trace(alpha, 30_000, 3_000, seed=2)
    caps = [30, 150, 600]
    theirs = libcachesim_miss_ratios(trace, caps, ["s3fifo"], tmp_path)
    for cap in caps:
        ours = replay(S3FifoPolicy(), trace.keys, cap) / len(trace.keys)
        assert abs(ours - theirs["s3fifo", cap]) <= 0.03 * theirs["s3fifo", cap]


def test_stress_invariants_with_sizes() -> None:
    rng = np.random.default_rng(1)
    keys = rng.zipf(1.1, 8000)
    keys = keys[keys < 500].tolist()
    sizes = [1 + k % 13 for k in keys]
    policy = S3FifoPolicy()
    replay(policy, keys, 300, sizes, check=policy._check)
    assert isinstance(Trace("x", keys, sizes).working_set(), int)
