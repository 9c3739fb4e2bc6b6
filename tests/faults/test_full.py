"""A real daemon whose stores fill: its LMDB maps at their caps, then a filesystem with
no space left. Writes evict and go on or get a clear 507, reads keep working, and
after a restart everything acknowledged and not evicted is there."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from semcached.clients import SemcachedClient
from semcached.errors import InsufficientStorageError, SemcachedError
from tests.faults.kit import (
    NAMESPACE,
    Writers,
    key,
    put_chunk,
    report,
    start,
    tensor,
    unit,
    write_config,
)

pytestmark = pytest.mark.slow

MiB = 1 << 20
RESPONSE = "r" * 3000  # one LMDB overflow page per entry
REFUSED = re.compile(r"refused to \w+: (.*?) \(")


def insert(client: SemcachedClient, n: int) -> int:
    return client.insert(NAMESPACE, f"prompt {n}", RESPONSE, vector=unit(n)).entry_id


class Reader:
    """Looks up entries written earlier while the writers run; counts the answers."""

    def __init__(self, url: str, seeds: Callable[[], list[int]]) -> None:
        self.answered = self.failed = self.hits = 0
        self._url, self._seeds = url, seeds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        with SemcachedClient(self._url, timeout_s=30) as client:
            while not self._stop.is_set():
                seeds = self._seeds()
                for n in seeds[-50:] or [0]:
                    try:
                        self.hits += client.lookup(NAMESPACE, vector=unit(n)).hit
                        self.answered += 1
                    except SemcachedError:
                        self.failed += 1

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(60)


def put_small_chunk(client: SemcachedClient, n: int) -> int:
    put_chunk(client, n, 256)  # 64 KiB
    return n


def run(
    url: str, semantic: Writers, kv: Writers, counts: tuple[int, int], *, answered: bool = False
) -> Reader:
    """Write until ``counts`` (semantic, KV) writes are acknowledged (or, with
    ``answered``, answered either way), looking up earlier entries all along."""
    reader = Reader(url, semantic.acknowledged_seeds)
    try:
        semantic.start()
        kv.start()
        for writers, count in zip((semantic, kv), counts, strict=True):
            if answered:
                writers.wait_for_attempts(count)
            else:
                writers.wait_for(count)
        semantic.stop()
        kv.stop()
    finally:
        reader.stop()
    return reader


def test_at_the_map_caps_writes_evict_reads_go_on_and_restarts_keep_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, disk_bytes=64 * MiB, disk_max_map_bytes=2 * MiB)
    data = tmp_path / "data"
    caps = ("--storage.lmdb_initial_map_bytes", str(MiB))
    caps += ("--storage.lmdb_max_map_bytes", str(2 * MiB))
    daemon = start(data, config, *caps)
    url = daemon.wait_listening()
    semantic = Writers(url, insert, threads=4)
    kv = Writers(url, put_small_chunk, threads=2)
    # ~3x what the 2 MiB semantic map holds; 64 KiB chunks: ~3x the KV map.
    reader = run(url, semantic, kv, (1500, 100))
    with SemcachedClient(url) as client:
        stats = client.stats()["default"]
        disk = client.kv_stats()["disk"]
        with pytest.raises(InsufficientStorageError) as too_big:
            client.insert(NAMESPACE, "too big", "h" * (3 * MiB), vector=unit(0))
        ready = client.ready()
        newest = semantic.acknowledged[-20:]  # in acknowledgement order: ids are random
    daemon.terminate(signal.SIGKILL)

    again = start(data, config, *caps)
    try:
        with SemcachedClient(again.wait_listening()) as client:
            after = client.stats()["default"].entries
            present = sum(1 for i in semantic.acknowledged if _has_entry(client, i))
            newest_present = sum(1 for i in newest if _has_entry(client, i))
            kv_after = client.kv_stats()["disk"].entries
            newest_chunks = [_chunk_whole(client, i, 256) for i in sorted(kv.acknowledged)[-5:]]
    finally:
        again.terminate()
    report(
        capsys,
        "LMDB at the map cap",
        semantic_acknowledged=len(semantic.acknowledged),
        semantic_evicted=stats.evictions,
        semantic_present=present,
        semantic_refused=semantic.refused,
        kv_acknowledged=len(kv.acknowledged),
        kv_evicted=disk.evictions,
        kv_present=kv_after,
        kv_refused=kv.refused,
        reads=f"{reader.answered} answered, {reader.failed} failed, {reader.hits} hits",
        too_big=too_big.value.status,
        readyz=f"{ready.status} storage_full={list(ready.storage_full)}",
    )
    assert semantic.refused == {}
    assert kv.refused == {}
    assert stats.evictions > 0
    assert disk.evictions > 0
    assert present == after == stats.entries == len(semantic.acknowledged) - stats.evictions
    assert newest_present == len(newest)
    assert kv_after == disk.entries == len(kv.acknowledged) - disk.evictions
    assert newest_chunks == [True] * 5
    assert reader.failed == 0
    assert reader.hits > 0
    assert (too_big.value.status, too_big.value.code) == (507, "store_full")
    assert ready.ready
    assert ready.storage_full == ("semantic",)


def _has_entry(client: SemcachedClient, entry_id: int) -> bool:
    try:
        client.get(entry_id, NAMESPACE)
    except SemcachedError:
        return False
    return True


def _chunk_whole(client: SemcachedClient, i: int, tokens: int) -> bool:
    try:
        chunk = client.get_chunk(key(i), transfer="http")
    except SemcachedError:
        return False
    return bool(np.array_equal(chunk.array(), tensor(i, tokens)))


def fill(directory: Path) -> Path:
    """Take every free block of ``directory``'s filesystem; the filler file."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (MiB, 4096):
            with contextlib.suppress(OSError):
                while os.write(fd, b"\0" * size):
                    pass
    finally:
        os.close(fd)
    return filler


