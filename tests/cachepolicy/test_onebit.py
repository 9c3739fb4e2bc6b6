"""The one-bit policies: hand-made traces, Belady's misses with oracle bits, the
guard's bound under always-wrong bits, MARK&PREDICT, and a state machine that runs
the discard follower beside a plain reference model."""

from __future__ import annotations

import random

import numpy as np
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from semcached.cachepolicy.belady import belady_sized, belady_unit
from semcached.cachepolicy.bits import OracleBits
from semcached.cachepolicy.labels import discard_labels, phase_labels
from semcached.cachepolicy.lru import LruPolicy
from semcached.cachepolicy.onebit import DiscardFollower, MarkAndPredict
from semcached.cachepolicy.replay import replay


def zipf_keys(seed: int, n: int, objects: int, alpha: float = 1.0) -> list[int]:
    rng = np.random.default_rng(seed)
    w = 1.0 / np.arange(1, objects + 1) ** alpha
    keys: list[int] = rng.choice(objects, size=n, p=w / w.sum()).tolist()
    return keys


def test_follower_evicts_the_least_recent_item_with_bit_1() -> None:
    # capacity 3. Bits per request: 1:0, 2:1, 3:1, 4:0 -> 4 evicts 2 (oldest bit-1).
    follower = DiscardFollower(OracleBits([0, 1, 1, 0, 0]))
    misses = replay(follower, [1, 2, 3, 4, 2], 3, check=follower._check)
    assert misses == 5  # 2 was evicted, so its last request misses
    assert len(follower) == 3


def test_follower_without_any_bit_1_is_lru() -> None:
    keys = zipf_keys(3, 5000, 300)
    follower = DiscardFollower(OracleBits(np.zeros(len(keys), dtype=bool)))
    assert replay(follower, keys, 40) == replay(LruPolicy(), keys, 40)


def test_a_hit_refreshes_the_bit() -> None:
    # capacity 2; 1 gets bit 1, then a hit on 1 with bit 0; 2 has bit 1 -> 3 evicts 2.
    follower = DiscardFollower(OracleBits([1, 1, 0, 0]))
    replay(follower, [1, 2, 1, 3], 2, check=follower._check)
    assert follower.choose_victim() in (1, 3)
    assert 2 not in {follower.choose_victim()}
    assert len(follower) == 2


@pytest.mark.parametrize("guard", [False, True])
@pytest.mark.parametrize("seed", range(6))
def test_follower_with_oracle_bits_reproduces_belady(seed: int, guard: bool) -> None:
    rng = random.Random(seed)
    keys = zipf_keys(seed, 6000, rng.choice([100, 500, 2000]), rng.choice([0.8, 1.0, 1.2]))
    capacity = rng.choice([2, 7, 50, 150])
    follower = DiscardFollower(OracleBits(discard_labels(keys, capacity)), guard=guard)
    assert replay(follower, keys, capacity) == belady_unit(keys, capacity).misses
    assert follower.detected_errors == 0  # right bits are never caught as errors


def test_follower_with_oracle_bits_reproduces_sized_belady() -> None:
    keys = zipf_keys(9, 6000, 800)
    sizes = [1 + (k * 7919) % 50 for k in keys]
    capacity = 2000
    labels = discard_labels(keys, capacity, sizes)
    follower = DiscardFollower(OracleBits(labels))
    assert replay(follower, keys, capacity, sizes) == belady_sized(keys, sizes, capacity).misses


def test_follower_checks_its_invariants_under_a_seeded_stress() -> None:
    keys = zipf_keys(4, 3000, 400)
    labels = discard_labels(keys, 30)
    for guard in (False, True):
        follower = DiscardFollower(OracleBits(labels, flip=0.3, seed=1), guard=guard, seed=2)
        replay(follower, keys, 30, check=follower._check)


# The guard's bound. Always-wrong bits (every bit inverted) make the unguarded
# follower evict exactly the items Belady keeps; the guard must keep the damage
# within a stated factor of randomized marking (the paper proves O(log k) robustness;
# we state 1.5x marking on these traces, measured 1.29x to 1.34x; the unguarded
# follower is 2.2x to 3.3x).
GUARD_FACTOR = 1.5


def hot_cold_keys(seed: int, n: int, capacity: int) -> list[int]:
    """80 % of requests to a hot set of 0.8 k items, the rest to a large cold set."""
    rng = np.random.default_rng(seed)
    hot = rng.random(n) < 0.8
    keys: list[int] = np.where(
        hot, rng.integers(0, int(0.8 * capacity), n), rng.integers(10**6, 10**6 + 50 * capacity, n)
    ).tolist()
    return keys


@pytest.mark.parametrize(
    ("trace", "capacity"),
    [("hot-cold", 20), ("hot-cold", 50), ("zipf-1.2", 50), ("zipf-0.9", 100)],
)
def test_guard_bounds_the_damage_of_always_wrong_bits(trace: str, capacity: int) -> None:
    if trace == "hot-cold":
        keys = hot_cold_keys(capacity, 8000, capacity)
    else:
        keys = zipf_keys(capacity, 8000, 500, float(trace[5:]))
    labels = discard_labels(keys, capacity)
    guarded = DiscardFollower(OracleBits(labels, invert=True), guard=True, seed=1)
    guarded_misses = replay(guarded, keys, capacity)
    marking = MarkAndPredict(OracleBits(np.zeros(len(keys), dtype=bool)), seed=1)
    marking_misses = replay(marking, keys, capacity)
    unguarded = DiscardFollower(OracleBits(labels, invert=True))
    unguarded_misses = replay(unguarded, keys, capacity)
    assert guarded_misses <= GUARD_FACTOR * marking_misses
    assert unguarded_misses > 2 * marking_misses  # without the guard the bound fails
    assert guarded.detected_errors > 0


