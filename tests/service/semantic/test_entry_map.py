"""EntryMap: restored entries in columns, the rest in a dict, checked against a plain dict."""

from __future__ import annotations

import numpy as np
import pytest

from semcached.index.docstore import META_DTYPE
from semcached.service.semantic import entry_map
from semcached.service.semantic.entry_map import Entry, EntryMap

GROUPS = [("t1", "code", ""), ("t1", "chat", "p"), ("t2", "code", "")]


def records(ids: list[int], seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rows = np.zeros(len(ids), dtype=META_DTYPE)
    rows["id"] = sorted(ids)
    rows["created_at"] = rng.uniform(0, 1000, len(ids))
    rows["expires_at"] = rows["created_at"] + 60
    rows["size"] = rng.integers(1, 5000, len(ids))
    return rows


def restore(entries: EntryMap, model: dict[int, Entry], ids: list[int], group: int) -> None:
    rows = records(ids, group)
    entries.add_restored(GROUPS[group], rows)
    for r in rows.tolist():
        model[r[0]] = Entry(*GROUPS[group], r[1], r[2], r[3])


def check(entries: EntryMap, model: dict[int, Entry]) -> None:
    assert len(entries) == len(model)
    assert dict(entries.items()) == model
    assert sorted(entries) == sorted(model)


def test_restored_entries_read_as_tuples() -> None:
    entries, model = EntryMap(), {}
    restore(entries, model, [5, 1, 9], 0)
    restore(entries, model, [3, 2**64 - 1], 1)
    assert len(entries) == 5  # counted before the columns are merged
    assert entries.peek(9) == model[9]
    assert entries.get(3) == model[3]
    assert entries[2**64 - 1] == model[2**64 - 1]
    assert np.uint64(5) in entries
    for other in (4, -1, 2**64, "5", None):
        assert other not in entries
    assert entries.get(4) is None
    with pytest.raises(KeyError):
        entries[4]
    check(entries, model)


@pytest.mark.parametrize("compact_min", [2, 4096])
def test_random_operations_match_a_dict(monkeypatch: pytest.MonkeyPatch, compact_min: int) -> None:
    monkeypatch.setattr(entry_map, "_COMPACT_MIN", compact_min)  # compact often, or never
    rng = np.random.default_rng(3)
    entries, model = EntryMap(), {}
    ids = rng.choice(10_000, size=600, replace=False).tolist()
    for group in range(3):
        restore(entries, model, ids[group * 200 : (group + 1) * 200], group)
    for step in range(3000):
        key = int(rng.choice(ids)) if rng.random() < 0.8 else int(rng.integers(0, 10_000))
        op = rng.integers(0, 5)
        if op == 0:
            assert entries.get(key) == model.get(key)
        elif op == 1:
            assert entries.peek(key) == model.get(key)
            keys = [key, *rng.choice(ids, size=3).tolist(), 10_001]
            assert entries.peek_many(keys) == [model.get(k) for k in keys]
        elif op == 2:
            assert entries.pop(key, None) == model.pop(key, None)
        elif op == 3:
            new = Entry("t3", "chat", "", float(step), float(step) + 1, step)
            entries[key] = model[key] = new
        else:
            assert (key in entries) == (key in model)
        assert len(entries) == len(model)
        if step % 250 == 0:
            check(entries, model)
    check(entries, model)


def test_any_due_sees_columns_and_dict() -> None:
    entries, model = EntryMap(), {}
    restore(entries, model, [1, 2, 3], 0)
    first = min(e.expires_at for e in model.values())
    assert not entries.any_due(first - 1)
    assert entries.any_due(first)
    entries.pop(min(model, key=lambda k: model[k].expires_at))
    entries[9] = Entry("t1", "code", "", 0.0, first - 0.5, 1)
    assert entries.any_due(first - 0.5)


def test_only_reads_and_writes_make_tuples() -> None:
    entries, model = EntryMap(), {}
    restore(entries, model, list(range(1, 101)), 0)
    assert entries.peek(7) == model[7]
    assert entries.promoted == {}  # a one-off read leaves it in the columns
    assert entries.get(8) == model[8]
    entries[200] = Entry("t1", "code", "", 1.0, 2.0, 3)
    assert set(entries.promoted) == {8, 200}
    assert entries.pop(9) == model[9]
    assert 9 not in entries
    assert len(entries) == 100
