"""HNSW snapshots of the semantic cache and the reconcile with LMDB at start."""

from __future__ import annotations

import asyncio
import logging
import shutil
import signal
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import urllib3
from prometheus_client.parser import text_string_to_metric_families

from semcached.cachepolicy.categories import CategoryTable
from semcached.clients import SemcachedClient
from semcached.index.docstore import DocumentStore
from semcached.index.hnsw import HnswlibIndex
from semcached.index.lmdb_env import LmdbEnvironment
from semcached.index.vector_index import VectorIndex
from semcached.service.semantic import restore as semantic_restore
from semcached.service.semantic.embedding.disabled import DisabledEmbedder
from semcached.service.semantic.engine import Insert, Lookup, SemanticCache
from semcached.service.semantic.snapshots import SnapshotDirectory
from tests.daemon import DaemonProcess
from tests.service.semantic.kit import DIM, Clock, new_index, unit


def load_index(path: Path, dim: int) -> VectorIndex:
    return HnswlibIndex.load(path, dim=dim)


Factory = Callable[..., SemanticCache]


@pytest.fixture
def make(
    env: LmdbEnvironment, executor: ThreadPoolExecutor, tmp_path: Path, clock: Clock
) -> Callable[..., SemanticCache]:
    def build(snapshots: Path | None = None, interval: float = 0.0) -> SemanticCache:
        return SemanticCache(
            store=DocumentStore(env),
            index_factory=new_index,
            embedder=DisabledEmbedder(DIM),
            categories=CategoryTable(),
            dim=DIM,
            executor=executor,
            clock=clock,
            sweep_interval_s=3600,  # tests sweep by hand
            snapshots=SnapshotDirectory(snapshots or tmp_path / "snapshots", load_index),
            snapshot_interval_s=interval,
        )

    return build


def insert(n: int, **kw: object) -> Insert:
    return Insert(namespace=str(kw.pop("namespace", "t1")), prompt=f"prompt {n}", response=b'"a"',
                  vector=unit(n), **kw)  # type: ignore[arg-type]  # fmt: skip


async def hit_id(engine: SemanticCache, n: int, namespace: str = "t1", **kw: object) -> int | None:
    result = await engine.lookup(Lookup(namespace, vector=unit(n), **kw))  # type: ignore[arg-type]
    return result.entry_id if result.hit else None


async def test_snapshot_written_at_close_and_loaded_at_next_open(
    make: Factory, tmp_path: Path
) -> None:
    engine = make()
    await engine.open()
    ids = {n: (await engine.insert(insert(n))).entry_id for n in range(20)}
    ids |= {n: (await engine.insert(insert(n, category="code"))).entry_id for n in range(20, 25)}
    ids |= {n: (await engine.insert(insert(n, namespace="t2"))).entry_id for n in range(25, 30)}
    await engine.close()
    assert engine.snapshot_stats().written == 3
    assert (tmp_path / "snapshots" / "sem-catalog").exists()

    again = make()
    await again.open()
    try:
        report = again.last_open
        assert report is not None
        assert (report.indexes_loaded, report.indexes_rebuilt) == (3, 0)
        assert (report.entries_from_snapshot, report.entries_added) == (30, 0)
        assert report.entries_removed == 0
        for n, entry_id in ids.items():
            namespace = "t2" if n >= 25 else "t1"
            category = "code" if 20 <= n < 25 else None
            assert await hit_id(again, n, namespace, category=category) == entry_id
        assert again.stats()["default"].entries == 25  # t1 and t2
        assert (await again.insert(insert(99))).entry_id not in ids.values()
    finally:
        await again.close()
    # Nothing changed but one insert: only that index is saved again.
    assert again.snapshot_stats().written == 1


