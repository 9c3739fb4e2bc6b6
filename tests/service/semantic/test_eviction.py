"""The semantic engine builds each category's eviction policy from its configuration."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from semcached.cachepolicy.categories import CategoryTable
from semcached.cachepolicy.lru import LruPolicy
from semcached.cachepolicy.reuse_value import ReuseValuePolicy
from semcached.cachepolicy.s3fifo import S3FifoPolicy
from semcached.ext.onebit import GuardedFollower
from semcached.index.lmdb_env import LmdbEnvironment
from semcached.service.semantic.engine import Lookup
from tests.service.semantic.kit import Clock, unit
from tests.service.semantic.test_engine import insert, make_engine


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("lru", LruPolicy),
        ("s3fifo", S3FifoPolicy),
        ("onebit", GuardedFollower),
        ("reuse", ReuseValuePolicy),
    ],
)
async def test_category_eviction_setting_picks_the_policy(
    env: LmdbEnvironment, executor: ThreadPoolExecutor, clock: Clock, name: str, kind: type
) -> None:
    table = CategoryTable().with_overrides({"small": {"max_entries": 4, "eviction": name}})
    engine = make_engine(env, executor, clock, table)
    await engine.open()
    assert isinstance(engine._table.eviction_of("small"), kind)
    assert isinstance(engine._table.eviction_of("default"), S3FifoPolicy)  # the default
    for i in range(12):
        await engine.insert(insert(f"q{i}", unit(100 + i), category="small"))
        await engine.lookup(Lookup("t1", vector=unit(100 + i // 2), category="small"))
    stats = engine.stats()["small"]
    assert (stats.entries, stats.evictions) == (4, 8)
    assert len(engine._table.eviction_of("small")) == 4
    await engine.close()
