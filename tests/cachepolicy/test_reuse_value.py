"""Eviction by reuse value (GDSF): hand-made cases, the admitted-last rule, and a
state machine beside a plain reference model (a dict and a linear minimum scan)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from semcached.cachepolicy.policies import EVICTION_POLICIES, eviction_factory
from semcached.cachepolicy.replay import replay
from semcached.cachepolicy.reuse_value import ReuseValuePolicy


def evict(policy: ReuseValuePolicy) -> int:
    victim = policy.choose_victim()
    assert victim is not None
    policy.forget(victim)
    policy._check()
    return victim


def test_cheap_big_item_goes_before_costly_small_one() -> None:
    policy = ReuseValuePolicy()
    policy.admit(1, 1000, cost=10.0)  # 10 tokens saved per 1000 bytes: 0.01
    policy.admit(2, 10, cost=500.0)  # 50
    policy.admit(3, 10, cost=500.0)
    assert policy.priority(1) == pytest.approx(0.01)
    assert evict(policy) == 1
    assert policy.clock == pytest.approx(0.01)
    # Same size and frequency: the lower cost goes.
    policy.admit(4, 10, cost=20.0)
    policy.admit(5, 10)  # cost 1.0 by default
    assert evict(policy) == 4


def test_frequency_matters() -> None:
    policy = ReuseValuePolicy()
    for key in (1, 2, 3):
        policy.admit(key, 1)
    policy.record_access(1)
    policy.record_access(1)
    policy.record_access(2)
    policy.admit(4, 1)
    assert [policy.priority(k) for k in (1, 2, 3, 4)] == [3.0, 2.0, 1.0, 1.0]
    assert evict(policy) == 3
    assert policy.clock == 1.0
    policy.admit(5, 1)  # now 4 (priority 1) may go: 5 is the item admitted last
    assert policy.priority(5) == 2.0  # L + 1
    assert evict(policy) == 4
    assert evict(policy) == 2  # 2 (2.0, set before 5) beats 5 (2.0) on age


def test_aging_lets_new_items_displace_a_formerly_hot_one() -> None:
    # A cache of two items: item 0 was hit 4 times (priority 5), then one-hit items
    # stream through. Each eviction raises L, so newcomers start ever higher: item k
    # enters at L + 1, L reaches 5 after item 9, and item 10 (priority 5, newer) ties
    # with the old hot item, which goes. Without aging (L = 0) it would stay forever.
    policy = ReuseValuePolicy()
    policy.admit(0, 1)
    for _ in range(4):
        policy.record_access(0)
    evicted = []
    for key in range(1, 13):
        policy.admit(key, 1)
        if len(policy) > 2:
            evicted.append(evict(policy))
    assert evicted[:9] == [1, 2, 3, 4, 5, 6, 7, 8, 0]
    assert policy.clock >= 5.0


def test_never_names_the_item_admitted_last_while_another_is_tracked() -> None:
    policy = ReuseValuePolicy()
    policy.admit(1, 1, cost=100.0)
    policy.admit(2, 1, cost=0.0)  # priority 0: the lowest, but it just came in
    assert policy.choose_victim() == 1
    assert policy.choose_victim() == 1  # named again until something changes
    assert evict(policy) == 1
    assert policy.clock == 100.0
    assert policy.choose_victim() == 2  # alone now
    single = ReuseValuePolicy()
    single.admit(7, 3)
    assert single.choose_victim() == 7


def test_only_an_eviction_advances_the_clock() -> None:
    policy = ReuseValuePolicy()
    policy.admit(1, 1)
    policy.admit(2, 1, cost=2.0)
    policy.admit(3, 1, cost=3.0)
    policy.forget(2)  # expired or deleted: not an eviction
    assert policy.clock == 0.0
    assert policy.choose_victim() == 1
    policy.record_access(3)  # a hit elsewhere between naming and removing
    policy.forget(1)
    assert policy.clock == 1.0
    policy._check()


def test_set_cost_reorders_without_counting_a_hit() -> None:
    policy = ReuseValuePolicy()
    policy.admit(1, 1)
    policy.admit(2, 1)
    policy.admit(3, 1)
    assert policy.choose_victim() == 1  # a tie with 2: the older entry
    policy.set_cost(1, 5.0)
    assert policy.priority(1) == 5.0
    assert policy.choose_victim() == 2
    policy.set_cost(99, 1.0)  # unknown: ignored
    policy.admit(2, 1, cost=0.5)  # known: a hit (freq 2) at the new cost
    assert policy.priority(2) == 1.0
    policy._check()
    for bad in (-1.0, math.nan, math.inf):
        with pytest.raises(ValueError, match="cost"):
            policy.set_cost(1, bad)
        with pytest.raises(ValueError, match="cost"):
            policy.admit(50, 1, cost=bad)
    assert len(policy) == 3


def test_empty_and_unknown_keys() -> None:
    policy = ReuseValuePolicy()
    assert policy.choose_victim() is None
    policy.forget(3)
    policy.record_access(3)
    assert policy.priority(3) is None
    policy.admit(3, 0)  # size 0 counts as 1 byte
    assert policy.priority(3) == 1.0
    assert len(policy) == 1
    policy._check()


def test_stale_heap_entries_are_compacted() -> None:
    policy = ReuseValuePolicy()
    for key in range(10):
        policy.admit(key, 1)
    for _ in range(1000):
        policy.record_access(0)
        assert len(policy._heap) <= 3 * len(policy)
    for key in range(1, 10):
        policy.forget(key)
        policy._check()
    assert policy.choose_victim() == 0


def test_registered_by_name() -> None:
    assert "reuse" in EVICTION_POLICIES
    assert isinstance(eviction_factory("reuse")(), ReuseValuePolicy)


def test_stress_invariants_with_sizes() -> None:
    rng = np.random.default_rng(3)
    keys = rng.zipf(1.1, 6000)
    keys = keys[keys < 400].tolist()
    sizes = [1 + k % 11 for k in keys]
    policy = ReuseValuePolicy()
    misses = replay(policy, keys, 250, sizes, check=policy._check)
    assert 0 < misses < len(keys)


@dataclass
class RefItem:
    size: int
    cost: float
    freq: int
    base: float
    priority: float = 0.0
    stamp: int = 0


class Reference:
    """GDSF as plainly as possible: a dict, and a linear scan for the minimum of
    (priority, the order priorities were set in)."""

    def __init__(self) -> None:
        self.items: dict[int, RefItem] = {}
        self.clock = 0.0
        self.stamps = 0
        self.incoming: int | None = None
        self.chosen: int | None = None

    def set(self, item: RefItem) -> None:
        item.priority = item.base + item.freq * item.cost / item.size
        self.stamps += 1
        item.stamp = self.stamps

    def admit(self, key: int, size: int, cost: float | None) -> None:
        if key in self.items:
            if cost is not None:
                self.items[key].cost = cost
                self.chosen = None
            self.access(key)
            return
        item = self.items[key] = RefItem(max(size, 1), 1.0 if cost is None else cost, 1, self.clock)
        self.set(item)
        self.incoming = key
        self.chosen = None

    def access(self, key: int) -> None:
        if key in self.items:
            item = self.items[key]
            item.freq += 1
            item.base = self.clock
            self.set(item)
            if key == self.chosen:
                self.chosen = None

    def set_cost(self, key: int, cost: float) -> None:
        if key in self.items:
            self.items[key].cost = cost
            self.set(self.items[key])
            self.chosen = None

    def victim(self) -> int | None:
        keys = [k for k in self.items if k != self.incoming] or list(self.items)
        if not keys:
            return None
        self.chosen = min(keys, key=lambda k: (self.items[k].priority, self.items[k].stamp))
        return self.chosen

    def forget(self, key: int) -> None:
        item = self.items.pop(key, None)
        if item is None:
            return
        if key == self.chosen:
            self.clock = max(self.clock, item.priority)
        if key == self.incoming:
            self.incoming = None
        self.chosen = None


keys_st = st.integers(0, 8)
costs = st.sampled_from([0.0, 0.5, 1.0, 3.0, 100.0])


class ReuseValueVersusReference(RuleBasedStateMachine):
    @initialize()
    def start(self) -> None:
        self.policy = ReuseValuePolicy()
        self.ref = Reference()

    @rule(key=keys_st, size=st.integers(0, 5), cost=st.none() | costs)
    def admit(self, key: int, size: int, cost: float | None) -> None:
        self.policy.admit(key, size, cost=cost)
        self.ref.admit(key, size, cost)

    @rule(key=keys_st)
    def access(self, key: int) -> None:
        self.policy.record_access(key)
        self.ref.access(key)

    @rule()
    def access_named_victim(self) -> None:
        # A hit on the victim between naming and removing it: it is no longer the one.
        if self.ref.chosen is not None:
            self.policy.record_access(self.ref.chosen)
            self.ref.access(self.ref.chosen)

    @rule(key=keys_st, cost=costs)
    def set_cost(self, key: int, cost: float) -> None:
        self.policy.set_cost(key, cost)
        self.ref.set_cost(key, cost)

    @rule(key=keys_st)
    def forget(self, key: int) -> None:
        self.policy.forget(key)
        self.ref.forget(key)

    @rule()
    def choose(self) -> None:
        assert self.policy.choose_victim() == self.ref.victim()

    @rule()
    def evict(self) -> None:
        victim = self.policy.choose_victim()
        assert victim == self.ref.victim()
        if victim is not None:
            assert victim == self.policy.choose_victim()
            self.policy.forget(victim)
            self.ref.forget(victim)

    @invariant()
    def same_state(self) -> None:
        if hasattr(self, "policy"):
            self.policy._check()
            assert len(self.policy) == len(self.ref.items)
            assert self.policy.clock == self.ref.clock
            for key, item in self.ref.items.items():
                assert self.policy.priority(key) == item.priority


TestReuseValueVersusReference = ReuseValueVersusReference.TestCase
TestReuseValueVersusReference.settings = settings(
    max_examples=80, stateful_step_count=60, deadline=None
)