async def test_reconcile_with_a_snapshot_older_than_lmdb(
    make: Factory, tmp_path: Path, clock: Clock, env: LmdbEnvironment
) -> None:
    engine = make()
    await engine.open()
    kept = (await engine.insert(insert(1))).entry_id
    deleted = (await engine.insert(insert(2))).entry_id
    expiring = (await engine.insert(insert(3, ttl_s=60))).entry_id
    assert await engine.snapshot() == 1
    older = tmp_path / "older"
    shutil.copytree(tmp_path / "snapshots", older)
    # After the snapshot: an insert, a delete, and (by the clock) an expiry.
    added = (await engine.insert(insert(4))).entry_id
    added_elsewhere = (await engine.insert(insert(5, namespace="t2"))).entry_id
    assert await engine.delete(deleted)
    await engine.close()
    clock.now += 120

    restarted = make(older)  # as after a crash before the next snapshot
    await restarted.open()
    try:
        report = restarted.last_open
        assert report is not None
        assert (report.indexes_loaded, report.indexes_rebuilt) == (1, 1)  # t2 had no snapshot
        assert report.entries_from_snapshot == 1  # kept
        assert report.entries_added == 2  # added, added_elsewhere
        assert report.entries_removed == 2  # deleted, expiring
        assert report.expired == 1
        assert await hit_id(restarted, 1) == kept
        assert await hit_id(restarted, 4) == added
        assert await hit_id(restarted, 5, "t2") == added_elsewhere
        assert await hit_id(restarted, 2) is None
        assert await hit_id(restarted, 3) is None
        assert restarted.get(deleted) is None
        assert restarted.get(expiring) is None
        assert len(restarted) == 3
        await restarted.sweep_expired()  # also deletes from LMDB what expired while down
        assert DocumentStore(env).get(expiring) is None
    finally:
        await restarted.close()
    assert restarted.snapshot_stats().written == 2  # both indexes changed: saved again


async def test_ids_in_a_snapshot_are_never_reused(make: Factory, tmp_path: Path) -> None:
    engine = make()
    await engine.open()
    await engine.insert(insert(1))
    last = (await engine.insert(insert(2))).entry_id
    await engine.snapshot()
    shutil.copytree(tmp_path / "snapshots", tmp_path / "older")
    await engine.delete(last)  # LMDB's highest id is now below ``last``
    await engine.close()
    shutil.rmtree(tmp_path / "snapshots")
    restarted = make(tmp_path / "older")
    await restarted.open()
    try:
        new = (await restarted.insert(insert(7))).entry_id
        assert new != last  # random ids: a 2**-63 chance of meeting it
        assert await hit_id(restarted, 7) == new
        assert await hit_id(restarted, 2) is None
    finally:
        await restarted.close()


