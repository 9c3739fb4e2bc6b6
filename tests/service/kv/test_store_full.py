"""The chunk KV engine when its LMDB map fills before its disk budget does: puts evict
by the disk tier's policy and go on; 507 only when nothing can make room."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from semcached.cachepolicy.lru import LruPolicy
from semcached.errors import InsufficientStorageError
from semcached.index.kv_tiers import DiskTier
from tests.service.kv.kit import Engines, MiB, key_of, variant


@pytest.fixture
def engines(tmp_path: Path) -> Iterator[Engines]:
    made = Engines(tmp_path)
    yield made
    made.close_all()


def test_puts_at_the_map_cap_evict_from_the_disk_tier(engines: Engines) -> None:
    # A 64 MiB budget over a 2 MiB map: the map is full long before the budget.
    engine = engines.open(disk_bytes=64 * MiB, host_bytes=0, max_map_bytes=2 * MiB)
    for i in range(100):  # 64 KiB blobs: 6.4 MiB in all
        meta, blob = variant(key_of(i), tokens=256, seed=i)
        engine.put(meta, blob)
        engine._check()
    disk = engine.stats()["disk"]
    assert disk.evictions > 0
    assert disk.entries == 100 - disk.evictions
    _, newest = engine.get(key_of(99))
    assert bytes(newest) == variant(key_of(99), tokens=256, seed=99)[1]
    assert not engine.storage_full
    assert engine.delete(key_of(99)) == 1  # deletes work at the cap too


def test_a_blob_the_map_can_never_hold_is_507_and_evicts_nothing(engines: Engines) -> None:
    engine = engines.open(disk_bytes=64 * MiB, host_bytes=0, max_map_bytes=2 * MiB)
    for i in range(5):
        engine.put(*variant(key_of(i), tokens=256, seed=i))
    meta, blob = variant(key_of(50), tokens=8192)  # 2 MiB: over the map's capacity
    with pytest.raises(InsufficientStorageError) as raised:
        engine.put(meta, blob)
    assert raised.value.status == 507
    assert raised.value.code == "store_full"
    assert engine.storage_full
    assert engine.stats()["disk"].entries == 5
    assert engine.stats()["disk"].evictions == 0
    engine._check()
    engine.put(*variant(key_of(6), tokens=256, seed=6))
    assert not engine.storage_full


def test_what_was_acknowledged_at_the_cap_survives_a_restart(engines: Engines) -> None:
    engine = engines.open(disk_bytes=64 * MiB, host_bytes=0, max_map_bytes=2 * MiB)
    for i in range(60):
        engine.put(*variant(key_of(i), tokens=256, seed=i))
    kept = {bytes(v.meta.chunk) for v in engine._by_id.values()}
    engines.close(engine)
    again = engines.open(disk_bytes=64 * MiB, host_bytes=0, max_map_bytes=2 * MiB)
    assert {bytes(v.meta.chunk) for v in again._by_id.values()} == kept
    for i in range(60):
        if key_of(i) in kept:
            _, data = again.get(key_of(i))
            expected = variant(key_of(i), tokens=256, seed=i)[1]
            assert np.array_equal(
                np.frombuffer(data, np.float32), np.frombuffer(expected, np.float32)
            )


def test_eviction_for_room_passes_over_puts_still_being_written() -> None:
    tier = DiskTier(64 * MiB, LruPolicy())
    tier.admit(1, 100, pending=True)  # the oldest, but its put has not committed
    tier.admit(2, 100)
    tier.admit(3, 100, pending=True)
    assert tier.evict_for(150) == [2]  # not [] because 1 is pending
    assert tier.holds(1)
    assert tier.holds(3)
    tier.settle(1)
    assert tier.evict_for(1) == [1]  # put back in the policy's order, and evictable now