def test_a_full_filesystem_gives_507_keeps_reads_and_loses_nothing_acknowledged(
    small_filesystem: Callable[[int], Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    disk = small_filesystem(64 * MiB)
    config = write_config(tmp_path, disk_bytes=32 * MiB)
    data = disk / "data"
    daemon = start(data, config)
    url = daemon.wait_listening()
    semantic = Writers(url, insert, threads=4)
    kv = Writers(url, put_small_chunk, threads=2)
    run(url, semantic, kv, (300, 40))
    before = (len(semantic.acknowledged), len(kv.acknowledged))
    filler = fill(disk)  # another process took the rest of the disk

    semantic = Writers(
        url, insert, first=100_000, acknowledged=semantic.acknowledged, seeds=semantic.seeds
    )
    kv = Writers(url, put_small_chunk, threads=2, first=100_000, acknowledged=kv.acknowledged)
    reader = run(url, semantic, kv, (300, 40), answered=True)
    with SemcachedClient(url) as client:
        with pytest.raises(InsufficientStorageError) as too_big:
            client.insert(NAMESPACE, "too big", "h" * (3 * MiB), vector=unit(0))
        ready = client.ready()
        stats = client.stats()["default"]
        kv_stats = client.kv_stats()["disk"]
    stopped = daemon.terminate()  # a clean stop, though snapshots cannot be written
    why = Counter(m.group(1) for m in map(REFUSED.search, daemon.lines) if m)
    filler.unlink()

    again = start(data, config)
    try:
        with SemcachedClient(again.wait_listening()) as client:
            present = sum(1 for i in semantic.acknowledged if _has_entry(client, i))
            after = client.stats()["default"].entries
            chunks = [_chunk_whole(client, i, 256) for i in kv.acknowledged]
    finally:
        again.terminate()
    report(
        capsys,
        "disk full",
        semantic_acknowledged=f"{before[0]} before the disk filled, "
        f"{len(semantic.acknowledged) - before[0]} after",
        semantic_refused=semantic.refused,
        refusals=dict(why),
        semantic_evicted=stats.evictions,
        semantic_present=present,
        kv_acknowledged=f"{before[1]} before, {len(kv.acknowledged) - before[1]} after",
        kv_refused=kv.refused,
        kv_evicted=kv_stats.evictions,
        kv_present=chunks.count(True),
        reads=f"{reader.answered} answered, {reader.failed} failed, {reader.hits} hits",
        too_big=too_big.value.status,
        readyz=f"{ready.status} storage_full={list(ready.storage_full)}",
        exit_status=stopped,
    )
    assert set(semantic.refused) <= {507}
    assert set(kv.refused) <= {507}
    assert present == after == stats.entries == len(semantic.acknowledged) - stats.evictions
    assert chunks.count(True) == kv_stats.entries == len(kv.acknowledged) - kv_stats.evictions
    assert reader.failed == 0
    assert reader.hits > 0
    assert (too_big.value.status, too_big.value.code) == (507, "store_full")
    assert ready.ready
    assert "semantic" in ready.storage_full
    assert stopped == 0