def test_guard_protects_an_item_caught_as_a_prediction_error() -> None:
    # capacity 3, every bit 1 ("evict me"). 1 2 3 miss; 4 evicts 1, which empties the
    # old unvisited set ({1}: only 1 was cached when the phase began with 2's fault);
    # 5 starts a phase (old unvisited {2, 3, 4}) and evicts 2, the oldest bit-1 item;
    # 2 comes back in the same phase: a detected error, so 2 is guarded and the victim
    # is a random old unvisited item (3 or 4), not the oldest bit-1 item.
    follower = DiscardFollower(OracleBits(np.ones(10, dtype=bool)), guard=True, seed=0)
    replay(follower, [1, 2, 3, 4, 5, 2], 3, check=follower._check)
    assert follower.detected_errors == 1
    assert {2, 5} <= set(follower._tick_of)
    assert len(follower) == 3
    assert follower._guarded == {2}
    assert follower.choose_victim() != 2


def test_mark_and_predict_known_trace() -> None:
    # capacity 2, no information: 1 2 miss (both marked); 3: all marked -> new phase,
    # unmark 1 and 2, evict one of them at random; 3 is marked.
    policy = MarkAndPredict(OracleBits(np.zeros(3, dtype=bool)), seed=0)
    replay(policy, [1, 2, 3], 2, check=policy._check)
    assert policy.phases == 1
    assert 3 in policy._marked
    assert len(policy) == 2


def test_mark_and_predict_prefers_items_predicted_absent_next_phase() -> None:
    # capacity 2; bits: 1 -> 0 (needed next phase), 2 -> 1; fault on 3 evicts 2.
    policy = MarkAndPredict(OracleBits([0, 1, 0, 0]), seed=0)
    misses = replay(policy, [1, 2, 3, 1], 2, check=policy._check)
    assert misses == 3


@pytest.mark.parametrize("seed", range(3))
def test_mark_and_predict_with_true_phase_bits_beats_marking(seed: int) -> None:
    keys = zipf_keys(seed, 20_000, 2000, 1.0)
    capacity = 100
    with_bits = MarkAndPredict(OracleBits(phase_labels(keys, capacity)), seed=seed)
    without = MarkAndPredict(OracleBits(np.zeros(len(keys), dtype=bool)), seed=seed)
    assert replay(with_bits, keys, capacity) < 0.95 * replay(without, keys, capacity)
    # Phases are the trace's k-phases: one per phase boundary.
    assert with_bits.phases == int(np.max(np.asarray(_phases(keys, capacity))))


def _phases(keys: list[int], capacity: int) -> list[int]:
    from semcached.cachepolicy.labels import phase_ids

    return phase_ids(keys, capacity).tolist()


def test_mark_and_predict_stress_invariants() -> None:
    keys = zipf_keys(5, 4000, 300)
    policy = MarkAndPredict(OracleBits(phase_labels(keys, 25), flip=0.2, seed=3), seed=4)
    replay(policy, keys, 25, check=policy._check)


def test_forget_of_untracked_keys_and_empty_policies() -> None:
    for policy in (DiscardFollower(OracleBits([])), MarkAndPredict(OracleBits([]))):
        assert policy.choose_victim() is None
        policy.forget(5)
        policy.record_access(5)
        assert len(policy) == 0


class FollowerVersusReference(RuleBasedStateMachine):
    """DiscardFollower (no guard) beside a model: a recency list and a bit per key."""

    @initialize(seed=st.integers(0, 2**32 - 1))
    def start(self, seed: int) -> None:
        rng = random.Random(seed)
        bits = [rng.random() < 0.5 for _ in range(400)]
        self.policy = DiscardFollower(OracleBits(bits))
        self.bits = bits
        self.used = 0
        self.order: list[int] = []  # least recent first
        self.bit: dict[int, bool] = {}

    def _observe(self, key: int) -> None:
        if key in self.order:
            self.order.remove(key)
        self.order.append(key)
        self.bit[key] = self.bits[self.used]
        self.used += 1

    @rule(key=st.integers(0, 15))
    def admit(self, key: int) -> None:
        if self.used >= len(self.bits):
            return
        new = key not in self.bit
        self.policy.admit(key, 1)
        self._observe(key)
        if new:
            self.last_admitted = key

    @rule(key=st.integers(0, 15))
    def access(self, key: int) -> None:
        if self.used >= len(self.bits) or key not in self.bit:
            return
        self.policy.record_access(key)
        self._observe(key)

    @rule(key=st.integers(0, 15))
    def forget(self, key: int) -> None:
        self.policy.forget(key)
        if key in self.bit:
            self.order.remove(key)
            del self.bit[key]

    @rule()
    def evict(self) -> None:
        victim = self.policy.choose_victim()
        if not self.order:
            assert victim is None
            return
        assert victim == self.policy.choose_victim()  # naming it twice changes nothing
        admitted = getattr(self, "last_admitted", None)
        others = [k for k in self.order if k != admitted] or self.order
        ones = [k for k in others if self.bit[k]]
        assert victim == (ones or others)[0]
        self.policy.forget(victim)
        self.order.remove(victim)
        del self.bit[victim]

    @invariant()
    def consistent(self) -> None:
        if hasattr(self, "policy"):
            self.policy._check()
            assert len(self.policy) == len(self.order)


TestFollowerVersusReference = FollowerVersusReference.TestCase
TestFollowerVersusReference.settings = settings(
    max_examples=50, stateful_step_count=50, deadline=None
)
