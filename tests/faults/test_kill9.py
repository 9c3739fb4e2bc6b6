"""kill -9 of a real daemon in the middle of group commits and of uploads: after a
restart every acknowledged write is there, byte for byte, and nothing is torn."""

from __future__ import annotations

import signal
import socket
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import orjson
import pytest

from semcached.clients import SemcachedClient
from semcached.errors import NotFoundError
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
from tests.service.kv.kit import TINY

pytestmark = pytest.mark.slow

MiB = 1 << 20


def insert(client: SemcachedClient, n: int) -> int:
    return client.insert(NAMESPACE, f"prompt {n}", {"n": n}, vector=unit(n)).entry_id


def entries_present(client: SemcachedClient, ids: list[int]) -> int:
    found = 0
    for entry_id in ids:
        try:
            client.get(entry_id, NAMESPACE)
        except NotFoundError:
            continue
        found += 1
    return found


def chunk_state(client: SemcachedClient, i: int, tokens: int) -> str:
    """``whole`` (the exact bytes put), ``absent``, or ``torn`` (anything else)."""
    try:
        chunk = client.get_chunk(key(i), transfer="http")
    except NotFoundError:
        return "absent"
    return "whole" if np.array_equal(chunk.array(), tensor(i, tokens)) else "torn"


def test_kill_9_during_group_commits_keeps_every_acknowledged_write(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, disk_bytes=256 * MiB)
    data = tmp_path / "data"
    daemon = start(data, config)
    url = daemon.wait_listening()
    semantic = Writers(url, insert, threads=6).start()
    kv = Writers(url, lambda c, n: put_chunk(c, n, 64) or n, threads=3).start()
    semantic.wait_for(400)
    kv.wait_for(60)
    daemon.terminate(signal.SIGKILL)
    semantic.stop()
    kv.stop()

    again = start(data, config)
    try:
        with SemcachedClient(again.wait_listening()) as client:
            entries = client.stats()["default"].entries
            present = entries_present(client, semantic.acknowledged)
            states = [chunk_state(client, i, 64) for i in kv.acknowledged]
            late = [chunk_state(client, i, 64) for i in kv.in_flight]
            disk = client.kv_stats()["disk"].entries
    finally:
        again.terminate()
    report(
        capsys,
        "kill -9 during group commit",
        semantic_acknowledged=len(semantic.acknowledged),
        semantic_present=present,
        semantic_in_flight=len(semantic.in_flight),
        semantic_stored=entries,
        kv_acknowledged=len(kv.acknowledged),
        kv_present=states.count("whole"),
        kv_in_flight=len(kv.in_flight),
        kv_in_flight_whole=late.count("whole"),
        kv_torn=states.count("torn") + late.count("torn"),
    )
    assert present == len(semantic.acknowledged)
    # What was in flight at the kill may have committed, whole, or not at all.
    assert len(semantic.acknowledged) <= entries <= present + len(semantic.in_flight)
    assert states == ["whole"] * len(kv.acknowledged)
    assert "torn" not in late
    assert disk == len(kv.acknowledged) + late.count("whole")


def partial_upload(url: str, i: int, tokens: int) -> socket.socket:
    """A chunk PUT whose headers and first half of the body are sent, the rest never."""
    where = urlsplit(url)
    assert where.hostname is not None
    assert where.port is not None
    body = tensor(i, tokens).tobytes()
    meta = orjson.dumps(
        {"model": TINY.name, "dtype": "float32", "shape": list(tensor(i, tokens).shape)}
    )
    head = (
        f"PUT /v1/kv/chunks/{key(i).hex()} HTTP/1.1\r\nHost: {where.netloc}\r\n"
        f"Content-Type: application/octet-stream\r\nContent-Length: {len(body)}\r\n"
        f"X-Semcached-KV-Meta: {meta.decode()}\r\n\r\n"
    )
    sock = socket.create_connection((where.hostname, where.port))
    sock.sendall(head.encode() + body[: len(body) // 2])
    return sock


def test_kill_9_during_uploads_keeps_what_was_acknowledged_and_tears_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tokens = 4096  # 1 MiB blobs: each body takes many socket reads
    config = write_config(tmp_path, disk_bytes=512 * MiB)
    data = tmp_path / "data"
    daemon = start(data, config)
    url = daemon.wait_listening()
    writers = Writers(url, lambda c, n: put_chunk(c, n, tokens) or n, threads=3).start()
    writers.wait_for(12)
    halves = [partial_upload(url, 10_000 + j, tokens) for j in range(4)]
    writers.wait_for(writers.count() + 3)  # more complete uploads while those hang
    daemon.terminate(signal.SIGKILL)
    writers.stop()
    for sock in halves:
        sock.close()

    again = start(data, config)
    try:
        with SemcachedClient(again.wait_listening()) as client:
            states = [chunk_state(client, i, tokens) for i in writers.acknowledged]
            late = [chunk_state(client, i, tokens) for i in writers.in_flight]
            halves_state = [chunk_state(client, 10_000 + j, tokens) for j in range(4)]
            disk = client.kv_stats()["disk"].entries
    finally:
        again.terminate()
    report(
        capsys,
        "kill -9 during uploads",
        acknowledged=len(writers.acknowledged),
        present=states.count("whole"),
        in_flight=len(writers.in_flight),
        in_flight_whole=late.count("whole"),
        half_sent=len(halves),
        half_sent_present=4 - halves_state.count("absent"),
        torn=(states + late + halves_state).count("torn"),
    )
    assert states == ["whole"] * len(writers.acknowledged)
    assert "torn" not in late
    assert halves_state == ["absent"] * 4
    assert disk == len(writers.acknowledged) + late.count("whole")
