"""Puts read straight into the host tier (KvCache.put_buffer): the reserved room becomes
the variant's host copy when the put commits, and goes back when it does not."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from semcached.errors import BadRequestError, ConflictError
from semcached.service.kv.engine import KvCache
from semcached.service.kv.types import PutBuffer
from tests.service.kv.kit import PAGE, Engines, blob_nbytes, key_of, variant

BLOB16 = blob_nbytes(16)  # one arena page


@pytest.fixture
def engines(tmp_path: Path) -> Iterator[Engines]:
    made = Engines(tmp_path)
    yield made
    made.close_all()


def _read_into(engine: KvCache, blob: bytes) -> PutBuffer:
    room = engine.put_buffer(len(blob))
    assert room is not None
    half = len(blob) // 2
    room.write(half, blob[half:])  # pieces in any order, each at its place
    room.write(0, blob[:half])
    return room


def _used(engine: KvCache) -> int:
    assert engine.host is not None
    return engine.host.arena.used_bytes


def test_a_put_read_into_the_host_tier_is_served_from_there_and_kept_on_disk(
    engines: Engines,
) -> None:
    engine = engines.open()
    blobs = {}
    for i in range(3):
        meta, blob = variant(key_of(i), seed=i)
        room = _read_into(engine, blob)
        result = engine.put(meta, room.view, into=room)
        assert result.tiers == ("host", "disk")
        blobs[meta.chunk] = blob
    engine._check()
    assert _used(engine) == 3 * BLOB16  # the reserved room is the host copy: no other
    for chunk, blob in blobs.items():
        assert engine.get(chunk)[1] == blob
    assert engine.stats()["host"].hits == 3
    engines.close(engine)
    again = engines.open()  # the host tier starts cold: the bytes come from LMDB
    for chunk, blob in blobs.items():
        assert again.get(chunk)[1] == blob


def test_room_is_taken_from_the_host_tier_and_given_back_when_dropped(
    engines: Engines,
) -> None:
    engine = engines.open(host_bytes=2 * PAGE)
    first, second = engine.put_buffer(PAGE), engine.put_buffer(PAGE)
    assert first is not None
    assert second is not None
    assert engine.put_buffer(PAGE) is None  # nothing published to demote
    engine.drop_put_buffer(first)
    assert _used(engine) == PAGE
    assert engine.put_buffer(PAGE) is not None


def test_room_for_a_put_demotes_published_blobs(engines: Engines) -> None:
    engine = engines.open(host_bytes=2 * PAGE)
    for i in range(2):
        engine.put(*variant(key_of(i), seed=i))
    assert engine.put_buffer(PAGE) is not None
    assert engine.stats()["host"].entries == 1  # the older one was demoted
    assert engine.get(key_of(0))[1] == variant(key_of(0), seed=0)[1]  # still on disk


def test_a_put_that_fails_gives_its_room_back_and_stores_nothing(engines: Engines) -> None:
    engine = engines.open()
    meta, blob = variant(key_of(1), tokens=16)
    room = engine.put_buffer(BLOB16)
    assert room is not None
    short, _ = variant(key_of(1), tokens=8)  # the metadata of another length
    with pytest.raises(BadRequestError):
        engine.put(short, room.view, into=room)
    assert _used(engine) == 0
    assert engine.variants == 0
    # A put of the same variant running meanwhile: this one conflicts, the room goes back.
    engine._in_flight.add(meta.key)
    room = _read_into(engine, blob)
    with pytest.raises(ConflictError):
        engine.put(meta, room.view, into=room)
    engine._in_flight.discard(meta.key)
    assert _used(engine) == 0
    engine._check()


def test_without_a_host_tier_there_is_no_room_to_read_into(engines: Engines) -> None:
    engine = engines.open(host_bytes=0)
    assert engine.put_buffer(BLOB16) is None
