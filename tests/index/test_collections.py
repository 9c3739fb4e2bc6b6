"""The collection definitions' store: create once, change in one transaction, durable."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from semcached.index.collections import Collection, CollectionStore
from semcached.index.lmdb_env import LmdbEnvironment

MiB = 1 << 20


def test_create_get_update_delete(env: LmdbEnvironment) -> None:
    store = CollectionStore(env)
    first = Collection(8, "Cosine", 1.0)
    assert store.get("c") is None
    assert store.create("c", first)
    assert not store.create("c", Collection(16, "Cosine", 2.0))  # never overwritten
    assert store.get("c") == first
    # Two changes made from the same old view: each applies to the current one.
    store.update("c", lambda c: msgspec.structs.replace(c, partition_field="key"))
    store.update("c", lambda c: msgspec.structs.replace(c, has_points=True))
    assert store.get("c") == Collection(8, "Cosine", 1.0, "key", True)
    assert store.update("missing", lambda c: c) is None
    assert store.delete("c")
    assert not store.delete("c")
    assert store.get("c") is None


def test_a_change_that_raises_changes_nothing(env: LmdbEnvironment) -> None:
    store = CollectionStore(env)
    store.create("c", Collection(8, "Cosine", 1.0))

    def refuse(current: Collection) -> Collection:
        raise ValueError("no")

    with pytest.raises(ValueError, match="no"):
        store.update("c", refuse)
    assert store.get("c") == Collection(8, "Cosine", 1.0)


def test_definitions_survive_reopening(tmp_path: Path) -> None:
    path = tmp_path / "lmdb"
    env = LmdbEnvironment(path, initial_map_bytes=MiB, max_map_bytes=8 * MiB)
    CollectionStore(env).create("c", Collection(8, "Cosine", 1.0, "key"))
    env.close()
    again = LmdbEnvironment(path, initial_map_bytes=MiB, max_map_bytes=8 * MiB)
    try:
        assert CollectionStore(again).get("c") == Collection(8, "Cosine", 1.0, "key")
    finally:
        again.close()
