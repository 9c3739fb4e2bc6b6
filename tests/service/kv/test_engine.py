"""The chunk KV cache engine in-process: puts, reads, budgets, tier moves, leases, restart."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from semcached.cachepolicy.reuse_value import ReuseValuePolicy
from semcached.errors import BadRequestError, ConflictError, NotFoundError, PayloadTooLargeError
from semcached.protocol.keys import variant_key
from semcached.service.kv.engine import KvCache
from tests.service.kv.kit import PAGE, TINY, Engines, blob_nbytes, key_of, variant

BLOB16 = blob_nbytes(16)  # 4 KiB: one arena page


@pytest.fixture
def engines(tmp_path: Path) -> Iterator[Engines]:
    made = Engines(tmp_path)
    yield made
    made.close_all()


@pytest.fixture
def engine(engines: Engines) -> KvCache:
    return engines.open()


def test_put_then_get_returns_the_same_bytes_from_the_host_tier(engine: KvCache) -> None:
    meta, blob = variant(key_of(1))
    result = engine.put(meta, blob)
    engine._check()
    assert result.created
    assert result.tiers == ("host", "disk")
    got_meta, got = engine.get(meta.chunk)
    assert got == blob
    assert got_meta.variant == variant_key([])
    stats = engine.stats()
    assert (stats["host"].entries, stats["disk"].entries) == (1, 1)
    assert stats["host"].hits == 1
    assert stats["disk"].hits == 0


def test_a_second_put_of_the_same_variant_replaces_it(engine: KvCache) -> None:
    meta, blob = variant(key_of(1), seed=1)
    engine.put(meta, blob)
    meta2, blob2 = variant(key_of(1), seed=2)
    assert not engine.put(meta2, blob2).created
    engine._check()
    assert engine.get(meta.chunk)[1] == blob2
    assert engine.variants == 1


def test_variants_of_one_chunk_are_kept_apart(engine: KvCache) -> None:
    a, b = key_of(1), key_of(2)
    alone, blob_alone = variant(b, seed=1, created_at=1.0)
    after_a, blob_after_a = variant(b, prefix=[a], seed=2, created_at=2.0)
    engine.put(alone, blob_alone)
    engine.put(after_a, blob_after_a)
    assert engine.get(b, variant_key([]))[1] == blob_alone
    assert engine.get(b, variant_key([a]))[1] == blob_after_a
    assert engine.get(b)[1] == blob_after_a  # the newest without a variant
    assert engine.delete(b, variant_key([a])) == 1
    assert engine.get(b)[1] == blob_alone
    assert engine.delete(b) == 1
    with pytest.raises(NotFoundError):
        engine.get(b)
    engine._check()


@pytest.mark.parametrize(
    ("mutate", "error", "code"),
    [
        (lambda m, b: (m, b[:-4]), BadRequestError, "length_mismatch"),
        (lambda m, b: (m, b + b"\0" * 4), BadRequestError, "length_mismatch"),
    ],
)
def test_a_blob_that_does_not_match_its_shape_is_rejected(
    engine: KvCache, mutate: object, error: type[Exception], code: str
) -> None:
    meta, blob = variant(key_of(1))
    meta, blob = mutate(meta, blob)  # type: ignore[operator]
    with pytest.raises(error) as info:
        engine.put(meta, blob)
    assert info.value.code == code  # type: ignore[attr-defined]
    assert engine.variants == 0
    assert list(engine.store.scan()) == []


def test_unknown_model_and_wrong_shape_are_rejected(engine: KvCache) -> None:
    meta, blob = variant(key_of(1))
    meta.model = "nope"
    with pytest.raises(BadRequestError, match="unknown model"):
        engine.put(meta, blob)
    meta, blob = variant(key_of(1))
    meta.shape = (TINY.layers, 2, TINY.kv_heads * 2, 8, TINY.head_dim)
    with pytest.raises(BadRequestError, match="layers, 2, kv_heads"):
        engine.put(meta, blob)
    assert engine.variants == 0


def test_oversized_blob_is_rejected(engines: Engines) -> None:
    engine = engines.open(max_blob_bytes=BLOB16)
    meta, blob = variant(key_of(1), tokens=32)
    with pytest.raises(PayloadTooLargeError):
        engine.put(meta, blob)
    assert engine.variants == 0


def test_disk_budget_evicts_in_policy_order_durably(engines: Engines) -> None:
    engine = engines.open(disk_bytes=3 * BLOB16, host_bytes=0)
    keys = [key_of(i) for i in range(5)]
    for i, key in enumerate(keys):
        engine.put(*variant(key, seed=i, created_at=float(i)))
        engine._check()
        if i == 2:
            engine.get(keys[0])  # LRU: key 0 becomes recent, key 1 goes first
    stats = engine.stats()["disk"]
    assert stats.entries == 3
    assert stats.evictions == 2
    assert stats.bytes <= 3 * BLOB16
    stored = {m.chunk for m in engine.store.scan()}
    assert stored == {keys[0], keys[3], keys[4]}


def test_reuse_value_eviction_keeps_the_variant_that_saves_more_prefill(
    engines: Engines,
) -> None:
    engine = engines.open(disk_bytes=2 * BLOB16, host_bytes=0, eviction=ReuseValuePolicy)
    a, b, c = key_of(1), key_of(2), key_of(3)
    # b is stored as computed after a: planned after an unrelated chunk it needs
    # recomputing (saves little); a is reused exactly (saves all 16 tokens).
    engine.put(*variant(a, seed=1, created_at=1.0))
    meta_b, blob_b = variant(b, prefix=[a], seed=2, created_at=2.0)
    meta_b.intra = 0.001  # its attention goes to its prefix: a high CCI
    engine.put(meta_b, blob_b)
    engine.plan(TINY.name, [a])
    plan = engine.plan(TINY.name, [c, b])
    assert plan.chunks[1].decision.cfo > 0.5
    engine.put(*variant(c, seed=3, created_at=3.0))
    engine._check()
    assert {m.chunk for m in engine.store.scan()} == {a, c}


def test_host_pressure_demotes_and_a_hit_promotes_again(engines: Engines) -> None:
    engine = engines.open(host_bytes=2 * PAGE)
    keys = [key_of(i) for i in range(3)]
    blobs = {}
    for i, key in enumerate(keys):
        meta, blob = variant(key, seed=i)
        blobs[key] = blob
        engine.put(meta, blob)
        engine._check()
    host, disk = engine.stats()["host"], engine.stats()["disk"]
    assert (host.entries, disk.entries, host.demotions) == (2, 3, 1)
    # keys[0] was demoted: read from disk, then promoted (demoting another).
    assert engine.get(keys[0])[1] == blobs[keys[0]]
    engine._check()
    stats = engine.stats()
    assert stats["disk"].hits == 1
    assert stats["host"].promotions == 1
    assert stats["host"].demotions == 2
    assert engine.get(keys[0])[1] == blobs[keys[0]]
    assert engine.stats()["host"].hits == 1


def test_a_lease_pins_bytes_through_delete_until_it_expires(engines: Engines) -> None:
    engine = engines.open(host_bytes=2 * PAGE)
    meta, blob = variant(key_of(1))
    engine.put(meta, blob)
    leased = engine.lease(meta.chunk, ttl_s=5.0)
    arena = engine.host.arena  # type: ignore[union-attr]
    view = arena.view(leased.handle.offset, leased.handle.length)
    assert bytes(view) == blob
    assert engine.delete(meta.chunk) == 1
    engine._check()
    # The deleted blob's extent stays allocated while leased; new puts go elsewhere.
    other, other_blob = variant(key_of(2), seed=5)
    engine.put(other, other_blob)
    engine.put(*variant(key_of(3), seed=6))  # demotes key 2, never touches the pinned extent
    engine._check()
    assert bytes(view) == blob
    assert engine.sweep() == 0
    engines.monotonic.now += 5.0
    assert engine.sweep() == 1
    engine._check()
    assert engine.live_leases == 0
    assert arena.used_bytes == PAGE  # only key 3 is left
    del view


def test_release_ends_a_lease_and_is_false_the_second_time(engine: KvCache) -> None:
    meta, blob = variant(key_of(1))
    engine.put(meta, blob)
    leased = engine.lease(meta.chunk)
    assert engine.live_leases == 1
    assert engine.release(leased.lease.id)
    assert not engine.release(leased.lease.id)
    assert engine.live_leases == 0


def test_a_lease_of_a_demoted_variant_promotes_it(engines: Engines) -> None:
    engine = engines.open(host_bytes=PAGE)
    a, blob_a = variant(key_of(1), seed=1)
    engine.put(a, blob_a)
    engine.put(*variant(key_of(2), seed=2))  # demotes a
    leased = engine.lease(a.chunk)
    assert bytes(engine.host.arena.view(leased.handle.offset, leased.handle.length)) == blob_a  # type: ignore[union-attr]
    assert engine.stats()["host"].promotions == 1
    engine._check()


def test_lease_limits(engines: Engines) -> None:
    engine = engines.open(max_leases=2)
    meta, blob = variant(key_of(1))
    engine.put(meta, blob)
    engine.lease(meta.chunk)
    engine.lease(meta.chunk)
    with pytest.raises(Exception, match="leases are live"):
        engine.lease(meta.chunk)
    with pytest.raises(BadRequestError):
        engine.lease(meta.chunk, ttl_s=600)


def test_restart_keeps_every_acknowledged_put_and_starts_the_host_tier_cold(
    engines: Engines,
) -> None:
    engine = engines.open()
    blobs = {}
    for i in range(4):
        meta, blob = variant(key_of(i), seed=i, created_at=float(i))
        engine.put(meta, blob)
        blobs[meta.chunk] = blob
    engine.get(key_of(0))
    engines.close(engine)
    again = engines.open()
    again._check()
    stats = again.stats()
    assert stats["disk"].entries == 4
    assert stats["host"].entries == 0
    for chunk, blob in blobs.items():
        assert again.get(chunk)[1] == blob
    assert again.metadata(key_of(0)).hits == 2  # one before the restart, one now


def test_a_lowered_disk_budget_is_enforced_at_open(engines: Engines) -> None:
    engine = engines.open()
    for i in range(4):
        engine.put(*variant(key_of(i), seed=i, created_at=float(i)))
    engines.close(engine)
    smaller = engines.open(disk_bytes=2 * BLOB16)
    smaller._check()
    assert smaller.variants == 2
    assert {m.chunk for m in smaller.store.scan()} == {key_of(2), key_of(3)}


def test_plan_places_chunks_and_hands_out_pinned_handles(engine: KvCache) -> None:
    a, b, c = key_of(1), key_of(2), key_of(3)
    meta_a, blob_a = variant(a, tokens=16, rope_base=10)
    engine.put(meta_a, blob_a)
    meta_c, blob_c = variant(c, tokens=16, prefix=[a], rope_base=26)
    engine.put(meta_c, blob_c)
    plan = engine.plan(TINY.name, [a, b, c], chunk_tokens=[16, 20, 16], start=10, shm=True)
    first, miss, last = plan.chunks
    assert first.decision.hit
    assert first.decision.exact_prefix
    assert (first.position, first.rope_shift) == (10, 0)
    assert not miss.decision.hit
    assert (miss.position, miss.tokens, miss.handle) == (26, 20, None)
    assert last.decision.hit
    assert not last.decision.exact_prefix  # computed after [a], now after [a, b]
    assert (last.position, last.rope_shift) == (46, 20)
    assert plan.lease is not None
    assert len(plan.lease.pins) == 2
    assert last.handle is not None
    assert bytes(engine.host.arena.view(last.handle.offset, last.handle.length)) == blob_c  # type: ignore[union-attr]
    assert engine.release(plan.lease.id)
    engine._check()


def test_plan_without_lengths_loses_positions_after_a_miss(engine: KvCache) -> None:
    a, b = key_of(1), key_of(2)
    engine.put(*variant(b))
    plan = engine.plan(TINY.name, [a, b], start=5)
    assert [c.position for c in plan.chunks] == [5, None]
    assert plan.chunks[1].rope_shift is None
    assert plan.lease is None


def test_plan_rejects_an_unknown_model(engine: KvCache) -> None:
    with pytest.raises(BadRequestError, match="unknown model"):
        engine.plan("nope", [key_of(1)])


def test_concurrent_puts_of_one_variant_conflict_instead_of_racing(engine: KvCache) -> None:
    meta, blob = variant(key_of(1))
    engine._in_flight.add(meta.key)  # as if another thread were storing it
    with pytest.raises(ConflictError):
        engine.put(meta, blob)
    engine._in_flight.clear()
    engine.put(meta, blob)


def test_a_put_waits_for_the_delete_of_its_key_so_the_late_delete_cannot_erase_it(
    engine: KvCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine.put(*variant(key_of(1)))
    write = engine.store.write
    deleting, release = threading.Event(), threading.Event()

    def held_delete(changes: Any) -> None:
        if all(change.meta is None for change in changes):
            deleting.set()
            release.wait(10)
        write(changes)

    monkeypatch.setattr(engine.store, "write", held_delete)
    deleter = threading.Thread(target=engine.delete, args=(key_of(1),))
    deleter.start()
    assert deleting.wait(10)  # forgotten in memory, its delete not yet written
    putter = threading.Thread(target=engine.put, args=variant(key_of(1), seed=2))
    putter.start()
    putter.join(0.3)  # unfixed, the put commits here and the delete then erases it
    release.set()
    deleter.join()
    putter.join()
    engine._check()
    assert [m.key for m in engine.store.scan()] == list(engine._by_key)
    assert len(engine._by_key) == 1


def test_threads_putting_reading_and_deleting_keep_the_invariants(engines: Engines) -> None:
    engine = engines.open(disk_bytes=12 * BLOB16, host_bytes=10 * PAGE)
    errors: list[BaseException] = []

    def work(seed: int) -> None:
        rng = np.random.default_rng(seed)
        try:
            for step in range(60):
                key = key_of(int(rng.integers(20)))
                action = rng.integers(4)
                try:
                    if action == 0:
                        engine.delete(key)
                    elif action == 1:
                        engine.get(key)
                    elif action == 2:
                        leased = engine.lease(key, ttl_s=1.0)
                        engine.release(leased.lease.id)
                    else:
                        engine.put(*variant(key, seed=seed * 1000 + step))
                except (NotFoundError, ConflictError):
                    pass
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    engine._check()
    assert {m.key for m in engine.store.scan()} == set(engine._by_key)


def test_a_view_without_copy_pins_its_blob_until_it_is_dropped(engines: Engines) -> None:
    engine = engines.open(host_bytes=2 * PAGE)
    meta, blob = variant(key_of(1))
    engine.put(meta, blob)
    _, view = engine.get(meta.chunk, copy=False)
    assert isinstance(view, memoryview)
    assert view.readonly
    engine.delete(meta.chunk)
    engine.put(*variant(key_of(2), seed=2))  # cannot reuse the pinned extent
    engine._check()
    assert bytes(view) == blob
    arena = engine.host.arena  # type: ignore[union-attr]
    assert arena.used_bytes == 2 * PAGE
    part = view[:8]  # a slice keeps the pin too
    del view
    engine.sweep()
    assert arena.used_bytes == 2 * PAGE
    del part
    engine.sweep()
    engine._check()
    assert arena.used_bytes == PAGE


def test_a_put_whose_metadata_cannot_be_stored_fails_alone(engine: KvCache) -> None:
    """Issue 14, defect 3: its record used to abort the transaction it shared."""
    committer = engine.store._committer
    commit = committer._commit
    gate = threading.Event()

    def held_first_commit(items: list[Any]) -> None:
        gate.wait()  # the first commit stays open while the other puts queue behind it
        commit(items)

    committer._commit = held_first_commit  # type: ignore[method-assign]
    outcome: dict[int, BaseException | None] = {}

    def put(i: int) -> None:
        meta, blob = variant(key_of(i), seed=i)
        if i == 4:
            meta.rope = {"scaling": _nested(300)}  # orjson refuses more than 254 levels
        try:
            engine.put(meta, blob)
            outcome[i] = None
        except BaseException as exc:
            outcome[i] = exc

    threads = [threading.Thread(target=put, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    while len(committer._queue) < 6:  # one leads (held), one failed before queueing
        threading.Event().wait(0.001)
    gate.set()
    for t in threads:
        t.join()
    poisoned = outcome.pop(4)
    assert outcome == dict.fromkeys([0, 1, 2, 3, 5, 6, 7])  # every other put succeeded
    assert isinstance(poisoned, BadRequestError)
    assert (poisoned.code, poisoned.field) == ("invalid_meta", "rope")
    engine._check()
    assert {m.chunk for m in engine.store.scan()} == {key_of(i) for i in outcome}


def _nested(depth: int) -> list[object]:
    value: list[object] = []
    for _ in range(depth - 1):
        value = [value]
    return value
