"""A put's body read into a reused buffer: stored bytes never alias it, a short body
stores nothing, and concurrent puts are all durable."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from semcached.service.http.appkeys import BODY_BUFFERS
from tests.service.http.test_kv_put_bounds import _gauge, _put_head
from tests.service.http.test_kv_routes import Client, header_for, kv_settings, put, start
from tests.service.kv.kit import blob_nbytes, key_of, variant


@pytest.fixture
async def client(aiohttp_client: Any, tmp_path: Path) -> Client:
    return await start(aiohttp_client, kv_settings(tmp_path))


@pytest.mark.parametrize("host_bytes", ["1048576", "0"])
async def test_puts_read_into_one_buffer_each_keep_their_own_bytes(
    aiohttp_client: Any, tmp_path: Path, host_bytes: str
) -> None:
    client = await start(aiohttp_client, kv_settings(tmp_path, kv_host_bytes=host_bytes))
    buffers = client.app[BODY_BUFFERS]
    blobs = {key_of(i): variant(key_of(i), tokens=16, seed=i)[1] for i in range(4)}
    for key, blob in blobs.items():
        assert (await put(client, key, blob, header_for(16))).status == 201
    assert buffers.reused == len(blobs) - 1  # one buffer served every body
    for key, blob in blobs.items():
        response = await client.get(f"/v1/kv/chunks/{key.hex()}")
        assert response.status == 200
        assert await response.read() == blob


async def test_a_body_that_ends_early_stores_nothing_and_keeps_no_buffer(
    client: Client,
) -> None:
    key = key_of(1)
    _, blob = variant(key, tokens=16)
    reader, writer = await asyncio.open_connection(client.host, client.port)
    try:
        writer.write(_put_head(key, header_for(16), len(blob)) + blob[: len(blob) // 2])
        await writer.drain()
        writer.write_eof()  # the sender stops halfway
        assert await asyncio.wait_for(reader.read(), 30) == b""  # closed, nothing stored
    finally:
        writer.close()
    for _ in range(500):  # the handler ends after the connection does
        if await _gauge(client, "semcached_kv_upload_bytes_in_flight") == 0:
            break
        await asyncio.sleep(0.01)
    assert await _gauge(client, "semcached_kv_upload_bytes_in_flight") == 0
    assert client.app[BODY_BUFFERS].held_bytes == 0
    assert (await client.get(f"/v1/kv/chunks/{key.hex()}")).status == 404
    assert (await put(client, key, blob, header_for(16))).status == 201  # whole: stored


async def test_concurrent_puts_are_all_durable_after_a_restart(
    aiohttp_client: Any, tmp_path: Path
) -> None:
    settings = kv_settings(tmp_path, kv_host_bytes="0")
    client = await start(aiohttp_client, settings)
    blobs = {key_of(i): variant(key_of(i), tokens=16, seed=i)[1] for i in range(12)}
    answers = await asyncio.gather(
        *(put(client, key, blob, header_for(16)) for key, blob in blobs.items())
    )
    assert [a.status for a in answers] == [201] * len(blobs)
    await client.close()  # the daemon stops; a new one opens the same data directory
    again = await start(aiohttp_client, settings)
    for key, blob in blobs.items():
        response = await again.get(f"/v1/kv/chunks/{key.hex()}")
        assert response.status == 200
        assert await response.read() == blob
    assert blob_nbytes(16) == len(next(iter(blobs.values())))
