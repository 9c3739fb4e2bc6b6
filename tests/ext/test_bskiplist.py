"""BSkipList: the map API, edge keys, argument checking and the batch forms."""

from __future__ import annotations

import numpy as np
import pytest

from semcached.ext.bskiplist import DEFAULT_NODE_SIZE, HEIGHT, MAX_KEY, BSkipList

EDGE_KEYS = [0, 1, 2, MAX_KEY // 2, MAX_KEY // 2 + 1, MAX_KEY - 1, MAX_KEY]


@pytest.fixture(params=[4, 5, DEFAULT_NODE_SIZE], ids=lambda b: f"B{b}")
def sl(request: pytest.FixtureRequest) -> BSkipList:
    return BSkipList(request.param)


def u64(values: list[int]) -> np.ndarray:
    return np.array(values, dtype=np.uint64)


def test_defaults() -> None:
    s = BSkipList()
    assert s.node_size == DEFAULT_NODE_SIZE
    assert HEIGHT == 5
    assert MAX_KEY == 2**64 - 1
    assert repr(s) == f"BSkipList(len=0, node_size={DEFAULT_NODE_SIZE})"


def test_empty_map(sl: BSkipList) -> None:
    assert len(sl) == 0
    assert not sl
    assert list(sl) == []
    assert list(sl.items()) == []
    assert sl.get(0) is None
    assert sl.get(MAX_KEY, "x") == "x"
    assert 0 not in sl
    assert sl.successor(0) is None
    assert sl.predecessor(MAX_KEY) is None
    assert not sl.delete(0)
    with pytest.raises(KeyError):
        sl.pop_min()
    with pytest.raises(ValueError, match="empty"):
        sl.min()
    with pytest.raises(ValueError, match="empty"):
        sl.max()
    keys, values = sl.range_to_arrays()
    assert keys.dtype == values.dtype == np.uint64
    assert keys.size == values.size == 0
    sl.clear()
    sl._check()


def test_edge_keys_are_ordinary_keys(sl: BSkipList) -> None:
    for i, k in enumerate(reversed(EDGE_KEYS)):
        assert sl.insert(k, MAX_KEY - i)
    sl._check()
    assert list(sl) == EDGE_KEYS
    assert sl.min() == 0
    assert sl.max() == MAX_KEY
    assert sl.get(0) == MAX_KEY - (len(EDGE_KEYS) - 1)
    assert sl.get(MAX_KEY) == MAX_KEY
    assert MAX_KEY in sl
    assert sl.successor(MAX_KEY) == MAX_KEY
    assert sl.predecessor(0) == 0
    assert sl.successor(3) == MAX_KEY // 2
    assert sl.predecessor(MAX_KEY // 2 - 1) == 2
    assert list(sl.keys(MAX_KEY - 1)) == [MAX_KEY - 1, MAX_KEY]
    assert list(sl.keys(MAX_KEY - 1, MAX_KEY)) == [MAX_KEY - 1]
    assert list(sl.keys(0, 2**64)) == EDGE_KEYS
    assert sl.delete(MAX_KEY)
    assert sl.successor(MAX_KEY) is None
    assert sl.pop_min() == (0, MAX_KEY - (len(EDGE_KEYS) - 1))
    assert sl.predecessor(0) is None
    sl._check()


def test_insert_is_an_upsert(sl: BSkipList) -> None:
    assert sl.insert(7, 1)
    assert not sl.insert(7, 2)
    assert sl.get(7) == 2
    assert len(sl) == 1
    assert sl.delete(7)
    assert not sl.delete(7)
    assert len(sl) == 0
    sl._check()


def test_many_keys_in_and_out(sl: BSkipList) -> None:
    rng = np.random.default_rng(7)
    keys = rng.choice(50_000, size=3_000, replace=False).astype(np.uint64) * 12_345_678_901
    for k in keys.tolist():
        assert sl.insert(k, k ^ 0xFF)
    stats = sl._check()
    assert stats[0][1] == len(sl) == 3_000
    assert stats[HEIGHT - 1][1] <= stats[0][1]
    assert list(sl) == sorted(keys.tolist())
    for k in keys[::2].tolist():
        assert sl.delete(k)
    sl._check()
    assert list(sl.values()) == [k ^ 0xFF for k in sorted(keys[1::2].tolist())]


def test_sequential_keys_do_not_build_degenerate_towers() -> None:
    s = BSkipList(64)
    s.insert_many(np.arange(100_000, dtype=np.uint64), np.arange(100_000, dtype=np.uint64))
    (leaves, _), (_, inner_keys), *_ = s._check()
    # Promotion probability is 2/B: about 3 % of keys reach level 1.
    assert 1_000 < inner_keys < 5_000
    assert leaves < 100_000 // 16


def test_range_bounds(sl: BSkipList) -> None:
    sl.insert_many(np.arange(0, 100, 2, dtype=np.uint64), np.arange(50, dtype=np.uint64))
    assert list(sl.keys(10, 20)) == [10, 12, 14, 16, 18]
    assert list(sl.keys(11, 21)) == [12, 14, 16, 18, 20]
    assert list(sl.range(96)) == [(96, 48), (98, 49)]
    assert list(sl.items(5, 5)) == []
    assert list(sl.items(20, 10)) == []
    assert list(sl.keys(0, 0)) == []
    assert list(sl.values(0, 5)) == [0, 1, 2]
    keys, values = sl.range_to_arrays(10, 30, limit=3)
    assert keys.tolist() == [10, 12, 14]
    assert values.tolist() == [5, 6, 7]
    keys, values = sl.range_to_arrays(90)
    assert keys.tolist() == [90, 92, 94, 96, 98]
    assert sl.range_to_arrays(0, None, limit=0)[0].size == 0
    with pytest.raises(OverflowError):
        list(sl.keys(0, 2**64 + 1))
    with pytest.raises(OverflowError):
        list(sl.keys(-1))
    with pytest.raises(ValueError, match="limit"):
        sl.range_to_arrays(0, 10, limit=-1)


def test_long_scans_cross_chunks() -> None:
    s = BSkipList(8)
    n = 5_000  # more than one internal scan chunk
    s.insert_many(np.arange(n, dtype=np.uint64) * 3, np.arange(n, dtype=np.uint64))
    assert list(s) == [3 * i for i in range(n)]
    assert list(s.keys(3 * 1000 + 1, 3 * 4000)) == [3 * i for i in range(1001, 4000)]
    keys, values = s.range_to_arrays(0, None, limit=4_321)
    assert keys.tolist() == [3 * i for i in range(4_321)]
    assert values.tolist() == list(range(4_321))
    s.insert_many(u64([MAX_KEY - 1, MAX_KEY]), u64([1, 2]))
    assert list(s.keys(3 * (n - 1)))[-3:] == [3 * (n - 1), MAX_KEY - 1, MAX_KEY]


def test_iterators_survive_modification() -> None:
    s = BSkipList(4)
    s.insert_many(np.arange(2_000, dtype=np.uint64), np.arange(2_000, dtype=np.uint64))
    seen = []
    for k in s:
        seen.append(k)
        if k < 2_000 and k % 100 == 0:
            s.delete(k + 1)
            s.insert(k + 10_000, 0)
    # Ascending, each key once; every key present throughout was seen. Keys
    # deleted or inserted meanwhile may or may not show (per-node consistency).
    assert seen == sorted(set(seen))
    untouched = {k for k in range(2_000) if k % 100 != 1}
    assert untouched <= set(seen)
    assert set(seen) - untouched <= {k for k in range(2_000) if k % 100 == 1} | {
        k + 10_000 for k in range(0, 2_000, 100)
    }
    assert list(s) == sorted(untouched | {k + 10_000 for k in range(0, 2_000, 100)})
    s._check()


@pytest.mark.parametrize("bad", [-1, 2**64, 2**70])
def test_out_of_range_ints_raise_overflow(sl: BSkipList, bad: int) -> None:
    with pytest.raises(OverflowError):
        sl.insert(bad, 1)
    with pytest.raises(OverflowError):
        sl.insert(1, bad)
    with pytest.raises(OverflowError):
        sl.get(bad)
    with pytest.raises(OverflowError):
        sl.delete(bad)
    with pytest.raises(OverflowError):
        sl.successor(bad)
    with pytest.raises(OverflowError):
        sl.insert_many([1, bad], [1, 2])
    with pytest.raises(OverflowError):
        sl.get_many([bad])
    assert bad not in sl
    assert len(sl) == 0


def test_batch_argument_checking(sl: BSkipList) -> None:
    with pytest.raises(OverflowError):
        sl.insert_many(np.array([3, -1], dtype=np.int64), u64([1, 2]))
    with pytest.raises(TypeError):
        sl.insert_many(np.array([1.5]), u64([1]))
    with pytest.raises(TypeError):
        sl.insert(1.0, 1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="length"):
        sl.insert_many(u64([1, 2]), u64([1]))
    with pytest.raises(ValueError, match="one-dimensional"):
        sl.get_many(np.zeros((2, 2), dtype=np.uint64))
    assert len(sl) == 0
    # Lossless conversions are accepted: signed, narrow, lists, huge Python ints.
    assert sl.insert_many(np.array([5, 6], dtype=np.int32), [7, 8]) == 2
    assert sl.insert_many([MAX_KEY, 2**63], [np.uint64(1), 2]) == 2
    assert sl.insert_many([], []) == 0
    assert list(sl.items()) == [(5, 7), (6, 8), (2**63, 2), (MAX_KEY, 1)]
    assert np.uint64(5) in sl
    assert "5" not in sl
    with pytest.raises(ValueError, match="node_size"):
        BSkipList(3)
    with pytest.raises(ValueError, match="node_size"):
        BSkipList(5000)


def test_batches_match_single_operations(sl: BSkipList) -> None:
    rng = np.random.default_rng(3)
    keys = rng.integers(0, 500, size=2_000).astype(np.uint64)
    keys[:5] = [0, MAX_KEY, 0, MAX_KEY, 17]
    values = rng.integers(0, 2**64, size=2_000, dtype=np.uint64)
    ref: dict[int, int] = {}
    for k, v in zip(keys.tolist(), values.tolist(), strict=True):
        ref[k] = v  # duplicates in one batch: the last value wins
    assert sl.insert_many(keys, values) == len(ref)
    sl._check()
    assert list(sl.items()) == sorted(ref.items())

    probe = np.concatenate([keys[:300], rng.integers(0, 700, size=300).astype(np.uint64)])
    got, found = sl.get_many(probe)
    assert found.dtype == np.bool_
    for k, v, f in zip(probe.tolist(), got.tolist(), found.tolist(), strict=True):
        assert f == (k in ref)
        assert v == ref.get(k, 0)

    succ, found = sl.successor_many(probe)
    for k, s, f in zip(probe.tolist(), succ.tolist(), found.tolist(), strict=True):
        expect = sl.successor(k)
        assert f == (expect is not None)
        assert s == (expect or 0)

    gone = probe[::3]
    expect_gone = len({k for k in gone.tolist() if k in ref})
    assert sl.delete_many(gone) == expect_gone
    for k in gone.tolist():
        ref.pop(k, None)
    sl._check()
    assert list(sl.items()) == sorted(ref.items())
    keys_out, values_out = sl.range_to_arrays(100, 400)
    expect_items = [(k, v) for k, v in sorted(ref.items()) if 100 <= k < 400]
    assert list(zip(keys_out.tolist(), values_out.tolist(), strict=True)) == expect_items


def test_clear_then_reuse(sl: BSkipList) -> None:
    sl.insert_many(np.arange(1_000, dtype=np.uint64), np.arange(1_000, dtype=np.uint64))
    sl.clear()
    assert len(sl) == 0
    assert sl._check() == [(1, 0)] * HEIGHT
    assert sl.insert(MAX_KEY, 1)
    assert list(sl.items()) == [(MAX_KEY, 1)]
    sl._check()


def test_pop_min_drains_in_order(sl: BSkipList) -> None:
    keys = [9, 3, MAX_KEY, 0, 44]
    for k in keys:
        sl.insert(k, k + 1 if k < MAX_KEY else 0)
    out = [sl.pop_min() for _ in keys]
    assert out == [(k, k + 1 if k < MAX_KEY else 0) for k in sorted(keys)]
    assert len(sl) == 0
    sl._check()


@pytest.mark.parametrize("pattern", ["all", "runs", "reversed"])
def test_delete_many_empties_leaves_in_place(sl: BSkipList, pattern: str) -> None:
    keys = np.arange(1, 3_001, dtype=np.uint64) * 7
    sl.insert_many(keys, keys)
    if pattern == "all":
        gone = keys
    elif pattern == "runs":  # whole leaves and leaf heads, with survivors between
        gone = keys[(np.arange(keys.size) // 37) % 3 != 0]
    else:
        gone = keys[::-1]
    assert sl.delete_many(gone) == gone.size
    sl._check()
    assert list(sl) == sorted(set(keys.tolist()) - set(gone.tolist()))
    assert sl.delete_many(gone) == 0


def test_batches_with_clusters_far_apart(sl: BSkipList) -> None:
    # A wide key span with dense clusters: the batch grouping only orders the
    # high bits, so each cluster reaches the map in batch order.
    rng = np.random.default_rng(11)
    clusters = [0, 2**40, 2**63, MAX_KEY - 5_000]
    keys = np.concatenate([c + rng.integers(0, 5_000, size=400, dtype=np.uint64) for c in clusters])
    keys = rng.permutation(np.concatenate([keys, keys[:300]]))  # with duplicates
    values = np.arange(keys.size, dtype=np.uint64)
    ref: dict[int, int] = {}
    for k, v in zip(keys.tolist(), values.tolist(), strict=True):
        ref[k] = v
    assert sl.insert_many(keys, values) == len(ref)
    sl._check()
    assert list(sl.items()) == sorted(ref.items())
    probe = rng.permutation(np.concatenate([keys[:500], keys[:500] + np.uint64(1)]))
    got, found = sl.get_many(probe)
    assert found.tolist() == [k in ref for k in probe.tolist()]
    assert got.tolist() == [ref.get(k, 0) for k in probe.tolist()]
    succ, found = sl.successor_many(probe)
    assert [s if f else None for s, f in zip(succ.tolist(), found.tolist(), strict=True)] == [
        sl.successor(k) for k in probe.tolist()
    ]
    gone = rng.permutation(keys)[: keys.size // 2]
    assert sl.delete_many(gone) == len(set(gone.tolist()))
    for k in gone.tolist():
        ref.pop(k, None)
    sl._check()
    assert list(sl.items()) == sorted(ref.items())


def test_big_batches_keep_the_last_duplicate(sl: BSkipList) -> None:
    # Big batches start at a varying point and wrap around; duplicates must
    # still be applied in batch order, clustered or spread out.
    rng = np.random.default_rng(5)
    ref: dict[int, int] = {}
    for call in range(4):
        keys = np.concatenate(
            [
                rng.integers(0, 2_000, size=6_000, dtype=np.uint64),
                rng.integers(0, 2**64, size=300, dtype=np.uint64) | np.uint64(1 << 63),
            ]
        )
        keys = np.concatenate([keys, keys[:: 7 + call]])
        values = rng.integers(0, 2**64, size=keys.size, dtype=np.uint64)
        expect_new = len(set(keys.tolist()) - set(ref))
        for k, v in zip(keys.tolist(), values.tolist(), strict=True):
            ref[k] = v
        assert sl.insert_many(keys, values) == expect_new
        got, found = sl.get_many(keys)
        assert found.all()
        assert got.tolist() == [ref[k] for k in keys.tolist()]
    sl._check()
    assert list(sl.items()) == sorted(ref.items())
    assert sl.delete_many(np.array(list(ref), dtype=np.uint64)) == len(ref)
    assert len(sl) == 0
    sl._check()
