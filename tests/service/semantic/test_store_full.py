"""The semantic engine at its LMDB map cap: inserts evict and go on, 507 only when
nothing can make room, and deletes and purges always work."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from semcached.cachepolicy.categories import CategoryTable
from semcached.errors import InsufficientStorageError
from semcached.index.docstore import DocumentStore
from semcached.index.lmdb_env import LmdbEnvironment
from semcached.service.semantic.embedding.disabled import DisabledEmbedder
from semcached.service.semantic.engine import Insert, Lookup, SemanticCache
from tests.service.semantic.kit import DIM, Clock, MiB, new_index, unit

RESPONSE = b'"' + b"r" * 3000 + b'"'  # one LMDB overflow page per entry


@pytest.fixture
def small_env(tmp_path: Path) -> Iterator[LmdbEnvironment]:
    env = LmdbEnvironment(tmp_path / "lmdb", initial_map_bytes=MiB, max_map_bytes=2 * MiB)
    yield env
    env.close()


def make_engine(
    env: LmdbEnvironment,
    executor: ThreadPoolExecutor,
    clock: Clock,
    categories: CategoryTable | None = None,
) -> SemanticCache:
    return SemanticCache(
        store=DocumentStore(env),
        index_factory=new_index,
        embedder=DisabledEmbedder(DIM),
        categories=categories or CategoryTable(),
        dim=DIM,
        executor=executor,
        clock=clock,
        sweep_interval_s=3600,
    )


@pytest.fixture
async def engine(
    small_env: LmdbEnvironment, executor: ThreadPoolExecutor, clock: Clock
) -> AsyncIterator[SemanticCache]:
    table = CategoryTable().with_overrides({"code": {}, "chat": {}})
    cache = make_engine(small_env, executor, clock, table)
    await cache.open()
    yield cache
    await cache.close()


def entry(n: int, category: str = "code", response: bytes = RESPONSE) -> Insert:
    return Insert(
        namespace="t1", prompt=f"prompt {n}", response=response, vector=unit(n), category=category
    )


async def test_inserts_at_the_cap_evict_the_oldest_and_go_on(engine: SemanticCache) -> None:
    ids = [(await engine.insert(entry(n))).entry_id for n in range(1500)]  # ~3x the map
    stats = engine.stats()["code"]
    assert stats.evictions > 0
    assert stats.entries == len(engine) == engine._store.count() == 1500 - stats.evictions
    assert engine.get(ids[0]) is None  # s3fifo: the oldest, never hit, went first
    newest = await engine.lookup(Lookup("t1", vector=unit(1499), category="code"))
    assert newest.hit
    assert newest.entry_id == ids[-1]
    assert not engine.storage_full


async def test_a_category_that_holds_nothing_evicts_from_the_one_that_filled_the_store(
    engine: SemanticCache,
) -> None:
    for n in range(800):
        await engine.insert(entry(n, "code"))
    evicted_before = engine.stats()["code"].evictions
    for n in range(1000, 1050):
        await engine.insert(entry(n, "chat"))
    assert engine.stats()["chat"].entries == 50
    assert engine.stats()["chat"].evictions == 0
    assert engine.stats()["code"].evictions > evicted_before


async def test_concurrent_inserts_at_the_cap_all_succeed(engine: SemanticCache) -> None:
    for n in range(600):
        await engine.insert(entry(n))
    results = await asyncio.gather(*(engine.insert(entry(n)) for n in range(600, 700)))
    assert all(engine.get(r.entry_id) is not None for r in results[-10:])
    assert len(engine) == engine._store.count()


async def test_an_entry_that_can_never_fit_is_507_and_evicts_nothing(
    engine: SemanticCache,
) -> None:
    kept = [(await engine.insert(entry(n))).entry_id for n in range(20)]
    huge = entry(99, response=b'"' + b"h" * (2 * MiB) + b'"')
    with pytest.raises(InsufficientStorageError) as raised:
        await engine.insert(huge)
    assert raised.value.status == 507
    assert raised.value.code == "store_full"
    assert engine.storage_full
    assert all(engine.get(i) is not None for i in kept)
    assert engine.stats()["code"].evictions == 0
    await engine.insert(entry(100))
    assert not engine.storage_full


async def test_purge_and_delete_work_at_the_cap(engine: SemanticCache) -> None:
    ids = [(await engine.insert(entry(n))).entry_id for n in range(900)]
    assert engine.stats()["code"].evictions > 0
    assert await engine.delete(ids[-1])
    live = len(engine)
    assert await engine.purge("t1") == live
    assert len(engine) == 0
    assert engine._store.count() == 0
    await engine.insert(entry(1000))
    assert len(engine) == 1
