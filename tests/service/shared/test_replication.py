"""Sidecars sharing what they learned through a real Redis: inserts, deletes, purges,
tenants, bootstrap, and a daemon killed mid-write."""

from __future__ import annotations

import re
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from semcached.clients.sync import SemcachedClient
from semcached.errors import NotFoundError, PermissionDeniedError, SemcachedError
from tests.redis_servers import RedisCluster, RedisServer
from tests.service.http.tenancy_kit import TOKENS, tokens_file_text
from tests.service.shared.sidecars import Sidecar, eventually, stop_all, unit


@pytest.fixture
def pair(tmp_path: Path, redis_server: RedisServer) -> Iterator[tuple[Sidecar, Sidecar]]:
    a = Sidecar(tmp_path / "a", redis_server.url)
    b = Sidecar(tmp_path / "b", redis_server.url)
    yield a, b
    stop_all(a, b)


def test_insert_on_a_hits_on_b(pair: tuple[Sidecar, Sidecar]) -> None:
    a, b = pair
    entry = a.api.insert("docs", "what is a cache", {"answer": 42}, vector=unit(1))
    eventually(lambda: b.hit("docs", 1) == entry.entry_id, what="B sees A's insert")
    got = b.api.get(entry.entry_id, "docs")
    assert got is not None
    assert got.response == {"answer": 42}
    assert got.prompt == "what is a cache"
    # The exact tier too: B answers the same text without a vector.
    exact = b.api.lookup("docs", "what is a cache", exact_only=True)
    assert exact.hit
    assert exact.entry_id == entry.entry_id
    # And back: B's insert reaches A.
    other = b.api.insert("docs", "second", "two", vector=unit(2))
    eventually(lambda: a.hit("docs", 2) == other.entry_id, what="A sees B's insert")
    # B met the namespace after A's insert: that came in B's bootstrap of it. A knew it
    # (its own), so B's insert came through the stream, with a lag.
    assert "semcached_shared_bootstraps_total 1.0" in b.api.metrics()
    metrics = a.api.metrics()
    assert "semcached_shared_replication_lag_seconds_count 1.0" in metrics
    assert 'semcached_shared_applied_total{op="put"} 1.0' in metrics
    assert "semcached_shared_redis_up 1.0" in metrics


def test_delete_and_purge_propagate(pair: tuple[Sidecar, Sidecar]) -> None:
    a, b = pair
    first = a.api.insert("docs", "one", "1", vector=unit(1))
    a.api.insert("docs", "two", "2", vector=unit(2), partition="p")
    a.api.insert("other", "three", "3", vector=unit(3))
    eventually(lambda: b.hit("other", 3) is not None and b.hit("docs", 1) is not None)
    assert b.api.delete(first.entry_id, "docs")
    eventually(lambda: a.hit("docs", 1) is None, what="A applies B's delete")
    assert a.api.purge("docs") == 1
    eventually(lambda: b.api.lookup("docs", vector=unit(2), partition="p").hit is False)
    assert b.hit("other", 3) is not None  # another namespace: untouched


def test_feedback_propagates(pair: tuple[Sidecar, Sidecar]) -> None:
    """A report on B counts in A's calibration too; a wrong hit is removed on both."""
    a, b = pair
    kept = a.api.insert("docs", "kept", "1", vector=unit(1)).entry_id
    wrong = a.api.insert("docs", "wrong", "2", vector=unit(2)).entry_id
    eventually(lambda: b.hit("docs", 1) == kept and b.hit("docs", 2) == wrong)
    right_hit = b.api.lookup("docs", vector=unit(1))
    wrong_hit = b.api.lookup("docs", vector=unit(2))
    assert right_hit.lookup_id is not None
    assert wrong_hit.lookup_id is not None
    b.api.feedback(right_hit.lookup_id, correct=True)
    assert b.api.feedback(wrong_hit.lookup_id, correct=False).removed

    def reports(sidecar: Sidecar, correct: str) -> float:
        labels = f'category="default",correct="{correct}"'
        pattern = rf"^semcached_semantic_feedback_reports_total{{{labels}}} (\S+)$"
        match = re.search(pattern, sidecar.api.metrics(), re.MULTILINE)
        return 0.0 if match is None else float(match.group(1))

    eventually(lambda: reports(a, "true") == 1 and reports(a, "false") == 1, what="A counts")
    eventually(lambda: a.hit("docs", 2) is None, what="A removes the wrong hit")
    assert a.hit("docs", 1) == kept


