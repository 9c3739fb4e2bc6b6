"""Belady (unit and sized): hand-made traces, exhaustive optimum on tiny traces, and
agreement with libCacheSim's Belady on its oracleGeneral conversion."""

from __future__ import annotations

import functools
import random
import sys
from pathlib import Path

import numpy as np
import pytest

from semcached.cachepolicy.belady import (
    belady_sized,
    belady_sized_python,
    belady_unit,
    belady_unit_python,
    next_request,
)

sys.path.insert(0, str(Path(__file__).parents[2] / "bench"))
from _eviction_traces import Trace, libcachesim_miss_ratios


def test_next_request() -> None:
    assert next_request([1, 2, 1, 3, 2, 1]).tolist() == [2, 4, 5, 6, 6, 6]
    assert next_request([]).tolist() == []


def test_known_trace() -> None:
    # k=3: 1 2 3 miss; 4 evicts 3 (furthest: 3 comes last); 1 2 hit; 3 evicts 4... etc.
    keys = [1, 2, 3, 4, 1, 2, 5, 1, 2, 3, 4, 5]
    result = belady_unit(keys, 3)
    # The classic textbook example: OPT has 7 faults with 3 frames.
    assert result.misses == 7
    # The request of 3 at position 2 is evicted before its next request.
    assert result.evicted_after[2]


def test_capacity_above_working_set_only_compulsory_misses() -> None:
    keys = [random.Random(1).randrange(20) for _ in range(500)]
    assert belady_unit(keys, 20).misses == len(set(keys))
    assert not belady_unit(keys, 20).evicted_after.any()


def _exhaustive_optimum(keys: tuple[int, ...], capacity: int) -> int:
    """Fewest misses over every eviction choice (demand paging), by memoised search."""

    @functools.cache
    def best(i: int, cache: frozenset[int]) -> int:
        if i == len(keys):
            return 0
        key = keys[i]
        if key in cache:
            return best(i + 1, cache)
        if len(cache) < capacity:
            return 1 + best(i + 1, cache | {key})
        return 1 + min(best(i + 1, (cache - {v}) | {key}) for v in cache)

    return best(0, frozenset())


@pytest.mark.parametrize("seed", range(30))
def test_unit_belady_is_optimal_on_tiny_traces(seed: int) -> None:
    rng = random.Random(seed)
    keys = tuple(rng.randrange(6) for _ in range(14))
    capacity = rng.randrange(1, 5)
    assert belady_unit(keys, capacity).misses == _exhaustive_optimum(keys, capacity)


def test_sized_with_unit_sizes_is_unit() -> None:
    rng = random.Random(5)
    keys = [rng.randrange(200) for _ in range(3000)]
    unit = belady_unit(keys, 37)
    sized = belady_sized(keys, [1] * len(keys), 37)
    assert sized.misses == unit.misses
    assert (sized.evicted_after == unit.evicted_after).all()


def test_sized_object_larger_than_cache_is_not_admitted() -> None:
    result = belady_sized([1, 2, 1, 2], [10, 3, 10, 3], 5)
    assert result.misses == 3  # 1 twice (never fits), 2 once
    assert result.byte_misses == 23


@pytest.mark.parametrize("seed", range(4))
def test_matches_libcachesim_belady(tmp_path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    ids = rng.zipf(1.1, 20_000)
    keys = ids[ids <= 2_000][:8_000].tolist()
    sizes = [int(50 + (k * 2654435761) % 950) for k in keys]  # a fixed size per object
    unit, sized = Trace(f"u{seed}", keys, None), Trace(f"s{seed}", keys, sizes)
    n = len(keys)
    caps = [max(2, int(f * unit.working_set())) for f in (0.01, 0.05, 0.2)]
    theirs = libcachesim_miss_ratios(unit, caps, ["belady"], tmp_path)
    for cap in caps:
        assert belady_unit(keys, cap).misses == round(theirs["belady", cap] * n)
    byte_caps = [int(f * sized.working_set()) for f in (0.01, 0.05, 0.2)]
    theirs = libcachesim_miss_ratios(sized, byte_caps, ["belady"], tmp_path)
    for cap in byte_caps:
        assert belady_sized(keys, sizes, cap).misses == round(theirs["belady", cap] * n)


@pytest.mark.parametrize("seed", range(8))
def test_compiled_belady_matches_its_python_twin(seed: int) -> None:
    rng = np.random.default_rng(seed)
    objects = int(rng.integers(1, 3000))
    keys = (rng.zipf(1.3, size=8000) % objects).tolist()
    for capacity in (1, 2, 7, 64, 900):
        fast, slow = belady_unit(keys, capacity), belady_unit_python(keys, capacity)
        assert fast.misses == slow.misses
        assert (fast.evicted_after == slow.evicted_after).all()
    with pytest.raises(ValueError, match="capacity"):
        belady_unit(keys, 0)


@pytest.mark.parametrize("seed", range(6))
def test_compiled_sized_belady_matches_its_python_twin(seed: int) -> None:
    rng = np.random.default_rng(seed)
    objects = int(rng.integers(2, 900))
    keys = rng.integers(0, objects, size=6000)
    # Odd seeds: a size per request (an item's size changes); even: a size per item.
    sizes = rng.integers(1, 400, size=6000) if seed % 2 else rng.integers(1, 400, objects)[keys]
    for capacity in (1, 50, 399, 5000, 60_000):
        fast = belady_sized(keys, sizes, capacity)
        slow = belady_sized_python(keys, sizes, capacity)
        assert (fast.misses, fast.byte_misses) == (slow.misses, slow.byte_misses)
        assert (fast.evicted_after == slow.evicted_after).all()
