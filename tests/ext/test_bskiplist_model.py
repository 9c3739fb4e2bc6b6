"""Model-based test: BSkipList against a SortedDict, every operation, _check() after each."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from sortedcontainers import SortedDict

from semcached.ext.bskiplist import MAX_KEY, BSkipList

# Mostly a narrow range, so keys collide, nodes fill and split; plus the edges.
keys_st = st.one_of(
    st.integers(0, 300),
    st.sampled_from([0, 1, MAX_KEY - 1, MAX_KEY]),
    st.integers(0, MAX_KEY),
)
values_st = st.integers(0, MAX_KEY)
bound_st = st.one_of(st.none(), st.integers(0, 320), st.sampled_from([MAX_KEY, 2**64]))
batch_st = st.lists(keys_st, max_size=60)


class BSkipListMachine(RuleBasedStateMachine):
    node_size = 4

    def __init__(self) -> None:
        super().__init__()
        self.sl = BSkipList(self.node_size)
        self.ref: SortedDict[int, int] = SortedDict()

    @initialize(keys=st.lists(st.integers(0, 400), max_size=200))
    def fill(self, keys: list[int]) -> None:
        for k in keys:
            self.sl.insert(k, k)
            self.ref[k] = k

    @invariant()
    def structure_holds(self) -> None:
        self.sl._check()
        assert len(self.sl) == len(self.ref)

    # -------------------------------------------------------- single keys

    @rule(key=keys_st, value=values_st)
    def insert(self, key: int, value: int) -> None:
        assert self.sl.insert(key, value) == (key not in self.ref)
        self.ref[key] = value

    @rule(key=keys_st)
    def delete(self, key: int) -> None:
        assert self.sl.delete(key) == (key in self.ref)
        self.ref.pop(key, None)

    @rule(key=keys_st)
    def get(self, key: int) -> None:
        assert self.sl.get(key, -1) == self.ref.get(key, -1)
        assert (key in self.sl) == (key in self.ref)

    @rule(key=keys_st)
    def successor(self, key: int) -> None:
        i = self.ref.bisect_left(key)
        expect = self.ref.keys()[i] if i < len(self.ref) else None
        assert self.sl.successor(key) == expect

    @rule(key=keys_st)
    def predecessor(self, key: int) -> None:
        i = self.ref.bisect_right(key)
        expect = self.ref.keys()[i - 1] if i > 0 else None
        assert self.sl.predecessor(key) == expect

    @rule()
    def pop_min(self) -> None:
        if self.ref:
            assert self.sl.pop_min() == self.ref.popitem(0)
        else:
            with pytest.raises(KeyError):
                self.sl.pop_min()

    @rule()
    def min_max(self) -> None:
        if self.ref:
            assert self.sl.min() == self.ref.keys()[0]
            assert self.sl.max() == self.ref.keys()[-1]
        else:
            with pytest.raises(ValueError, match="empty"):
                self.sl.min()
            with pytest.raises(ValueError, match="empty"):
                self.sl.max()

    @rule(lo=st.integers(0, 320) | st.just(MAX_KEY), hi=bound_st)
    def scans(self, lo: int, hi: int | None) -> None:
        expect = [(k, v) for k, v in self.ref.items() if k >= lo and (hi is None or k < hi)]
        assert list(self.sl.range(lo, hi)) == expect
        assert list(self.sl.keys(lo, hi)) == [k for k, _ in expect]
        assert list(self.sl.values(lo, hi)) == [v for _, v in expect]

    @rule()
    def iterate_all(self) -> None:
        assert list(self.sl) == list(self.ref.keys())
        assert list(self.sl.items()) == list(self.ref.items())

    @precondition(lambda self: len(self.ref) < 2_000)
    @rule(data=st.data())
    def clear_sometimes(self, data: st.DataObject) -> None:
        if data.draw(st.integers(0, 9)) == 0:
            self.sl.clear()
            self.ref.clear()

    # -------------------------------------------------------- batches

    @rule(keys=batch_st, data=st.data())
    def insert_many(self, keys: list[int], data: st.DataObject) -> None:
        values = data.draw(st.lists(values_st, min_size=len(keys), max_size=len(keys)))
        new = len(set(keys) - set(self.ref))
        arr_k = np.array(keys, dtype=np.uint64)
        assert self.sl.insert_many(arr_k, np.array(values, dtype=np.uint64)) == new
        for k, v in zip(keys, values, strict=True):
            self.ref[k] = v

    @rule(keys=st.lists(st.integers(0, 400), min_size=1, max_size=400))
    def insert_many_large(self, keys: list[int]) -> None:
        # Larger than the batch code's small-batch path.
        new = len(set(keys) - set(self.ref))
        arr = np.array(keys, dtype=np.uint64)
        assert self.sl.insert_many(arr, arr * np.uint64(3)) == new
        for k in keys:
            self.ref[k] = 3 * k

    @rule(keys=batch_st)
    def delete_many(self, keys: list[int]) -> None:
        present = len(set(keys) & set(self.ref))
        assert self.sl.delete_many(np.array(keys, dtype=np.uint64)) == present
        for k in keys:
            self.ref.pop(k, None)

    @rule(keys=batch_st)
    def get_many(self, keys: list[int]) -> None:
        values, found = self.sl.get_many(np.array(keys, dtype=np.uint64))
        assert found.tolist() == [k in self.ref for k in keys]
        assert values.tolist() == [self.ref.get(k, 0) for k in keys]

    @rule(keys=batch_st)
    def successor_many(self, keys: list[int]) -> None:
        out, found = self.sl.successor_many(np.array(keys, dtype=np.uint64))
        for k, s, f in zip(keys, out.tolist(), found.tolist(), strict=True):
            i = self.ref.bisect_left(k)
            assert f == (i < len(self.ref))
            assert s == (self.ref.keys()[i] if f else 0)

    @rule(lo=st.integers(0, 320), hi=bound_st, limit=st.none() | st.integers(0, 50))
    def range_to_arrays(self, lo: int, hi: int | None, limit: int | None) -> None:
        expect = [(k, v) for k, v in self.ref.items() if k >= lo and (hi is None or k < hi)]
        if limit is not None:
            expect = expect[:limit]
        keys, values = self.sl.range_to_arrays(lo, hi, limit)
        assert list(zip(keys.tolist(), values.tolist(), strict=True)) == expect


class BSkipListMachineB5(BSkipListMachine):
    node_size = 5  # odd B: uneven splits


class BSkipListMachineB64(BSkipListMachine):
    node_size = 64


def _run(machine: type[BSkipListMachine], examples: int, steps: int) -> None:
    test = machine.TestCase
    test.settings = settings(
        max_examples=examples,
        stateful_step_count=steps,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    test().runTest()


@pytest.mark.parametrize(
    "machine", [BSkipListMachine, BSkipListMachineB5, BSkipListMachineB64], ids=["B4", "B5", "B64"]
)
def test_model(machine: type[BSkipListMachine]) -> None:
    _run(machine, examples=100, steps=50)


@pytest.mark.slow
@pytest.mark.parametrize(
    "machine", [BSkipListMachine, BSkipListMachineB5, BSkipListMachineB64], ids=["B4", "B5", "B64"]
)
def test_model_long(machine: type[BSkipListMachine]) -> None:
    _run(machine, examples=400, steps=100)
