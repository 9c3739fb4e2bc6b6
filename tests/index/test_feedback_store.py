"""The feedback store on LMDB: the key, band counts and entry records, across reopening."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from semcached.index.feedback import FeedbackStore
from semcached.index.lmdb_env import LmdbEnvironment

MiB = 1 << 20
BANDS = 8


def open_env(path: Path) -> LmdbEnvironment:
    return LmdbEnvironment(path, initial_map_bytes=MiB, max_map_bytes=8 * MiB)


def test_what_is_recorded_is_loaded_after_reopening(tmp_path: Path) -> None:
    env = open_env(tmp_path / "lmdb")
    store = FeedbackStore(env, bands=BANDS)
    key = store.secret()
    assert len(key) == 32
    assert store.secret() == key
    right = np.arange(BANDS, dtype=np.int64)
    wrong = np.full(BANDS, 3, dtype=np.int64)
    store.record(category=("code", (right, wrong)), entry=(7, 3, 0.88))
    store.record(entry=(9, 1, 0.95))
    store.record(forget_entry=9)
    store.record(category=("code", (wrong, right)), verified=True)
    env.close()

    env = open_env(tmp_path / "lmdb")
    store = FeedbackStore(env, bands=BANDS)
    assert store.secret() == key
    state = store.load()
    np.testing.assert_array_equal(state.categories["code"][0], right)
    np.testing.assert_array_equal(state.categories["code"][1], wrong)
    assert state.entries == {7: (3, 0.88)}
    assert list(state.verified) == ["code"]  # kept apart from the cosine counts
    np.testing.assert_array_equal(state.verified["code"][0], wrong)
    assert store.prune_entries(lambda entry_id: entry_id != 7) == 1
    assert store.load().entries == {}
    with pytest.raises(ValueError, match="bands"):
        store.record(category=("code", (right[:2], wrong[:2])))
    env.close()
