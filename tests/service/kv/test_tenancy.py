"""The chunk KV engine's side of tenancy: scoped keys, lease owners and caps, byte quotas."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from semcached.errors import (
    NotFoundError,
    PayloadTooLargeError,
    ServiceUnavailableError,
    TooManyRequestsError,
)
from semcached.index.kv_meta import scope_key
from semcached.protocol.codes import ErrorCode
from semcached.service.kv.engine import KvCache, KvTenant
from tests.service.kv.kit import TINY, Engines, blob_nbytes, key_of, variant

A = KvTenant(scope=scope_key("acme"), owner="acme")
B = KvTenant(scope=scope_key("bobco"), owner="bobco")
BLOB16 = blob_nbytes(16)


@pytest.fixture
def engines(tmp_path: Path) -> Iterator[Engines]:
    made = Engines(tmp_path)
    yield made
    made.close_all()


@pytest.fixture
def engine(engines: Engines) -> KvCache:
    return engines.open()


def test_the_same_key_of_two_tenants_is_two_entries(engine: KvCache) -> None:
    key = key_of(1)
    meta_a, blob_a = variant(key, seed=1)
    meta_b, blob_b = variant(key, seed=2)
    assert engine.put(meta_a, blob_a, tenant=A).created
    assert engine.put(meta_b, blob_b, tenant=B).created  # not a replacement: B's own
    engine._check()
    assert engine.variants == 2
    got_meta, got = engine.get(key, tenant=A)
    assert (got_meta.chunk, bytes(got)) == (key, blob_a)  # the client's own key back
    assert bytes(engine.get(key, tenant=B)[1]) == blob_b
    with pytest.raises(NotFoundError):
        engine.get(key)  # the unscoped store never saw it
    with pytest.raises(NotFoundError):
        engine.metadata(key_of(2), tenant=A)
    assert engine.delete(key, tenant=B) == 1
    assert engine.delete(key, tenant=B) == 0
    assert bytes(engine.get(key, tenant=A)[1]) == blob_a  # B's delete left A's alone
    engine._check()


def test_a_plan_sees_only_its_own_tenants_variants(engine: KvCache) -> None:
    a, b = key_of(1), key_of(2)
    for key in (a, b):
        meta, blob = variant(key)
        engine.put(meta, blob, tenant=A)
    plan_a = engine.plan(TINY.name, [a, b], tenant=A)
    plan_b = engine.plan(TINY.name, [a, b], tenant=B)
    assert [c.decision.hit for c in plan_a.chunks] == [True, True]
    assert [c.meta.chunk for c in plan_a.chunks if c.meta] == [a, b]
    assert [c.decision.hit for c in plan_b.chunks] == [False, False]


def test_scoped_and_unscoped_variants_survive_a_restart(engines: Engines) -> None:
    engine = engines.open()
    key = key_of(1)
    for seed, tenant in ((1, A), (2, B), (3, KvTenant())):
        meta, blob = variant(key, seed=seed)
        engine.put(meta, blob, tenant=tenant)
    expected = {t: bytes(engine.get(key, tenant=t)[1]) for t in (A, B, KvTenant())}
    engines.close(engine)
    again = engines.open()
    again._check()
    assert again.variants == 3
    for tenant, blob in expected.items():
        meta, got = again.get(key, tenant=tenant)
        assert (meta.chunk, meta.scope, bytes(got)) == (key, tenant.scope, blob)


def test_a_tenant_over_its_bytes_loses_its_own_oldest(engine: KvCache) -> None:
    capped = KvTenant(scope=A.scope, owner="acme", max_bytes=2 * BLOB16)
    others = [variant(key_of(100 + i)) for i in range(3)]
    for meta, blob in others:
        engine.put(meta, blob, tenant=B)
    keys = [key_of(i) for i in range(4)]
    for key in keys:
        meta, blob = variant(key)
        result = engine.put(meta, blob, tenant=capped)
        engine._check()
    assert result.evicted == 1
    assert engine.scope_bytes(A.scope) == 2 * BLOB16
    present = []
    for key in keys:
        try:
            engine.metadata(key, tenant=A)
            present.append(key)
        except NotFoundError:
            pass
    assert present == keys[2:]  # the oldest two went
    for meta, _ in others:  # another tenant's chunks are not the price of A's quota
        engine.metadata(meta.chunk, tenant=B)
    big, blob = variant(key_of(9), tokens=48)
    with pytest.raises(PayloadTooLargeError):
        engine.put(big, blob, tenant=capped)


def test_a_tenant_at_its_lease_cap_gets_429_and_others_still_lease(engines: Engines) -> None:
    engine = engines.open(max_leases=10)
    meta, blob = variant(key_of(1))
    engine.put(meta, blob, tenant=A)
    engine.put(*variant(key_of(1)), tenant=B)
    capped = KvTenant(scope=A.scope, owner="acme", max_leases=2)
    held = [engine.lease(meta.chunk, tenant=capped) for _ in range(2)]
    with pytest.raises(TooManyRequestsError) as refused:
        engine.lease(meta.chunk, tenant=capped)
    assert refused.value.code == ErrorCode.LEASE_QUOTA_EXCEEDED
    others = [engine.lease(meta.chunk, tenant=B) for _ in range(8)]  # B is not held back
    with pytest.raises(ServiceUnavailableError):  # the daemon-wide bound still holds
        engine.lease(meta.chunk, tenant=B)
    assert engine.lease_holders() == {"acme": (2, 2 * BLOB16), "bobco": (8, 8 * BLOB16)}
    assert engine.release(held[0].lease.id, owner="acme")
    engine.lease(meta.chunk, tenant=capped)  # room again
    assert others


def test_releasing_another_tenants_lease_is_refused(engine: KvCache) -> None:
    meta, blob = variant(key_of(1))
    engine.put(meta, blob, tenant=A)
    leased = engine.lease(meta.chunk, tenant=A)
    assert not engine.release(leased.lease.id, owner="bobco")
    assert engine.live_leases == 1
    assert engine.release(leased.lease.id, owner="acme")
    assert engine.live_leases == 0
    assert engine.lease_holders() == {}


def test_pinned_bytes_are_capped_per_tenant(engine: KvCache) -> None:
    capped = KvTenant(scope=A.scope, owner="acme", max_pinned_bytes=2 * BLOB16)
    keys = [key_of(i) for i in range(3)]
    for key in keys:
        meta, blob = variant(key)
        engine.put(meta, blob, tenant=A)
    engine.lease(keys[0], tenant=capped)
    engine.lease(keys[1], tenant=capped)
    with pytest.raises(TooManyRequestsError) as refused:
        engine.lease(keys[2], tenant=capped)
    assert refused.value.code == ErrorCode.PIN_QUOTA_EXCEEDED
    assert engine.lease_holders() == {"acme": (2, 2 * BLOB16)}
    # A plan under the cap hands out handles up to it; the rest are fetched over HTTP.
    roomy = KvTenant(scope=A.scope, owner="acme", max_pinned_bytes=4 * BLOB16)
    plan = engine.plan(TINY.name, keys, shm=True, tenant=roomy)
    handles = [c.handle for c in plan.chunks]
    assert sum(h is not None for h in handles) == 2
    assert all(c.decision.hit for c in plan.chunks)
    assert engine.lease_holders()["acme"] == (3, 4 * BLOB16)
    engine._check()
