"""The semantic engine's side of tenancy: random entry ids, tenant quotas, old data."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from semcached.index.docstore import Document, DocumentStore
from semcached.index.lmdb_env import LmdbEnvironment
from semcached.service.semantic.engine import Insert, Lookup, TenantQuota
from tests.service.semantic.kit import DIM, Clock, unit
from tests.service.semantic.test_engine import make_engine


def insert(n: int, namespace: str = "acme", quota: TenantQuota | None = None) -> Insert:
    return Insert(namespace, f"prompt {n}", b'"a"', vector=unit(n), quota=quota)


async def test_entry_ids_are_random_not_sequential(
    env: LmdbEnvironment, executor: ThreadPoolExecutor, clock: Clock
) -> None:
    engine = make_engine(env, executor, clock)
    await engine.open()
    try:
        ids = [(await engine.insert(insert(n, f"t{n % 2}"))).entry_id for n in range(64)]
    finally:
        await engine.close()
    assert len(set(ids)) == 64
    assert all(0 < i < 1 << 63 for i in ids)
    # Sequential ids would be sorted and dense: one tenant could count the others' inserts.
    assert ids != sorted(ids)
    assert max(ids) > 1 << 40


async def test_a_tenant_over_its_entries_loses_its_own_oldest(
    env: LmdbEnvironment, executor: ThreadPoolExecutor, clock: Clock
) -> None:
    engine = make_engine(env, executor, clock)
    await engine.open()
    quota = TenantQuota("acme", lambda ns: ns.startswith("acme"), max_entries=4)
    try:
        other = [(await engine.insert(insert(100 + n, "bobco"))).entry_id for n in range(6)]
        mine = []
        for n in range(7):  # across two of its namespaces
            namespace = "acme" if n % 2 else "acme-eu"
            mine.append((await engine.insert(insert(n, namespace, quota))).entry_id)
            clock.now += 1
        assert [engine.get(i) is not None for i in mine] == [False] * 3 + [True] * 4
        assert all(engine.get(i) is not None for i in other)  # another tenant's: untouched
        assert engine.usage(lambda ns: ns.startswith("acme"))[0] == 4
    finally:
        await engine.close()


async def test_a_tenant_over_its_bytes_loses_its_own_oldest(
    env: LmdbEnvironment, executor: ThreadPoolExecutor, clock: Clock
) -> None:
    engine = make_engine(env, executor, clock)
    await engine.open()
    try:
        first = await engine.insert(insert(1))
        size = engine.usage(lambda ns: ns == "acme")[1]
        quota = TenantQuota("acme", lambda ns: ns == "acme", max_bytes=2 * size + size // 2)
        clock.now += 1
        second = await engine.insert(insert(2, quota=quota))
        assert engine.get(first.entry_id) is not None  # two fit
        clock.now += 1
        third = await engine.insert(insert(3, quota=quota))
        assert engine.get(first.entry_id) is None
        assert engine.get(second.entry_id) is not None
        assert engine.get(third.entry_id) is not None
        assert engine.usage(lambda ns: ns == "acme")[1] <= quota.max_bytes
    finally:
        await engine.close()


async def test_after_a_restart_the_quota_still_takes_the_oldest(
    env: LmdbEnvironment, executor: ThreadPoolExecutor, clock: Clock
) -> None:
    first = make_engine(env, executor, clock)
    await first.open()
    old = []
    for n in range(5):
        old.append((await first.insert(insert(n))).entry_id)
        clock.now += 1
    await first.close()

    second = make_engine(env, executor, clock)
    await second.open()
    try:
        assert second._backlog_filler is not None
        second._backlog_filler.cancel()  # the restored entries are not in age order yet
        quota = TenantQuota("acme", lambda ns: ns == "acme", max_entries=5)
        new = (await second.insert(insert(50, quota=quota))).entry_id
        assert second.get(old[0]) is None
        assert all(second.get(i) is not None for i in [*old[1:], new])
    finally:
        await second.close()


async def test_a_store_of_sequential_ids_opens_and_serves(
    env: LmdbEnvironment, executor: ThreadPoolExecutor, clock: Clock
) -> None:
    """Data written when ids were 1, 2, 3…: read, hit, deleted, and new ids beside them."""
    store = DocumentStore(env)
    items = []
    for n in (1, 2, 3):
        document = Document(
            n, "t1", "default", "", "", f"old {n}", b'"x"', "json",
            clock.now, clock.now + 3600, 0, 0.0, DIM,
        )  # fmt: skip
        items.append((document, unit(n)))
    store.put_many(items)
    engine = make_engine(env, executor, clock)
    await engine.open()
    try:
        assert len(engine) == 3
        hit = await engine.lookup(Lookup("t1", vector=unit(2)))
        assert (hit.hit, hit.entry_id) == (True, 2)
        exact = await engine.lookup(Lookup("t1", text="old 3"))
        assert (exact.hit, exact.entry_id) == (True, 3)
        assert await engine.delete(1)
        new = await engine.insert(Insert("t1", "new", b'"y"', vector=unit(9)))
        assert new.entry_id not in (1, 2, 3)
        assert (await engine.lookup(Lookup("t1", vector=unit(9)))).entry_id == new.entry_id
    finally:
        await engine.close()
