"""A put's body is read straight into the host tier, or into a reused buffer when
there is no room there: stored bytes never alias another put's, a body that ends
early leaves nothing taken, and concurrent puts are all durable."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from semcached.service.http.appkeys import BODY_BUFFERS, KV
from tests.service.http.test_kv_put_bounds import _gauge, _put_head
from tests.service.http.test_kv_routes import Client, header_for, kv_settings, put, start
from tests.service.kv.kit import key_of, variant

BLOBS = 4


async def _put_all(client: Client, blobs: dict[bytes, bytes]) -> list[list[str]]:
    tiers = []
    for key, blob in blobs.items():
        response = await put(client, key, blob, header_for(16))
        assert response.status == 201
        tiers.append((await response.json())["tiers"])
    return tiers


async def _assert_stored(client: Client, blobs: dict[bytes, bytes]) -> None:
    for key, blob in blobs.items():
        response = await client.get(f"/v1/kv/chunks/{key.hex()}")
        assert response.status == 200
        assert await response.read() == blob


def _blobs(count: int) -> dict[bytes, bytes]:
    return {key_of(i): variant(key_of(i), tokens=16, seed=i)[1] for i in range(count)}


async def test_a_body_read_into_the_host_tier_is_the_disk_copy_too(
    aiohttp_client: Any, tmp_path: Path
) -> None:
    settings = kv_settings(tmp_path)
    client = await start(aiohttp_client, settings)
    blobs = _blobs(BLOBS)
    assert await _put_all(client, blobs) == [["host", "disk"]] * BLOBS
    assert client.app[BODY_BUFFERS].reused == 0  # no buffer of its own was needed
    await _assert_stored(client, blobs)  # from the host tier
    await client.close()
    again = await start(aiohttp_client, settings)  # a cold host tier: from LMDB
    await _assert_stored(again, blobs)


async def test_without_a_host_tier_one_reused_buffer_serves_every_body(
    aiohttp_client: Any, tmp_path: Path
) -> None:
    client = await start(aiohttp_client, kv_settings(tmp_path, kv_host_bytes="0"))
    blobs = _blobs(BLOBS)
    assert await _put_all(client, blobs) == [["disk"]] * BLOBS
    assert client.app[BODY_BUFFERS].reused == BLOBS - 1
    await _assert_stored(client, blobs)


@pytest.mark.parametrize("host_bytes", ["1048576", "0"])
async def test_bodies_that_end_early_store_nothing_and_keep_no_room(
    aiohttp_client: Any, tmp_path: Path, host_bytes: str
) -> None:
    client = await start(aiohttp_client, kv_settings(tmp_path, kv_host_bytes=host_bytes))
    key = key_of(1)
    _, blob = variant(key, tokens=16)
    host = client.app[KV].get().host
    used = 0 if host is None else host.arena.used_bytes  # its own bookkeeping
    for _ in range(2 + (1 << 20) // len(blob)):  # more than the host tier holds
        reader, writer = await asyncio.open_connection(client.host, client.port)
        try:
            writer.write(_put_head(key, header_for(16), len(blob)) + blob[: len(blob) // 2])
            await writer.drain()
            writer.write_eof()  # the sender stops halfway
            assert await asyncio.wait_for(reader.read(), 30) == b""  # closed, no answer
        finally:
            writer.close()
        for _ in range(500):  # the handler ends after the connection does
            idle = await _gauge(client, "semcached_kv_upload_bytes_in_flight") == 0
            if idle and (host is None or host.arena.used_bytes == used):
                break
            await asyncio.sleep(0.01)
        assert host is None or host.arena.used_bytes == used
    assert await _gauge(client, "semcached_kv_upload_bytes_in_flight") == 0
    assert client.app[BODY_BUFFERS].held_bytes == 0
    assert (await client.get(f"/v1/kv/chunks/{key.hex()}")).status == 404
    response = await put(client, key, blob, header_for(16))  # whole: stored
    assert response.status == 201
    assert (await response.json())["tiers"] == (["disk"] if host is None else ["host", "disk"])


@pytest.mark.parametrize("host_bytes", ["1048576", "0"])
async def test_concurrent_puts_are_all_durable_after_a_restart(
    aiohttp_client: Any, tmp_path: Path, host_bytes: str
) -> None:
    settings = kv_settings(tmp_path, kv_host_bytes=host_bytes)
    client = await start(aiohttp_client, settings)
    blobs = _blobs(12)
    answers = await asyncio.gather(
        *(put(client, key, blob, header_for(16)) for key, blob in blobs.items())
    )
    assert [a.status for a in answers] == [201] * len(blobs)
    await client.close()  # the daemon stops; a new one opens the same data directory
    again = await start(aiohttp_client, settings)
    await _assert_stored(again, blobs)
