"""The semantic cache engine in-process, on real LMDB and a real HNSW index."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from semcached.cachepolicy.categories import CategoryTable, UnknownCategoryError
from semcached.errors import BadRequestError
from semcached.index.docstore import DocumentStore
from semcached.index.lmdb_env import LmdbEnvironment
from semcached.service.semantic.embedding.base import EmbeddingDisabledError
from semcached.service.semantic.embedding.disabled import DisabledEmbedder
from semcached.service.semantic.engine import Insert, Lookup, SemanticCache
from tests.service.semantic.kit import DIM, Clock, new_index, unit


def at_similarity(base: np.ndarray, similarity: float, seed: int = 99) -> np.ndarray:
    """A unit vector whose cosine similarity to ``base`` is exactly ``similarity``."""
    other = unit(seed)
    other -= other.dot(base) * base
    other /= np.linalg.norm(other)
    return (similarity * base + math.sqrt(1 - similarity**2) * other).astype(np.float32)


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
        sweep_interval_s=3600,  # tests sweep by hand
    )


@pytest.fixture
async def engine(
    env: LmdbEnvironment, executor: ThreadPoolExecutor, clock: Clock
) -> AsyncIterator[SemanticCache]:
    cache = make_engine(env, executor, clock)
    await cache.open()
    yield cache
    await cache.close()


def insert(prompt: str, vector: np.ndarray, **kw: object) -> Insert:
    return Insert(namespace=str(kw.pop("namespace", "t1")), prompt=prompt, response=b'"a"',
                  vector=vector, **kw)  # type: ignore[arg-type]  # fmt: skip


@pytest.mark.parametrize(("similarity", "hit"), [(0.86, True), (0.84, False)])
async def test_hit_or_miss_around_the_threshold(
    engine: SemanticCache, similarity: float, hit: bool
) -> None:
    base = unit(1)
    stored = await engine.insert(insert("q", base))
    result = await engine.lookup(Lookup("t1", vector=at_similarity(base, similarity)))
    assert result.hit is hit
    assert result.similarity == pytest.approx(similarity, abs=1e-4)
    if hit:
        assert result.entry_id == stored.entry_id
        assert result.strategy == "semantic"
        assert result.document is not None
        assert result.document.response == b'"a"'


async def test_request_threshold_is_clamped_to_the_category(engine: SemanticCache) -> None:
    base = unit(2)
    await engine.insert(insert("q", base, category="code"))  # code: min_threshold 0.85
    probe = at_similarity(base, 0.80)
    assert not (await engine.lookup(Lookup("t1", vector=probe, category="code", threshold=0.5))).hit
    looser = at_similarity(base, 0.90)
    assert (await engine.lookup(Lookup("t1", vector=looser, category="code", threshold=0.86))).hit


async def test_exact_tier_answers_before_embedding(engine: SemanticCache) -> None:
    await engine.insert(insert("What is 2+2?", unit(3)))
    result = await engine.lookup(Lookup("t1", text="  What   is 2+2? "))
    assert result.hit
    assert result.strategy == "exact"
    assert result.similarity == 1.0
    # Not the same text and no vector: the disabled embedder says how to fix it.
    with pytest.raises(EmbeddingDisabledError):
        await engine.lookup(Lookup("t1", text="What is 2+3?"))


async def test_namespaces_and_partitions_are_isolated(engine: SemanticCache) -> None:
    base = unit(4)
    await engine.insert(insert("q", base, namespace="a", partition="gpt-x"))
    assert (await engine.lookup(Lookup("a", vector=base, partition="gpt-x"))).hit
    assert not (await engine.lookup(Lookup("b", vector=base, partition="gpt-x"))).hit
    assert not (await engine.lookup(Lookup("a", vector=base, partition="gpt-y"))).hit
    assert not (await engine.lookup(Lookup("a", text="q", vector=base, partition="gpt-y"))).hit


async def test_partition_filter_looks_past_other_partitions(engine: SemanticCache) -> None:
    base = unit(5)
    # Many closer entries of another partition crowd the nearest neighbours.
    for i in range(40):
        await engine.insert(insert(f"other {i}", at_similarity(base, 0.99, seed=i), partition="x"))
    await engine.insert(insert("mine", at_similarity(base, 0.9, seed=1000), partition="y"))
    result = await engine.lookup(Lookup("t1", vector=base, partition="y"))
    assert result.hit
    assert result.similarity == pytest.approx(0.9, abs=1e-4)


async def test_expired_entries_are_never_returned_and_get_swept(
    engine: SemanticCache, clock: Clock
) -> None:
    base = unit(6)
    stored = await engine.insert(insert("price of gold", base, category="volatile"))
    assert engine.get(stored.entry_id) is not None
    clock.now = stored.expires_at
    assert not (await engine.lookup(Lookup("t1", vector=base, category="volatile"))).hit
    assert not (await engine.lookup(Lookup("t1", text="price of gold", vector=base))).hit
    assert engine.get(stored.entry_id) is None
    assert await engine.sweep_expired() == 1
    assert len(engine) == 0
    assert engine.stats()["volatile"].expirations == 1


async def test_request_ttl_is_clamped(engine: SemanticCache, clock: Clock) -> None:
    stored = await engine.insert(insert("q", unit(7), category="volatile", ttl_s=10**9))
    assert stored.expires_at == clock.now + 3600  # volatile's max_ttl_s


async def test_quota_evicts_least_recently_used(
    env: LmdbEnvironment, executor: ThreadPoolExecutor, clock: Clock
) -> None:
    table = CategoryTable().with_overrides({"small": {"max_entries": 3, "eviction": "lru"}})
    engine = make_engine(env, executor, clock, table)
    await engine.open()
    ids = []
    for i in range(3):
        ids.append((await engine.insert(insert(f"q{i}", unit(10 + i), category="small"))).entry_id)
    # A hit makes the first entry recently used; the second is now the oldest.
    assert (await engine.lookup(Lookup("t1", vector=unit(10), category="small"))).hit
    await engine.insert(insert("q3", unit(13), category="small"))
    assert len(engine) == 3
    assert engine.get(ids[1]) is None
    assert engine.get(ids[0]) is not None
    stats = engine.stats()["small"]
    assert (stats.entries, stats.evictions) == (3, 1)
    assert DocumentStore(env).get(ids[1]) is None  # gone from LMDB too
    await engine.close()


async def test_byte_quota(env: LmdbEnvironment, executor: ThreadPoolExecutor, clock: Clock) -> None:
    table = CategoryTable().with_overrides({"tiny": {"max_bytes": 5000}})
    engine = make_engine(env, executor, clock, table)
    await engine.open()
    for i in range(10):
        await engine.insert(
            Insert("t1", f"q{i}", b"x" * 1500, "bytes", category="tiny", vector=unit(20 + i))
        )
    stats = engine.stats()["tiny"]
    assert stats.bytes <= 5000
    assert stats.evictions == 10 - stats.entries
    await engine.close()


async def test_restart_rebuilds_from_lmdb(
    env: LmdbEnvironment, executor: ThreadPoolExecutor, clock: Clock
) -> None:
    first = make_engine(env, executor, clock)
    await first.open()
    stored = [await first.insert(insert(f"q{i}", unit(30 + i))) for i in range(20)]
    await first.delete(stored[0].entry_id)
    await first.close()

    second = make_engine(env, executor, clock)
    await second.open()
    assert len(second) == 19
    result = await second.lookup(Lookup("t1", vector=unit(35)))
    assert result.hit
    assert result.entry_id == stored[5].entry_id
    assert not (await second.lookup(Lookup("t1", vector=unit(30)))).hit
    new = await second.insert(insert("new", unit(99)))
    assert new.entry_id not in {s.entry_id for s in stored}  # random, never a live one
    await second.close()


async def test_restored_entries_are_evicted_oldest_first_even_while_being_fed(
    env: LmdbEnvironment, executor: ThreadPoolExecutor, clock: Clock
) -> None:
    table = CategoryTable().with_overrides({"small": {"max_entries": 50}})
    first = make_engine(env, executor, clock, table)
    await first.open()
    old = []
    for i in range(50):  # ids are random: only their creation times say which is older
        old.append(await first.insert(insert(f"q{i}", unit(100 + i), category="small")))
        clock.now += 1
    await first.close()

    second = make_engine(env, executor, clock, table)
    await second.open()
    # Hold the background feeder back: the policy has seen none of the restored entries.
    assert second._backlog_filler is not None
    second._backlog_filler.cancel()
    assert second._table.backlog
    new = [await second.insert(insert(f"n{i}", unit(200 + i), category="small")) for i in range(3)]
    assert len(second) == 50
    gone = [o.entry_id for o in old if second.get(o.entry_id) is None]
    assert gone == [o.entry_id for o in old[:3]]  # the oldest restored entries went
    assert all(second.get(n.entry_id) is not None for n in new)
    await second.sweep_expired()  # drains the backlog
    assert not second._table.backlog
    await second.close()


async def test_reinserting_a_prompt_replaces_the_old_entry(engine: SemanticCache) -> None:
    old = await engine.insert(insert("same prompt", unit(40)))
    new = await engine.insert(insert("same prompt", unit(41)))
    assert engine.get(old.entry_id) is None
    assert (await engine.lookup(Lookup("t1", text="same prompt"))).entry_id == new.entry_id
    assert len(engine) == 1


async def test_delete_and_purge(engine: SemanticCache) -> None:
    a = await engine.insert(insert("a", unit(50), namespace="n1", category="code"))
    await engine.insert(insert("b", unit(51), namespace="n1", category="factual"))
    await engine.insert(insert("c", unit(52), namespace="n1", partition="p"))
    await engine.insert(insert("d", unit(53), namespace="n2"))
    assert await engine.delete(a.entry_id)
    assert not await engine.delete(a.entry_id)
    assert await engine.purge("n1", partition="p") == 1
    assert await engine.purge("n1", category="factual") == 1
    assert await engine.purge("n1") == 0
    assert len(engine) == 1


@pytest.mark.parametrize(
    "vector",
    [
        np.ones(DIM + 1, dtype=np.float32),
        np.full(DIM, np.nan, dtype=np.float32),
        np.zeros(DIM, dtype=np.float32),
    ],
)
async def test_bad_vectors_are_rejected_and_nothing_is_stored(
    engine: SemanticCache, vector: np.ndarray
) -> None:
    with pytest.raises(BadRequestError) as info:
        await engine.insert(insert("q", vector))
    assert info.value.field == "vector"
    with pytest.raises(BadRequestError):
        await engine.lookup(Lookup("t1", vector=vector))
    assert len(engine) == 0


async def test_unknown_category(engine: SemanticCache) -> None:
    with pytest.raises(UnknownCategoryError):
        await engine.insert(insert("q", unit(60), category="nope"))
    with pytest.raises(UnknownCategoryError):
        await engine.lookup(Lookup("t1", vector=unit(60), category="nope"))


async def test_hit_counts_reach_lmdb(engine: SemanticCache, env: LmdbEnvironment) -> None:
    stored = await engine.insert(insert("q", unit(70)))
    for _ in range(3):
        assert (await engine.lookup(Lookup("t1", vector=unit(70)))).hit
    await engine.close()  # flushes pending hit counts
    document = DocumentStore(env).get(stored.entry_id)
    assert document is not None
    assert document.hit_count == 3
