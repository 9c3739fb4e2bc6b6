"""The shared KV tier over HTTP: two daemons (aiohttp apps, own data directories) on one
real Redis."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import urllib3

from semcached.protocol.keys import variant_key
from tests.daemon import DaemonProcess
from tests.redis_servers import RedisServer
from tests.service.http.test_kv_routes import Client, header_for, kv_settings, put, start
from tests.service.kv.kit import TINY, key_of, variant

WAIT_S = 30.0


async def daemon(aiohttp_client: Any, root: Path, url: str) -> Client:
    os.mkdir(root)
    return await start(aiohttp_client, kv_settings(root, shared_redis_url=url))


async def plan_tier(client: Client, key: bytes) -> str | None:
    reply = await client.post("/v1/kv/plan", json={"model": TINY.name, "chunks": [key.hex()]})
    assert reply.status == 200
    fetch = (await reply.json())["chunks"][0]["fetch"]
    return None if fetch is None else str(fetch["tier"])


async def test_a_chunk_put_on_a_is_planned_and_served_by_b(
    aiohttp_client: Any, tmp_path: Path, redis_server: RedisServer
) -> None:
    a = await daemon(aiohttp_client, tmp_path / "a", redis_server.url)
    b = await daemon(aiohttp_client, tmp_path / "b", redis_server.url)
    key = key_of(1, 2)
    _, blob = variant(key, tokens=16, seed=4)
    assert (await put(a, key, blob, header_for(16))).status == 201

    # The write reaches Redis after the acknowledgement: wait for B's plan to see it.
    deadline = asyncio.get_running_loop().time() + WAIT_S
    while (tier := await plan_tier(b, key)) is None:
        assert asyncio.get_running_loop().time() < deadline, "the put never reached Redis"
        await asyncio.sleep(0.02)
    assert tier == "shared"
    plan = await (
        await b.post("/v1/kv/plan", json={"model": TINY.name, "chunks": [key.hex()], "shm": True})
    ).json()
    (chunk,) = plan["chunks"]
    assert chunk["hit"]
    assert chunk["variant"] == variant_key([]).hex()
    assert chunk["fetch"]["tier"] == "shared"
    assert chunk["fetch"]["shm"] is None  # no handle: fetched with GET
    assert chunk["fetch"]["nbytes"] == len(blob)

    got = await b.get(chunk["fetch"]["http"])
    assert got.status == 200
    assert await got.read() == blob
    assert await plan_tier(b, key) == "host"  # promoted

    stats = (await (await b.get("/v1/kv/stats")).json())["tiers"]
    assert stats["shared"]["promotions"] == 1
    assert stats["shared"]["hits"] == 3  # two plans said "shared", one GET fetched it
    assert stats["disk"]["entries"] == 1
    metrics = await (await a.get("/metrics")).text()
    assert f"semcached_kv_shared_written_bytes_total {float(len(blob))}" in metrics
    assert "semcached_kv_shared_up 1.0" in metrics

    deleted = await b.delete(f"/v1/kv/chunks/{key.hex()}")
    assert (deleted.status, await deleted.json()) == (200, {"deleted": 1})
    assert not list(redis_server.client().scan_iter("semcached:*"))


async def test_a_daemon_keeps_serving_while_redis_is_down(
    aiohttp_client: Any, tmp_path: Path, redis_server: RedisServer
) -> None:
    a = await daemon(aiohttp_client, tmp_path / "a", redis_server.url)
    b = await daemon(aiohttp_client, tmp_path / "b", redis_server.url)
    redis_server.stop()
    key = key_of(3)
    _, blob = variant(key, tokens=16, seed=5)
    assert (await put(a, key, blob, header_for(16))).status == 201
    got = await a.get(f"/v1/kv/chunks/{key.hex()}")
    assert (got.status, await got.read()) == (200, blob)
    missing = await b.get(f"/v1/kv/chunks/{key.hex()}")
    assert missing.status == 404
    assert (await missing.json())["error"]["code"] == "not_found"
    assert await plan_tier(b, key) is None
    assert (await b.get("/readyz")).status == 200


def test_a_real_daemon_starts_while_redis_is_down_and_says_so_once(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    url = redis_server.url
    redis_server.stop()
    # Semantic sharing off: its bootstrap waits for Redis before /readyz (its own tests).
    args = ["--shared.redis_url", url, "--shared.semantic", "false"]
    process = DaemonProcess(tmp_path / "data", args)
    try:
        base = process.wait_ready()
        http = urllib3.PoolManager(retries=False)
        for _ in range(3):  # reads are local misses, not errors, and log nothing more
            reply = http.request("GET", f"{base}/v1/kv/chunks/{key_of(9).hex()}")
            assert reply.status == 404
        metrics = http.request("GET", f"{base}/metrics").data.decode()
        assert "semcached_kv_shared_up 0.0" in metrics
    finally:
        process.terminate()
    assert process.log.count("unreachable at start") == 1
    assert "unreachable (" not in process.log
