"""A full store over HTTP: inserts and puts evict at the map cap, 507 ``store_full``
when nothing can make room, and /readyz and /metrics say so while staying ready."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from tests.service.http.test_kv_routes import Client, header_for, kv_settings, put, start
from tests.service.kv.kit import key_of, variant

MiB = 1 << 20
DIM = 384


def unit(seed: int) -> list[float]:
    v = np.random.default_rng(seed).standard_normal(DIM)
    return (v / np.linalg.norm(v)).tolist()


async def full_client(aiohttp_client: Any, tmp_path: Path) -> Client:
    settings = kv_settings(
        tmp_path,
        storage_lmdb_initial_map_bytes=str(MiB),
        storage_lmdb_max_map_bytes=str(2 * MiB),
        server_max_body_bytes=str(4 * MiB),
        kv_host_bytes="0",
        kv_disk_bytes=str(16 * MiB),
        kv_disk_max_map_bytes=str(2 * MiB),
        kv_max_blob_bytes=str(4 * MiB),
    )
    return await start(aiohttp_client, settings)


async def gauge(client: Client, store: str) -> float:
    text = await (await client.get("/metrics")).text()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "semcached_storage_full" and sample.labels == {"store": store}:
                return float(sample.value)
    raise AssertionError(f"no semcached_storage_full for {store}")


async def insert(client: Client, n: int, response: str) -> Any:
    body = {"namespace": "t1", "prompt": f"prompt {n}", "response": response, "vector": unit(n)}
    return await client.post("/v1/semantic/entries", json=body)


async def test_semantic_inserts_evict_at_the_cap_and_507_when_nothing_can_fit(
    aiohttp_client: Any, tmp_path: Path
) -> None:
    client = await full_client(aiohttp_client, tmp_path)
    for n in range(900):  # ~3 MiB of entries into a 2 MiB map
        response = await insert(client, n, "r" * 3000)
        assert response.status == 201, await response.text()
    stats = await (await client.get("/v1/semantic/stats")).json()
    assert stats["categories"]["default"]["evictions"] > 0
    ready = await client.get("/readyz")
    assert (ready.status, await ready.json()) == (200, {"status": "ready"})
    assert await gauge(client, "semantic") == 0

    too_big = await insert(client, 1000, "h" * (3 * MiB))
    assert too_big.status == 507
    assert (await too_big.json())["error"]["code"] == "store_full"
    ready = await client.get("/readyz")
    assert ready.status == 200  # a full cache still serves every hit
    assert (await ready.json())["storage_full"] == ["semantic"]
    assert await gauge(client, "semantic") == 1
    lookup = await client.post("/v1/semantic/lookup", json={"namespace": "t1", "vector": unit(899)})
    assert (await lookup.json())["hit"]

    purged = await client.post("/v1/semantic/purge", json={"namespace": "t1"})
    assert purged.status == 200
    assert "storage_full" not in await (await client.get("/readyz")).json()
    assert await gauge(client, "semantic") == 0


async def test_kv_puts_evict_at_the_map_cap_and_507_when_nothing_can_fit(
    aiohttp_client: Any, tmp_path: Path
) -> None:
    client = await full_client(aiohttp_client, tmp_path)
    for i in range(60):  # 64 KiB blobs, 3.8 MiB in all, into a 2 MiB map
        _, blob = variant(key_of(i), tokens=256, seed=i)
        response = await put(client, key_of(i), blob, header_for(256))
        assert response.status == 201, await response.text()
    stats = await (await client.get("/v1/kv/stats")).json()
    assert stats["tiers"]["disk"]["evictions"] > 0
    got = await client.get(f"/v1/kv/chunks/{key_of(59).hex()}")
    assert got.status == 200

    _, blob = variant(key_of(100), tokens=8192)  # 2 MiB: more than the map holds
    response = await put(client, key_of(100), blob, header_for(8192, stats=None))
    assert response.status == 507
    assert (await response.json())["error"]["code"] == "store_full"
    ready = await client.get("/readyz")
    assert ready.status == 200
    assert (await ready.json())["storage_full"] == ["kv"]
    assert await gauge(client, "kv") == 1
    assert (await client.get(f"/v1/kv/chunks/{key_of(59).hex()}")).status == 200
