"""The shared KV tier: two engines with their own data directories sharing real Redis."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from semcached.errors import NotFoundError
from semcached.index.kv_meta import VariantMeta, scope_key
from semcached.index.shared.kv_blobs import chunk_tag
from semcached.service.config import SharedSettings
from semcached.service.kv.component import shared_tier
from semcached.service.kv.engine import KvCache
from semcached.service.kv.sharing import SharedKv
from semcached.service.kv.types import UNSCOPED, KvTenant
from tests.redis_servers import RedisCluster, RedisServer
from tests.service.kv.kit import TINY, Engines, key_of, variant

WAIT_S = 30.0  # bound of every wait for a background write or a reconnection
PREFIX = "t"


@dataclass
class Pair:
    """Engines A and B, each over its own data directory, sharing one Redis."""

    a: KvCache
    b: KvCache

    @property
    def shared_a(self) -> SharedKv:
        assert self.a.shared is not None
        return self.a.shared

    @property
    def shared_b(self) -> SharedKv:
        assert self.b.shared is not None
        return self.b.shared


OpenPair = Callable[..., Pair]


def make_shared(url: str, **settings: int) -> SharedKv:
    shared = shared_tier(
        SharedSettings(redis_url=url, key_prefix=PREFIX, timeout_s=1.0, **settings)
    )
    assert shared is not None
    return shared


@pytest.fixture
def open_pair(tmp_path: Path) -> Iterator[OpenPair]:
    """Opens a pair on a Redis URL (``settings``: of [shared]); closes them after."""
    made: list[Engines] = []

    def open_(url: str, **settings: int) -> Pair:
        engines = []
        for name in ("a", "b"):
            kit = Engines(tmp_path / name)
            made.append(kit)
            engines.append(kit.open(shared=make_shared(url, **settings)))
        return Pair(*engines)

    yield open_
    for kit in made:
        kit.close_all()


@pytest.fixture
def pair(open_pair: OpenPair, redis_server: RedisServer) -> Pair:
    return open_pair(redis_server.url)


def put_shared(
    engine: KvCache,
    chunk: bytes,
    tokens: int,
    prefix: Sequence[bytes] = (),
    *,
    seed: int,
    tenant: KvTenant = UNSCOPED,
) -> tuple[VariantMeta, bytes]:
    """Put on ``engine`` and wait until its write reached Redis."""
    meta, blob = variant(chunk, tokens, prefix, seed=seed)
    engine.put(meta, blob, tenant=tenant)
    assert engine.shared is not None
    assert engine.shared.flush(WAIT_S)
    return meta, blob


def test_a_put_on_a_is_served_by_b_from_the_shared_tier_then_locally(pair: Pair) -> None:
    key = key_of(1, 2, 3)
    meta, blob = put_shared(pair.a, key, 16, seed=1)
    assert pair.shared_a.snapshot().written_bytes == len(blob)

    got_meta, data = pair.b.get(key)
    assert bytes(data) == blob
    assert (got_meta.variant, got_meta.shape) == (meta.variant, meta.shape)
    shared = pair.b.stats()["shared"]
    assert (shared.hits, shared.promotions) == (1, 1)
    assert pair.b.variants == 1  # promoted through put: on B's disk (and host) now

    host_hits = pair.b.stats()["host"].hits
    _, again = pair.b.get(key)
    assert bytes(again) == blob
    assert pair.b.stats()["shared"].hits == 1  # the second read stayed local
    assert pair.b.stats()["host"].hits == host_hits + 1
    # B does not write back what it fetched.
    assert pair.shared_b.snapshot().writes == 0
    pair.b._check()


def test_plan_on_b_reports_shared_then_the_local_tier_after_the_fetch(pair: Pair) -> None:
    first, second = key_of(10), key_of(11)
    put_shared(pair.a, first, 16, seed=2)
    put_shared(pair.a, second, 16, [first], seed=3)
    keys = [first, second]

    on_a = pair.a.plan(TINY.name, keys, chunk_tokens=[16, 16])
    on_b = pair.b.plan(TINY.name, keys, chunk_tokens=[16, 16])
    assert [c.tier for c in on_a.chunks] == ["host", "host"]
    assert [c.tier for c in on_b.chunks] == ["shared", "shared"]
    assert all(c.handle is None for c in on_b.chunks)
    # The planner decided from the shared records exactly as from the local ones.
    for here, there in zip(on_a.chunks, on_b.chunks, strict=True):
        assert there.decision.hit
        assert there.decision.variant == here.decision.variant
        assert (there.decision.cci, there.decision.cfo) == (here.decision.cci, here.decision.cfo)
        assert there.decision.recompute.tolist() == here.decision.recompute.tolist()
        assert there.rope_shift == here.rope_shift
    assert pair.b.stats()["shared"].hits == 2

    pair.b.get(first)
    pair.b.get(second)
    after = pair.b.plan(TINY.name, keys, chunk_tokens=[16, 16])
    assert [c.tier for c in after.chunks] == ["host", "host"]
    miss = pair.b.plan(TINY.name, [key_of(99)])
    assert not miss.chunks[0].decision.hit
    assert miss.chunks[0].tier is None
    assert pair.b.stats()["shared"].misses == 1


def test_a_blob_bigger_than_a_part_is_split_and_comes_back_identical(
    open_pair: OpenPair, redis_server: RedisServer
) -> None:
    pair = open_pair(redis_server.url, kv_part_bytes=4096)
    key = key_of(5)
    _, blob = put_shared(pair.a, key, 100, seed=5)  # 25 600 bytes: 7 parts
    parts = [k for k in redis_server.client().scan_iter(f"{PREFIX}:*") if not k.endswith(b":v")]
    assert len(parts) == 7
    # Parts stay 16 bytes under kv_part_bytes: Redis's allocation then fits 4096 exactly.
    assert max(len(redis_server.client().get(k) or b"") for k in parts) == 4096 - 16
    _, data = pair.b.get(key)
    assert bytes(data) == blob


def _part_keys(server: RedisServer) -> list[bytes]:
    return sorted(k for k in server.client().scan_iter(f"{PREFIX}:*") if not k.endswith(b":v"))


def test_a_corrupt_part_or_record_is_a_miss_and_counted(
    pair: Pair, redis_server: RedisServer
) -> None:
    key = key_of(6)
    _, blob = put_shared(pair.a, key, 16, seed=6)
    (part,) = _part_keys(redis_server)
    redis_server.client().set(part, b"\x00" * len(blob))  # same length, other bytes
    with pytest.raises(NotFoundError):
        pair.b.get(key)
    counters = pair.shared_b.snapshot()
    assert counters.corrupt == 1
    assert pair.b.variants == 0
    # The broken record was dropped: plans stop offering it.
    assert pair.b.plan(TINY.name, [key]).chunks[0].tier is None

    other = key_of(7)
    put_shared(pair.a, other, 16, seed=7)
    index = f"{chunk_tag(PREFIX, other)}:v"
    (field,) = redis_server.client().hkeys(index)
    redis_server.client().hset(index, field, b"SKV1 not a record")
    assert pair.b.plan(TINY.name, [other]).chunks[0].tier is None
    with pytest.raises(NotFoundError):
        pair.b.get(other)
    assert pair.shared_b.snapshot().corrupt >= 3
    assert pair.b.stats()["shared"].errors == pair.shared_b.snapshot().corrupt


def test_a_delete_on_a_removes_the_shared_copy(pair: Pair, redis_server: RedisServer) -> None:
    key = key_of(8)
    put_shared(pair.a, key, 16, seed=8)
    assert pair.a.delete(key) == 1
    assert not list(redis_server.client().scan_iter(f"{PREFIX}:*"))
    with pytest.raises(NotFoundError):
        pair.b.get(key)
    # A chunk only Redis holds is deleted from there by any daemon, and counted.
    other = key_of(9)
    put_shared(pair.a, other, 16, seed=9)
    pair.a.delete(other)
    put_shared(pair.a, other, 16, seed=9)
    assert pair.b.delete(other) == 1
    assert pair.a.delete(other) == 1  # A's local copy; Redis had none left


def test_a_delete_drops_queued_writes_of_the_variant(
    open_pair: OpenPair, redis_server: RedisServer
) -> None:
    pair = open_pair(redis_server.url)
    redis_server.pause()  # the write waits in A's queue
    try:
        key = key_of(12)
        meta, blob = variant(key, 16, seed=12)
        pair.a.put(meta, blob)
        assert pair.a.delete(key) == 1
    finally:
        redis_server.resume()
    assert pair.shared_a.wait_up(WAIT_S)
    assert pair.shared_a.flush(WAIT_S)
    assert not list(redis_server.client().scan_iter(f"{PREFIX}:*"))


def test_tenants_stay_apart_across_daemons(pair: Pair) -> None:
    x = KvTenant(scope=scope_key("x"), owner="x")
    y = KvTenant(scope=scope_key("y"), owner="y")
    key = key_of(20)
    _, blob = put_shared(pair.a, key, 16, seed=20, tenant=x)
    with pytest.raises(NotFoundError):
        pair.b.get(key, tenant=y)
    with pytest.raises(NotFoundError):
        pair.b.get(key)  # unscoped is another scope too
    assert pair.b.plan(TINY.name, [key], tenant=y).chunks[0].tier is None
    assert pair.b.plan(TINY.name, [key], tenant=x).chunks[0].tier == "shared"
    _, data = pair.b.get(key, tenant=x)
    assert bytes(data) == blob
    assert pair.b.delete(key, tenant=y) == 0


def test_redis_stopped_is_a_local_miss_and_sharing_resumes_after_it_restarts(
    pair: Pair, redis_server: RedisServer
) -> None:
    port = redis_server.port
    before = key_of(30)
    put_shared(pair.a, before, 16, seed=30)
    redis_server.stop()

    during = key_of(31)
    meta, blob = variant(during, 16, seed=31)
    assert pair.a.put(meta, blob).created  # acknowledged without Redis
    assert bytes(pair.a.get(during)[1]) == blob  # local reads unaffected
    assert bytes(pair.a.get(before)[1]) is not None
    with pytest.raises(NotFoundError):
        pair.b.get(before)  # a plain miss, not an error
    assert pair.b.plan(TINY.name, [during]).chunks[0].tier is None
    counters = pair.shared_b.snapshot()
    assert counters.outages == 1
    assert counters.fetch_errors == 1
    for _ in range(3):  # further reads do not wait on Redis, nor count new outages
        with pytest.raises(NotFoundError):
            pair.b.get(before)
    assert pair.shared_b.snapshot().outages == 1
    assert not pair.shared_a.flush(0.01)  # A keeps the write queued

    redis_server.start(port)  # empty: it kept nothing
    assert pair.shared_a.wait_up(WAIT_S)
    assert pair.shared_b.wait_up(WAIT_S)
    assert pair.shared_a.flush(WAIT_S)
    assert bytes(pair.b.get(during)[1]) == blob  # the queued write was shipped
    after = key_of(32)
    _, later = put_shared(pair.a, after, 16, seed=32)
    assert bytes(pair.b.get(after)[1]) == later


def test_a_daemon_started_without_redis_runs_local_only_until_it_answers(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    port = redis_server.port
    redis_server.stop()
    kit = Engines(tmp_path / "c")
    try:
        engine = kit.open(shared=make_shared(f"redis://127.0.0.1:{port}"))
        meta, blob = variant(key_of(40), 16, seed=40)
        engine.put(meta, blob)
        assert bytes(engine.get(key_of(40))[1]) == blob
        assert engine.shared is not None
        assert not engine.shared.up
        redis_server.start(port)
        assert engine.shared.wait_up(WAIT_S)
        assert engine.shared.flush(WAIT_S)
        assert engine.shared.snapshot().writes == 1
    finally:
        kit.close_all()


def _slot_owner(cluster: RedisCluster, slot: int) -> int:
    ports = [n.port for n in cluster.nodes]
    for start, end, master, *_ in cluster.nodes[0].client().execute_command("CLUSTER", "SLOTS"):
        if start <= slot <= end:
            return ports.index(int(master[1]))
    raise AssertionError(f"slot {slot} is not covered")


def test_the_same_flow_on_a_cluster_survives_a_slot_move(
    open_pair: OpenPair, redis_cluster: RedisCluster
) -> None:
    pair = open_pair(redis_cluster.url, kv_part_bytes=4096)
    key = key_of(50)
    _, blob = put_shared(pair.a, key, 100, seed=50)
    assert bytes(pair.b.get(key)[1]) == blob

    moved = key_of(51)
    _, moved_blob = put_shared(pair.a, moved, 100, seed=51)
    slot = int(redis_cluster.nodes[0].client().cluster("keyslot", chunk_tag(PREFIX, moved)))
    source = _slot_owner(redis_cluster, slot)
    first = min(
        start
        for start, _, master, *_ in redis_cluster.nodes[0]
        .client()
        .execute_command("CLUSTER", "SLOTS")
        if int(master[1]) == redis_cluster.nodes[source].port
    )
    redis_cluster.move_slots(source, (source + 1) % 3, slot - first + 1)
    assert _slot_owner(redis_cluster, slot) != source  # the variant's slot moved

    # Both engines' clients still hold the old slot map: MOVED is followed.
    assert bytes(pair.b.get(moved)[1]) == moved_blob
    assert pair.b.plan(TINY.name, [key_of(52)]).chunks[0].tier is None
    again = key_of(52)
    _, later = put_shared(pair.a, again, 100, seed=52)
    assert pair.b.plan(TINY.name, [again]).chunks[0].tier == "shared"
    assert bytes(pair.b.get(again)[1]) == later
    assert pair.shared_a.snapshot().outages == 0
    assert pair.shared_b.snapshot().outages == 0


def test_a_refusal_by_redis_is_a_miss_not_an_outage(pair: Pair, redis_server: RedisServer) -> None:
    """A refusal that is not an outage (here: the index key holds a string) is a miss."""
    key = key_of(60)
    put_shared(pair.a, key, 16, seed=60)
    redis_server.client().set(f"{chunk_tag(PREFIX, key)}:v", b"not a hash")
    with pytest.raises(NotFoundError):
        pair.b.get(key)
    assert pair.shared_b.snapshot().fetch_errors == 1
    assert pair.shared_b.up  # a refusal does not open the breaker


def test_a_partition_is_one_failed_read_then_local_misses_until_it_heals(
    pair: Pair, redis_server: RedisServer
) -> None:
    before = key_of(70)
    _, blob = put_shared(pair.a, before, 16, seed=70)
    redis_server.pause()  # frozen: connections hang rather than fail
    try:
        during = key_of(71)
        meta, later = variant(during, 16, seed=71)
        assert pair.a.put(meta, later).created
        for _ in range(3):
            with pytest.raises(NotFoundError):
                pair.b.get(before)
        counters = pair.shared_b.snapshot()
        # Only the first read waited for Redis; the breaker answered the others.
        assert (counters.outages, counters.fetch_errors) == (1, 1)
    finally:
        redis_server.resume()
    assert pair.shared_b.wait_up(WAIT_S)
    assert pair.shared_a.wait_up(WAIT_S)
    assert pair.shared_a.flush(WAIT_S)
    assert bytes(pair.b.get(before)[1]) == blob  # Redis kept it: it was only frozen
    assert bytes(pair.b.get(during)[1]) == later


def test_concurrent_reads_of_a_chunk_fetch_it_from_redis_once(
    pair: Pair, redis_server: RedisServer
) -> None:
    key = key_of(80)
    _, blob = put_shared(pair.a, key, 100, seed=80)

    def mgets() -> int:
        stats = redis_server.client().info("commandstats").get("cmdstat_mget", {})
        return int(stats.get("calls", 0))

    start = threading.Barrier(8)

    def read(_: int) -> bytes:
        start.wait()  # all at once: the first read is still in flight for the others
        return bytes(pair.b.get(key)[1])

    before = mgets()
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(read, range(8)))
    assert results == [blob] * 8
    assert mgets() - before == 1  # the parts were read once, whoever waited for them
    assert pair.b.stats()["shared"].promotions == 1
    assert pair.b.variants == 1
    pair.b._check()