def _truncate(directory: Path) -> None:
    (part,) = directory.glob("sem-*.hnsw")
    part.write_bytes(part.read_bytes()[: part.stat().st_size // 2])


def _flip(directory: Path) -> None:
    (part,) = directory.glob("sem-*.ids")
    data = bytearray(part.read_bytes())
    data[3] ^= 0xFF
    part.write_bytes(bytes(data))


def _drop_manifest(directory: Path) -> None:
    (manifest,) = (
        p for p in directory.glob("sem-*") if "." not in p.name and "catalog" not in p.name
    )
    manifest.unlink()


def _garble_catalog(directory: Path) -> None:
    (directory / "sem-catalog").write_bytes(b"{not json")


@pytest.mark.parametrize("damage", [_truncate, _flip, _drop_manifest, _garble_catalog])
async def test_a_bad_snapshot_falls_back_to_a_rebuild(
    make: Factory,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    damage: Callable[[Path], None],
) -> None:
    engine = make()
    await engine.open()
    ids = [(await engine.insert(insert(n))).entry_id for n in range(30)]
    await engine.close()
    damage(tmp_path / "snapshots")

    monkeypatch.setattr(semantic_restore, "PROGRESS_EVERY_N", 10)
    caplog.set_level(logging.INFO, logger="semcached.service.semantic.restore")
    restarted = make()
    await restarted.open()
    try:
        report = restarted.last_open
        assert report is not None
        assert (report.indexes_loaded, report.indexes_rebuilt) == (0, 1)
        assert report.entries_added == 30
        assert "rebuilding index t1/default: 30 of 30 entries" in caplog.text
        assert "rebuilt index t1/default: 30 entries" in caplog.text
        for n, entry_id in enumerate(ids):
            assert await hit_id(restarted, n) == entry_id
    finally:
        await restarted.close()
    # The rebuilt index is snapshotted again, and loads next time.
    assert restarted.snapshot_stats().written == 1
    third = make()
    await third.open()
    await third.close()
    assert third.last_open is not None
    assert third.last_open.indexes_loaded == 1


async def test_background_snapshots_on_the_interval_only_when_changed(
    make: Factory, tmp_path: Path
) -> None:
    engine = make(interval=0.05)
    await engine.open()
    try:
        await engine.insert(insert(1))
        catalog = tmp_path / "snapshots" / "sem-catalog"
        # The round writes the index snapshot (counted) and then the catalog naming it.
        await _until(lambda: engine.snapshot_stats().written == 1 and catalog.exists())
        await asyncio.sleep(0.3)  # several intervals, nothing changed
        assert engine.snapshot_stats().written == 1
        await engine.insert(insert(2))
        await _until(lambda: engine.snapshot_stats().written == 2)
        assert engine.snapshot_stats().failed == 0
        assert engine.snapshot_stats().last_success_at > 0
    finally:
        await engine.close()


async def _until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 10.0
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def test_a_failed_snapshot_is_counted_and_retried(
    make: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = make()
    await engine.open()
    await engine.insert(insert(1))

    def broken(self: SnapshotDirectory, key: object, index: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(SnapshotDirectory, "save", broken)
    assert await engine.snapshot() == 0
    assert engine.snapshot_stats().failed == 1
    monkeypatch.undo()
    assert await engine.snapshot() == 1
    await engine.close()
    assert engine.snapshot_stats().written == 1


def _metric(url: str, name: str, labels: dict[str, str] | None = None) -> float | None:
    text = urllib3.request("GET", url + "/metrics").data.decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and (labels is None or sample.labels == labels):
                return float(sample.value)
    return None


def test_kill_9_after_a_snapshot_keeps_every_acknowledged_entry(tmp_path: Path) -> None:
    data = tmp_path / "data"
    process = DaemonProcess(data, ["--index.snapshot_interval_s", "0.2"])
    try:
        url = process.wait_ready()
        acknowledged: dict[int, int] = {}
        with SemcachedClient(url) as client:
            for n in range(40):
                acknowledged[n] = client.insert("t1", f"p{n}", n, vector=unit(n, 384)).entry_id
            deadline = time.monotonic() + 20
            ok = {"outcome": "ok"}
            while (_metric(url, "semcached_semantic_snapshots_total", ok) or 0) < 1:
                assert time.monotonic() < deadline, process.log
                time.sleep(0.05)
            for n in range(40, 80):
                acknowledged[n] = client.insert("t1", f"p{n}", n, vector=unit(n, 384)).entry_id
            deleted = acknowledged.pop(0)
            assert client.delete(deleted, "t1")
        process.proc.send_signal(signal.SIGKILL)
        process.proc.wait(10)
    finally:
        process.terminate()

    restarted = DaemonProcess(data, ["--index.snapshot_interval_s", "0"])
    try:
        url = restarted.wait_ready()
        assert "loaded index t1/default from its snapshot" in restarted.log
        assert "rebuilding index" not in restarted.log
        assert _metric(url, "semcached_semantic_open_indexes", {"outcome": "loaded"}) == 1
        from_lmdb = _metric(url, "semcached_semantic_open_entries", {"source": "lmdb"})
        from_snapshot = _metric(url, "semcached_semantic_open_entries", {"source": "snapshot"})
        assert from_lmdb is not None
        assert from_snapshot is not None
        # An interval snapshot may have caught only part of the first 40 inserts (it
        # runs concurrently with them); whatever it missed came from LMDB.
        assert from_snapshot >= 1
        assert from_lmdb + from_snapshot == 79
        assert _metric(url, "semcached_semantic_open_seconds") is not None
        with SemcachedClient(url) as client:
            for n, entry_id in acknowledged.items():
                assert client.get(entry_id, "t1").entry_id == entry_id
                hit = client.lookup("t1", vector=unit(n, 384))
                assert hit.hit
                assert hit.entry_id == entry_id
            assert not client.lookup("t1", vector=unit(0, 384)).hit
    finally:
        restarted.terminate()
