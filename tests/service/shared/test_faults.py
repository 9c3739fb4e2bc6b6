"""The shared tier under faults: Redis stopped under load, a Sentinel failover, a
Cluster slot move, poisoned stream events."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

import pytest
import redis

from semcached.clients.sync import SemcachedClient
from semcached.errors import NotFoundError, SemcachedError
from tests.redis_servers import RedisCluster, RedisSentinel, RedisServer
from tests.service.shared.sidecars import Sidecar, eventually, stop_all, unit


def _held(sidecar: Sidecar, namespace: str, ids: list[int]) -> list[int]:
    """The ids of ``ids`` the sidecar does not hold."""
    missing = []
    for entry_id in ids:
        try:
            sidecar.api.get(entry_id, namespace)
        except NotFoundError:
            missing.append(entry_id)
    return missing


def _metric(sidecar: Sidecar, name: str) -> float:
    text = sidecar.api.metrics()
    match = re.search(rf"^{name}(?:\{{[^}}]*\}})? ([0-9.e+-]+)$", text, re.MULTILINE)
    assert match is not None, name
    return float(match.group(1))


class _Writer(threading.Thread):
    """Inserts into A until stopped; keeps the ids A acknowledged."""

    def __init__(self, url: str, namespace: str = "docs", seed: int = 50_000) -> None:
        super().__init__()
        self.url = url
        self.namespace = namespace
        self.seed = seed
        self.acknowledged: list[int] = []
        self.failed = 0
        self.halt = threading.Event()

    def run(self) -> None:
        with SemcachedClient(self.url, timeout_s=5) as client:
            i = 0
            while not self.halt.is_set():
                try:
                    result = client.insert(self.namespace, f"w{i}", i, vector=unit(self.seed + i))
                    self.acknowledged.append(result.entry_id)
                except SemcachedError:
                    self.failed += 1
                i += 1
                time.sleep(0.005)


@pytest.mark.slow  # 40 s: CI runs it with the slow suite
def test_redis_stopped_30_s_under_load(tmp_path: Path) -> None:
    """Redis (with the append-only file a production shared tier runs with: what it
    acknowledged survives its restart) is stopped for 30 s while A takes inserts."""
    redis_server = RedisServer(tmp_path / "redis", ["appendonly yes", "appendfsync always"])
    a = Sidecar(tmp_path / "a", redis_server.url)
    b = Sidecar(tmp_path / "b", redis_server.url)
    writer = _Writer(a.process.wait_listening())  # type: ignore[union-attr]
    try:
        before = a.api.insert("docs", "before", "x", vector=unit(1)).entry_id
        eventually(lambda: b.hit("docs", 1) == before)
        writer.start()
        time.sleep(1.0)
        redis_server.stop()
        down_at = len(writer.acknowledged)
        time.sleep(30)
        during = len(writer.acknowledged) - down_at
        # Both keep serving from local state: A's writes, B's reads.
        assert during > 0
        assert writer.failed == 0
        assert b.hit("docs", 1) == before
        assert _metric(a, "semcached_shared_outbox_records") > 0
        redis_server.start(redis_server.port)
        time.sleep(1.0)
        writer.halt.set()
        writer.join(30)
        acknowledged = writer.acknowledged
        eventually(
            lambda: not _held(b, "docs", acknowledged[-20:]),
            timeout=60,
            what="B catches up after Redis is back",
        )
        missing = _held(b, "docs", acknowledged)
        print(
            f"redis down 30 s: {len(acknowledged)} acknowledged ({during} while down), "
            f"{len(acknowledged) - len(missing)} visible on B"
        )
        assert missing == []
        eventually(lambda: _metric(a, "semcached_shared_outbox_records") == 0)
        assert "shared tier unreachable" in a.process.log  # type: ignore[union-attr]
    finally:
        writer.halt.set()
        stop_all(a, b, redis_server)


def test_poisoned_events_are_skipped_and_counted(tmp_path: Path, redis_server: RedisServer) -> None:
    a = Sidecar(tmp_path / "a", redis_server.url)
    b = Sidecar(tmp_path / "b", redis_server.url)
    try:
        first = a.api.insert("docs", "first", "1", vector=unit(1)).entry_id
        eventually(lambda: b.hit("docs", 1) == first)
        raw = redis.Redis.from_url(redis_server.url)
        stream = next(k for k in raw.keys("semcached:*:events"))
        good = raw.xrange(stream, count=1)[0][1]
        raw.xadd(stream, {b"garbage": b"\xff"})
        raw.xadd(stream, {**good, b"o": b"someone-else", b"rec": b"\x00\x01"})
        raw.xadd(stream, {**good, b"o": b"someone-else", b"id": b"-5"})
        torn = dict(good)
        torn[b"o"] = b"someone-else"
        torn[b"id"] = b"77"
        torn[b"rec"] = good[b"rec"][:-7]  # the vector cut short
        raw.xadd(stream, torn)
        second = a.api.insert("docs", "second", "2", vector=unit(2)).entry_id
        eventually(lambda: b.hit("docs", 2) == second, what="B goes on past the poison")
        assert _metric(b, "semcached_shared_malformed_total") == 4
        assert b.process is not None
        assert b.process.proc.poll() is None
    finally:
        stop_all(a, b)


def test_sentinel_failover(tmp_path: Path) -> None:
    sentinel = RedisSentinel(tmp_path / "sentinel")
    # WAIT for the replica: a failover then loses no shipped change.
    args = ["--shared.wait_replicas", "1"]
    a = Sidecar(tmp_path / "a", sentinel.url, args)
    b = Sidecar(tmp_path / "b", sentinel.url, args)
    try:
        before = a.api.insert("docs", "before", "x", vector=unit(1)).entry_id
        eventually(lambda: b.hit("docs", 1) == before)
        old = sentinel.master_port()
        sentinel.sentinel.client().execute_command("SENTINEL", "FAILOVER", sentinel.service)
        eventually(lambda: sentinel.master_port() != old, what="Sentinel promoted the replica")
        after = a.api.insert("docs", "after", "y", vector=unit(2)).entry_id
        eventually(lambda: b.hit("docs", 2) == after, timeout=30, what="sharing after failover")
        c = Sidecar(tmp_path / "c", sentinel.url)
        try:
            # The old master takes writes until Sentinel demotes it; A's WAIT keeps a
            # batch in its outbox until a replica holds it, so it reaches the new
            # master too, in a few seconds.
            eventually(lambda: c.hit("docs", 1) == before and c.hit("docs", 2) == after)
        finally:
            c.stop()
    finally:
        stop_all(a, b, sentinel)


def test_cluster_slot_move(tmp_path: Path, redis_cluster: RedisCluster) -> None:
    a = Sidecar(tmp_path / "a", redis_cluster.url)
    b = Sidecar(tmp_path / "b", redis_cluster.url)
    try:
        first = [a.api.insert(f"ns{i % 8}", f"p{i}", i, vector=unit(i)).entry_id for i in range(80)]
        eventually(lambda: [b.hit(f"ns{i % 8}", i) for i in range(80)] == first)
        redis_cluster.move_slots(0, 1, 3000)
        redis_cluster.move_slots(2, 0, 3000)
        second = [
            a.api.insert(f"ns{i % 8}", f"q{i}", i, vector=unit(1000 + i)).entry_id
            for i in range(80)
        ]
        eventually(
            lambda: [b.hit(f"ns{i % 8}", 1000 + i) for i in range(80)] == second,
            timeout=30,
            what="B after the slots moved",
        )
        c = Sidecar(tmp_path / "c", redis_cluster.url)
        try:
            assert [c.hit(f"ns{i % 8}", i) for i in range(80)] == first
            assert [c.hit(f"ns{i % 8}", 1000 + i) for i in range(80)] == second
        finally:
            c.stop()
    finally:
        stop_all(a, b)


def test_a_sidecar_started_while_redis_is_down(tmp_path: Path) -> None:
    """It turns ready on its local state at once, and shares once Redis is up."""
    redis_server = RedisServer(tmp_path / "redis")
    redis_server.stop()
    a = Sidecar(tmp_path / "a", redis_server.url)  # ready well before bootstrap_timeout_s
    try:
        local = a.api.insert("docs", "while down", "x", vector=unit(1)).entry_id
        assert a.hit("docs", 1) == local
        assert "cannot reach the shared tier" in a.process.log  # type: ignore[union-attr]
        redis_server.start(redis_server.port)
        b = Sidecar(tmp_path / "b", redis_server.url)
        try:
            eventually(lambda: b.hit("docs", 1) == local, timeout=30, what="shipped late")
            later = b.api.insert("docs", "later", "y", vector=unit(2)).entry_id
            eventually(lambda: a.hit("docs", 2) == later, timeout=30, what="A follows")
        finally:
            b.stop()
    finally:
        stop_all(a, redis_server)
