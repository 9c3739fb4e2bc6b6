"""The compiled onebit policy (semcached.ext.onebit.GuardedFollower) beside its
pure-Python twin, LruGuard(QueueFollower(BucketBits())): the same victim at every
step, on unit and sized traces, with deletions, and the guard's bound."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from semcached.cachepolicy.bucket_bits import BucketBits, BucketTable
from semcached.cachepolicy.lru import LruPolicy
from semcached.cachepolicy.lru_guard import LruGuard
from semcached.cachepolicy.onebit import QueueFollower
from semcached.cachepolicy.policies import eviction_factory
from semcached.cachepolicy.replay import replay
from semcached.ext.onebit import GuardedFollower
from semcached.index.eviction import EvictionPolicy


def twins(*, sized: bool = False, slack: float = 0.005) -> tuple[EvictionPolicy, GuardedFollower]:
    python = LruGuard(QueueFollower(BucketBits(background=False, sized=sized)), slack=slack)
    return python, GuardedFollower(BucketTable(background=False, sized=sized), slack=slack)


def drive(
    policies: tuple[EvictionPolicy, GuardedFollower],
    keys: list[int],
    sizes: list[int] | None,
    capacity: int,
    *,
    delete_share: float = 0.0,
    seed: int = 0,
) -> int:
    """Run both policies as one cache would, asserting the same victim each time."""
    python, compiled = policies
    rng = np.random.default_rng(seed)
    cached: dict[int, int] = {}
    used = misses = 0
    for i, key in enumerate(keys):
        if key in cached:
            if rng.random() < delete_share:  # deleted or expired
                used -= cached.pop(key)
                python.forget(key)
                compiled.forget(key)
            else:
                python.record_access(key)
                compiled.record_access(key)
            continue
        misses += 1
        size = 1 if sizes is None else sizes[i]
        cached[key] = size
        used += size
        python.admit(key, size)
        compiled.admit(key, size)
        while used > capacity:
            victim = compiled.choose_victim()
            assert victim == python.choose_victim()
            assert victim in cached
            used -= cached.pop(victim)
            python.forget(victim)
            compiled.forget(victim)
    compiled._check()
    return misses


def zipf_keys(seed: int, n: int, objects: int, alpha: float) -> list[int]:
    rng = np.random.default_rng(seed)
    w = 1.0 / np.arange(1, objects + 1) ** alpha
    keys: list[int] = rng.permutation(objects)[rng.choice(objects, size=n, p=w / w.sum())].tolist()
    return keys


def shifting_keys(seed: int, n: int, objects: int) -> list[int]:
    """Zipf whose ids move every 3000 requests: the learned bits lose to LRU here, so
    the guard switches and the twins must agree on its LRU-following victims too."""
    keys = zipf_keys(seed, n, objects, 1.0)
    return [k + objects * (i // 3000) for i, k in enumerate(keys)]


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("capacity", [2, 30, 300])
def test_same_victims_on_unit_traces(seed: int, capacity: int) -> None:
    for keys in (zipf_keys(seed, 20_000, 2000, 1.0), shifting_keys(seed, 20_000, 500)):
        pair = twins()
        drive(pair, keys, None, capacity, seed=seed)
        assert pair[0].switches == pair[1].switches  # type: ignore[attr-defined]


def test_same_victims_with_sizes_and_deletions() -> None:
    keys = zipf_keys(4, 30_000, 3000, 0.9)
    size_of = np.random.default_rng(4).integers(1, 5000, size=3000)
    sizes = [int(size_of[k]) for k in keys]
    drive(twins(sized=True), keys, sizes, 400_000, delete_share=0.05, seed=4)
    drive(twins(), keys, None, 200, delete_share=0.1, seed=5)


def test_the_guard_switches_and_holds_the_bound() -> None:
    keys = shifting_keys(7, 60_000, 800)
    python, compiled = twins(slack=0.0)
    misses = drive((python, compiled), keys, None, 160, seed=7)
    lru = replay(LruPolicy(), keys, 160)
    assert compiled.lru_misses == lru
    assert compiled.switches >= 1
    assert misses <= lru + 160 + 1  # slack 0: M <= L + k + 1


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 1000), capacity=st.integers(2, 100), objects=st.integers(3, 300))
def test_same_victims_property(seed: int, capacity: int, objects: int) -> None:
    drive(
        twins(), zipf_keys(seed, 3000, objects, 0.8), None, capacity, delete_share=0.02, seed=seed
    )


def test_the_daemons_onebit_is_the_compiled_one() -> None:
    policy = eviction_factory("onebit")()
    assert isinstance(policy, GuardedFollower)
    assert policy.trainer.sized is False
