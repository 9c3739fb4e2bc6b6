"""The expiry index returns exactly the entries that are due, oldest first."""

from __future__ import annotations

import random

from semcached.index.expiry import ExpiryIndex


def test_pop_expired_in_order_and_bounded() -> None:
    index = ExpiryIndex()
    for entry_id, at in [(1, 30.0), (2, 10.0), (3, 20.0), (4, 10.0)]:
        index.add(entry_id, at)
    assert index.next_expiry() == 10.0
    assert index.pop_expired(now=5.0, limit=10) == []
    assert sorted(index.pop_expired(now=10.0, limit=10)) == [2, 4]  # inclusive at the due time
    assert index.pop_expired(now=100.0, limit=1) == [3]
    assert index.pop_expired(now=100.0, limit=10) == [1]
    assert len(index) == 0
    assert index.next_expiry() is None


def test_readd_moves_and_discard_removes() -> None:
    index = ExpiryIndex()
    index.add(7, 10.0)
    index.add(7, 50.0)
    assert len(index) == 1
    assert index.pop_expired(now=20.0, limit=10) == []
    index.discard(7)
    index.discard(7)
    assert 7 not in index
    assert index.pop_expired(now=100.0, limit=10) == []


def test_many_entries_in_one_millisecond_keep_distinct_keys() -> None:
    index = ExpiryIndex()
    for entry_id in range(5000):
        index.add(entry_id, 1.0)
    assert sorted(index.pop_expired(now=1.0, limit=10_000)) == list(range(5000))


def test_matches_a_sorted_reference() -> None:
    rng = random.Random(3)
    index = ExpiryIndex()
    reference: dict[int, float] = {}
    for step in range(3000):
        entry_id = rng.randrange(500)
        if rng.random() < 0.2:
            index.discard(entry_id)
            reference.pop(entry_id, None)
        else:
            at = rng.randrange(1000) / 10
            index.add(entry_id, at)
            reference[entry_id] = at
        if step % 100 == 0:
            now = rng.randrange(1000) / 10
            due = {i for i, t in reference.items() if t <= now}
            popped = index.pop_expired(now, limit=10_000)
            assert set(popped) == due
            assert len(popped) == len(due)
            for i in due:
                del reference[i]
            assert len(index) == len(reference)


def test_a_far_future_now_pops_everything() -> None:
    index = ExpiryIndex()
    index.add(1, 10.0)
    assert index.pop_expired(now=1e300, limit=10) == [1]