def test_ttl_carries_over(pair: tuple[Sidecar, Sidecar]) -> None:
    a, b = pair
    entry = a.api.insert("docs", "soon gone", "x", vector=unit(5), ttl_s=3600)
    eventually(lambda: b.hit("docs", 5) is not None)
    got = b.api.get(entry.entry_id, "docs")
    assert got is not None
    assert got.expires_at == pytest.approx(entry.expires_at)


def test_a_new_sidecar_bootstraps_warm(tmp_path: Path, redis_server: RedisServer) -> None:
    a = Sidecar(tmp_path / "a", redis_server.url)
    try:
        ids = [a.api.insert("docs", f"p{i}", i, vector=unit(100 + i)).entry_id for i in range(300)]
        removed = a.api.insert("docs", "gone", "x", vector=unit(999)).entry_id
        a.api.delete(removed, "docs")
        outbox_empty = redis.Redis.from_url(redis_server.url)
        eventually(
            lambda: outbox_empty.xlen(_stream(outbox_empty)) >= 302, what="A shipped everything"
        )
        # Ready means bootstrapped: every entry is there at the first request.
        c = Sidecar(tmp_path / "c", redis_server.url)
        try:
            assert [c.hit("docs", 100 + i) for i in range(300)] == ids
            assert c.hit("docs", 999) is None
            assert "bootstrapped from the shared tier: 300 entries" in c.process.log  # type: ignore[union-attr]
        finally:
            c.stop()
    finally:
        a.stop()


def _stream(client: redis.Redis) -> str:
    streams = [k.decode() for k in client.keys("semcached:*:events")]
    assert len(streams) == 1, streams
    return streams[0]


def test_tenants_stay_apart_across_sidecars(tmp_path: Path, redis_server: RedisServer) -> None:
    tokens = tmp_path / "tokens.toml"
    tokens.write_text(tokens_file_text())
    args = ["--auth.tokens_file", str(tokens)]
    a = Sidecar(tmp_path / "a", redis_server.url, args)
    b = Sidecar(tmp_path / "b", redis_server.url, args)
    try:
        acme_a = SemcachedClient(a.process.wait_listening(), token=TOKENS["acme_rw"])  # type: ignore[union-attr]
        acme_b = SemcachedClient(b.process.wait_listening(), token=TOKENS["acme_rw"])  # type: ignore[union-attr]
        bob_b = SemcachedClient(b.process.wait_listening(), token=TOKENS["bob"])  # type: ignore[union-attr]
        entry = acme_a.insert("acme", "secret plan", "acme's", vector=unit(7))
        eventually(lambda: acme_b.lookup("acme", vector=unit(7)).hit, what="acme on B")
        # Bob, on the daemon that received acme's entry: not his namespace, not his id.
        with pytest.raises(PermissionDeniedError):
            bob_b.lookup("acme", vector=unit(7))
        with pytest.raises(NotFoundError):
            bob_b.get(entry.entry_id, "bobco")
        assert not bob_b.lookup("bobco", vector=unit(7), threshold=0.5).hit
        for client in (acme_a, acme_b, bob_b):
            client.close()
    finally:
        stop_all(a, b)


