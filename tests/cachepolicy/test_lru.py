"""LRU against hand-made traces with known outcomes."""

from __future__ import annotations

from semcached.cachepolicy.lru import LruPolicy
from semcached.index.eviction import EvictionPolicy


def simulate(policy: EvictionPolicy, trace: list[int], capacity: int) -> int:
    """Replay ``trace`` through a cache of ``capacity`` items; return the miss count."""
    cached: set[int] = set()
    misses = 0
    for key in trace:
        if key in cached:
            policy.record_access(key)
            continue
        misses += 1
        if len(cached) >= capacity:
            victim = policy.choose_victim()
            assert victim is not None
            cached.discard(victim)
            policy.forget(victim)
        cached.add(key)
        policy.admit(key, 1)
        assert len(policy) == len(cached)
    return misses


def test_lru_known_trace() -> None:
    # capacity 3: 1 2 3 miss; 1 hit (order 2 3 1); 4 evicts 2; 2 evicts 3; 1 hit; 3 evicts 4
    assert simulate(LruPolicy(), [1, 2, 3, 1, 4, 2, 1, 3], capacity=3) == 6


def test_lru_cyclic_scan_misses_every_time() -> None:
    trace = [1, 2, 3, 4] * 5
    assert simulate(LruPolicy(), trace, capacity=3) == len(trace)


def test_empty_and_forget_unknown() -> None:
    policy = LruPolicy()
    assert policy.choose_victim() is None
    policy.forget(42)
    policy.record_access(42)
    assert len(policy) == 0


def test_lru_matches_an_ordered_dict_reference() -> None:
    import random
    from collections import OrderedDict

    rng = random.Random(11)
    policy = LruPolicy()
    reference: OrderedDict[int, None] = OrderedDict()
    for _ in range(5000):
        key = rng.randrange(300)
        op = rng.random()
        if op < 0.4:
            policy.admit(key, 1)
            reference[key] = None
            reference.move_to_end(key)
        elif op < 0.8:
            policy.record_access(key)
            if key in reference:
                reference.move_to_end(key)
        else:
            policy.forget(key)
            reference.pop(key, None)
        policy._check()
        assert len(policy) == len(reference)
        assert policy.choose_victim() == next(iter(reference), None)
