"""The outbox and the change records: written with the change, bounded, round trips."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from semcached.index.docstore import Document, DocumentStore, decode_record
from semcached.index.lmdb_env import LmdbEnvironment
from semcached.index.shared.outbox import Outbox, ReplicaState, StreamOffset
from semcached.index.shared.records import (
    Change,
    MalformedChange,
    change_from_event,
    pack_feedback,
    pack_record,
    unpack_feedback,
    unpack_record,
)

DIM = 4


def doc(entry_id: int, namespace: str = "ns", prompt: str = "p") -> Document:
    return Document(
        entry_id=entry_id,
        namespace=namespace,
        category="default",
        partition="",
        model="m",
        prompt=prompt,
        response=b'{"a": 1}',
        response_format="json",
        created_at=100.0,
        expires_at=200.0,
        hit_count=0,
        last_hit_at=0.0,
        vector_dim=DIM,
        tokens=b"tok",
    )


def vec(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=DIM).astype(np.float32)


def test_puts_and_deletes_are_queued_only_when_shipped(env: LmdbEnvironment) -> None:
    outbox = Outbox(env)
    store = DocumentStore(env, outbox=outbox, group_commit=False)
    store.put_many([(doc(1), vec(1))], ship=True)
    store.put_many([(doc(2), vec(2))])  # another daemon's entry: not shipped again
    store.delete_many([1, 2], ship=True, at=150.0)
    store.put_many([(doc(3), vec(3))], ship=True)
    store.delete_many([3])  # an eviction: each daemon's own
    changes = [c for _, c in outbox.peek(10)]
    assert [(c.op, c.entry_id) for c in changes] == [
        ("put", 1),
        ("del", 1),
        ("del", 2),
        ("put", 3),
    ]
    put = changes[0]
    assert (put.at, put.expires_at, put.namespace) == (100.0, 200.0, "ns")
    document, vector = decode_record(1, put.record, DIM)
    assert document == doc(1)
    np.testing.assert_array_equal(vector, vec(1))
    outbox.shipped(outbox.peek(2)[-1][0])
    assert [c.entry_id for _, c in outbox.peek(10)] == [2, 3]
    assert len(outbox) == 2
    # Shipped records leave with the next append's commit, or a compaction.
    store.put_many([(doc(4), vec(4))], ship=True)
    assert env.read(lambda txn: txn.stat(env.database(b"shared.outbox"))["entries"]) == 3
    outbox.shipped(outbox.peek(10)[-1][0])
    assert len(outbox) == 0
    assert outbox.peek(10) == []
    assert outbox.compact() == 3
    assert outbox.compact() == 0
    store.put_many([(doc(5), vec(5))], ship=True)
    assert [c.entry_id for _, c in outbox.peek(10)] == [5]


def test_a_failed_commit_queues_nothing(env: LmdbEnvironment) -> None:
    outbox = Outbox(env)
    store = DocumentStore(env, outbox=outbox, group_commit=False)
    with pytest.raises(ValueError, match="zero"):
        store.put_many([(doc(1), vec(1)), (doc(2), np.zeros(DIM, np.float32))], ship=True)
    assert len(outbox) == 0


def test_the_bound_drops_the_oldest(env: LmdbEnvironment) -> None:
    outbox = Outbox(env, max_records=3)
    store = DocumentStore(env, outbox=outbox, group_commit=False)
    for i in range(1, 6):
        store.put_many([(doc(i), vec(i))], ship=True)
    assert [c.entry_id for _, c in outbox.peek(10)] == [3, 4, 5]
    assert outbox.dropped == 2
    assert store.count() == 5  # the local store keeps everything


def test_order_is_commit_order_across_reopen(tmp_path: Path) -> None:
    env = LmdbEnvironment(tmp_path / "db", initial_map_bytes=1 << 20, max_map_bytes=1 << 26)
    DocumentStore(env, outbox=Outbox(env), group_commit=False).put_many(
        [(doc(1), vec(1)), (doc(2), vec(2))], ship=True
    )
    env.close()
    env = LmdbEnvironment(tmp_path / "db", initial_map_bytes=1 << 20, max_map_bytes=1 << 26)
    outbox = Outbox(env)
    DocumentStore(env, outbox=outbox, group_commit=False).delete_many([1], ship=True)
    assert [(c.op, c.entry_id) for _, c in outbox.peek(10)] == [
        ("put", 1),
        ("put", 2),
        ("del", 1),
    ]
    env.close()


def test_replica_state(env: LmdbEnvironment) -> None:
    state = ReplicaState(env)
    node = state.node_id()
    assert node == ReplicaState(env).node_id()
    assert len(node) == 16
    state.save_offsets({"a": StreamOffset(b"1-0", 1), "b/é": StreamOffset(b"2-5", 7)})
    state.save_offsets({"a": StreamOffset(b"3-1", 9)})
    assert state.offsets() == {"a": (b"3-1", 9), "b/é": (b"2-5", 7)}
    state.forget_offset("a")
    assert state.offsets() == {"b/é": (b"2-5", 7)}


@given(
    op=st.sampled_from(["put", "del", "fb"]),
    namespace=st.text(min_size=0, max_size=40),
    entry_id=st.integers(1, (1 << 63) - 1),
    at=st.floats(0, 1e10),
    expires_at=st.one_of(st.just(math.inf), st.floats(0, 1e10)),
    document=st.binary(min_size=1, max_size=64),
    vector=st.binary(min_size=4, max_size=64).filter(lambda b: len(b) % 4 == 0),
    tokens=st.binary(max_size=32),
)
def test_change_round_trips(
    *,
    op: str,
    namespace: str,
    entry_id: int,
    at: float,
    expires_at: float,
    document: bytes,
    vector: bytes,
    tokens: bytes,
) -> None:
    record = b""
    if op == "put":
        record = pack_record(document, vector, tokens)
        assert unpack_record(record) == (document, vector, tokens)
    elif op == "fb":
        record = pack_feedback("code", 0.93, False, True)
        assert unpack_feedback(record) == ("code", 0.93, False, True)
    change = Change(op, namespace, entry_id, at, expires_at, record)  # type: ignore[arg-type]
    assert Change.from_outbox(change.outbox_value()) == (
        change if op == "put" else Change(op, namespace, entry_id, at, expires_at, record)  # type: ignore[arg-type]
    )
    origin, back = change_from_event(namespace, change.event("node1"))
    assert origin == "node1"
    assert (back.op, back.entry_id, back.at, back.record) == (op, entry_id, at, record)


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {b"v": b"2", b"op": b"put"},
        {b"v": b"1", b"op": b"nope", b"id": b"1", b"at": b"1", b"o": b"x"},
        {b"v": b"1", b"op": b"del", b"id": b"0", b"at": b"1", b"o": b"x"},
        {b"v": b"1", b"op": b"del", b"id": b"abc", b"at": b"1", b"o": b"x"},
        {b"v": b"1", b"op": b"del", b"id": b"1", b"at": b"nan", b"o": b"x"},
        {b"v": b"1", b"op": b"put", b"id": b"1", b"at": b"1", b"o": b"x", b"rec": b"\x01"},
        {b"v": b"1", b"op": b"fb", b"id": b"1", b"at": b"1", b"o": b"x", b"rec": b"\xff" * 10},
        {b"v": b"1", b"op": b"del", b"id": b"1", b"at": b"1", b"o": b"\xff\xfe"},
    ],
)
def test_malformed_events_are_refused(fields: dict[bytes, bytes]) -> None:
    with pytest.raises(MalformedChange):
        change_from_event("ns", fields)


def test_records_that_do_not_decode_are_refused() -> None:
    good = pack_record(b"doc", np.ones(DIM, "<f4").tobytes(), b"")
    with pytest.raises(MalformedChange):
        decode_record(1, good, DIM)  # not a document
    with pytest.raises(MalformedChange):
        decode_record(1, pack_record(b"\x01" * 60, np.ones(DIM, "<f4").tobytes(), b""), DIM)