def test_kill_9_during_inserts_loses_no_acknowledged_write(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """A is killed while a writer is part way through 10,000 inserts; every insert it
    acknowledged reaches B once A is back (its outbox survived the crash)."""
    a = Sidecar(tmp_path / "a", redis_server.url)
    b = Sidecar(tmp_path / "b", redis_server.url)
    acknowledged: list[int] = []
    stop = threading.Event()

    def write() -> None:
        client = SemcachedClient(a.process.wait_listening(), timeout_s=5)  # type: ignore[union-attr]
        try:
            for i in range(10_000):
                if stop.is_set():
                    return
                result = client.insert("docs", f"k{i}", i, vector=unit(10_000 + i))
                acknowledged.append(result.entry_id)
        except SemcachedError:
            return  # the daemon died under us: what was acknowledged is in the list
        finally:
            client.close()

    writer = threading.Thread(target=write)
    try:
        writer.start()
        eventually(lambda: len(acknowledged) >= 1500, timeout=120, what="inserts under way")
        a.stop(signal.SIGKILL)
        stop.set()
        writer.join(30)
        assert 1500 <= len(acknowledged) < 10_000
        a.start()  # ships what its outbox still held
        eventually(
            lambda: _held(b, acknowledged[-20:]), timeout=60, what="the last inserts reach B"
        )
        missing = [i for i in acknowledged if not _held(b, [i])]
        print(
            f"kill -9 during 10,000 inserts: {len(acknowledged)} acknowledged before the kill, "
            f"{len(acknowledged) - len(missing)} visible on B"
        )
        assert missing == []
    finally:
        stop.set()
        stop_all(a, b)


def _held(sidecar: Sidecar, ids: list[int]) -> bool:
    try:
        for entry_id in ids:
            sidecar.api.get(entry_id, "docs")
    except NotFoundError:
        return False
    return True


def test_on_a_redis_cluster(tmp_path: Path, redis_cluster: RedisCluster) -> None:
    a = Sidecar(tmp_path / "a", redis_cluster.url)
    b = Sidecar(tmp_path / "b", redis_cluster.url)
    try:
        ids = [a.api.insert(f"ns{i % 5}", f"p{i}", i, vector=unit(i)).entry_id for i in range(100)]
        eventually(lambda: [b.hit(f"ns{i % 5}", i) for i in range(100)] == ids, what="B sees all")
        c = Sidecar(tmp_path / "c", redis_cluster.url)
        try:
            assert [c.hit(f"ns{i % 5}", i) for i in range(100)] == ids
        finally:
            c.stop()
    finally:
        stop_all(a, b)


def test_over_tls_with_an_acl_user(tmp_path: Path) -> None:
    server = RedisServer(
        tmp_path / "tls", ["user app on >pw ~* +@all", "user default off"], tls=True
    )
    url = f"rediss://app:pw@127.0.0.1:{server.port}?ssl_ca_certs={server.ca_file}"
    a = Sidecar(tmp_path / "a", url)
    b = Sidecar(tmp_path / "b", url)
    try:
        entry = a.api.insert("docs", "secure", "x", vector=unit(3)).entry_id
        eventually(lambda: b.hit("docs", 3) == entry, what="shared over TLS")
        assert "pw@" not in a.process.log  # type: ignore[union-attr]
    finally:
        stop_all(a, b, server)


def test_a_sidecar_behind_the_stream_retention_bootstraps_again(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """B is down while A writes far more than the stream keeps: B's offset points
    into trimmed history, so it reloads the namespace from the records."""
    args = ["--shared.stream_max_len", "100"]
    a = Sidecar(tmp_path / "a", redis_server.url, args)
    b = Sidecar(tmp_path / "b", redis_server.url, args)
    try:
        first = a.api.insert("docs", "first", "x", vector=unit(1)).entry_id
        eventually(lambda: b.hit("docs", 1) == first)
        b.stop()
        ids = [a.api.insert("docs", f"p{i}", i, vector=unit(100 + i)).entry_id for i in range(600)]
        raw = redis.Redis.from_url(redis_server.url)
        stream = next(iter(raw.keys("semcached:*:events")))
        eventually(lambda: raw.xinfo_stream(stream)["entries-added"] >= 601)
        assert raw.xlen(stream) < 600  # trimmed
        b.start()
        assert [b.hit("docs", 100 + i) for i in range(600)] == ids
        assert b.hit("docs", 1) == first
        assert "trimmed past this daemon's offset" in b.process.log  # type: ignore[union-attr]
    finally:
        stop_all(a, b)
