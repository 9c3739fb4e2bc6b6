"""LiveIds: the compact id set behind HnswlibIndex, checked against a Python set."""

from __future__ import annotations

import numpy as np
import pytest

from semcached.index import live_ids
from semcached.index.live_ids import LiveIds


def check(ids: LiveIds, model: set[int]) -> None:
    assert len(ids) == len(model)
    assert ids.to_array().tolist() == sorted(model)
    assert sorted(ids) == sorted(model)


def test_starts_from_any_order_and_duplicates() -> None:
    ids = LiveIds(np.array([5, 3, 3, 2**64 - 1, 0], dtype=np.uint64))
    check(ids, {0, 3, 5, 2**64 - 1})
    for member in (0, 3, 5, 2**64 - 1, np.uint64(3)):
        assert member in ids
    for other in (4, -1, 2**64, "3", 3.0):
        assert other not in ids


@pytest.mark.parametrize("merge_min", [1, 8, 4096])
def test_random_adds_and_discards_match_a_set(
    monkeypatch: pytest.MonkeyPatch, merge_min: int
) -> None:
    monkeypatch.setattr(live_ids, "_MERGE_MIN", merge_min)  # merge often, or never
    rng = np.random.default_rng(7)
    start = rng.integers(0, 400, size=150, dtype=np.uint64)
    ids, model = LiveIds(start), set(start.tolist())
    for step in range(2000):
        batch = rng.integers(0, 400, size=int(rng.integers(1, 6)), dtype=np.uint64)
        if rng.random() < 0.5:
            expected = np.array([x in model for x in batch.tolist()], dtype=bool)
            assert ids.contains_many(batch).tolist() == expected.tolist()
            ids.add_many(batch.tolist())
            model.update(batch.tolist())
        else:
            for value in batch.tolist():
                ids.discard(value)
                model.discard(value)
        probe = int(rng.integers(0, 400))
        assert (probe in ids) == (probe in model)
        if step % 97 == 0:
            check(ids, model)
    check(ids, model)


def test_empty() -> None:
    ids = LiveIds()
    check(ids, set())
    assert ids.contains_many(np.array([1, 2], dtype=np.uint64)).tolist() == [False, False]
    ids.discard(1)
    ids.add_many([1])
    ids.discard(1)
    check(ids, set())


def test_changes_are_merged_into_the_array(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(live_ids, "_MERGE_MIN", 4)
    ids = LiveIds(np.arange(100, dtype=np.uint64))
    ids.discard(5)
    assert ids.nbytes() > 8 * len(ids)  # one change, kept aside
    ids.add_many(range(1000, 1010))
    # Eleven changes, over a bound of max(4, 100 / 16): merged; the sets hold nothing.
    assert ids.nbytes() == 8 * len(ids)
    check(ids, (set(range(100)) - {5}) | set(range(1000, 1010)))
