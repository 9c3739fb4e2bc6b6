"""The GPU tier over HTTP: off on a machine without CUDA (said in /v1/kv/stats), start-up
checks of the selection and budget, and, on host stand-ins of two GPUs, CUDA handles in
plans and reads, device errors, stats and metrics."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest

from semcached.errors import ConfigError
from semcached.index.cuda_memory import DeviceProbe
from semcached.index.device_arena import DeviceInfo
from semcached.service.config import KvGpuSettings
from semcached.service.http.appkeys import KV
from semcached.service.kv import component
from tests.index.device_standin import HostDeviceMemory
from tests.service.http.test_kv_routes import (
    Client,
    error_code,
    header_for,
    kv_settings,
    put,
    start,
)
from tests.service.kv.kit import TINY, key_of, variant

GiB = 1 << 30


def fake_gpus(monkeypatch: pytest.MonkeyPatch, count: int, total: int = 8 * GiB) -> None:
    infos = tuple(
        DeviceInfo(i, f"GPU-00000000-0000-0000-0000-{i:012x}", "stand-in", total)
        for i in range(count)
    )
    monkeypatch.setattr(component, "probe_devices", lambda selection: DeviceProbe(infos))
    monkeypatch.setattr(
        component,
        "TorchCudaMemory",
        lambda info: HostDeviceMemory(info.index, total_bytes=info.total_bytes),
    )


async def test_without_cuda_the_tier_is_off_and_stats_say_why(
    aiohttp_client: Any, tmp_path: Path
) -> None:
    client = await start(aiohttp_client, kv_settings(tmp_path))
    stats = await (await client.get("/v1/kv/stats")).json()
    assert stats["gpu"]["enabled"] is False
    assert stats["gpu"]["reason"]  # no driver, no device or no torch: named
    assert stats["gpu"]["devices"] == []
    assert set(stats["tiers"]) == {"host", "disk"}
    key = key_of(1)
    await put(client, key, variant(key)[1], header_for(16))
    plan = await client.post(
        "/v1/kv/plan", json={"model": TINY.name, "chunks": [key.hex()], "device": "0"}
    )
    assert plan.status == 400
    assert await error_code(plan) == "gpu_tier_off"
    got = await client.get(f"/v1/kv/chunks/{key.hex()}", params={"transfer": "cuda", "device": "0"})
    assert got.status == 400
    assert await error_code(got) == "gpu_tier_off"


async def test_devices_none_turns_the_tier_off(aiohttp_client: Any, tmp_path: Path) -> None:
    client = await start(aiohttp_client, kv_settings(tmp_path, kv_gpu_devices="none"))
    stats = await (await client.get("/v1/kv/stats")).json()
    assert stats["gpu"]["reason"] == "kv.gpu.devices is none"


def test_a_budget_above_the_device_memory_stops_the_start(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_gpus(monkeypatch, 1, total=GiB)
    with pytest.raises(ConfigError, match=f"more than GPU 0 .*{GiB} bytes"):
        component.probe_gpu(KvGpuSettings(max_bytes=2 * GiB))
    assert component.probe_gpu(KvGpuSettings(max_bytes=GiB // 2)).devices


def test_a_bad_device_selection_is_a_configuration_error() -> None:
    with pytest.raises(ConfigError, match="auto, none or CUDA device indexes"):
        component.probe_gpu(KvGpuSettings(devices="first"))
    with pytest.raises(ConfigError, match="bad device list"):
        component.probe_gpu(KvGpuSettings(devices="0,0"))


async def gpu_client(aiohttp_client: Any, tmp_path: Path) -> Client:
    return await start(
        aiohttp_client,
        kv_settings(
            tmp_path,
            kv_gpu_max_bytes=str(4 << 20),
            kv_gpu_slab_bytes=str(1 << 20),
            kv_gpu_promote_after_hits="2",
        ),
    )


async def test_hot_chunks_come_as_cuda_handles_on_the_asked_gpu(
    aiohttp_client: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_gpus(monkeypatch, 2)
    client = await gpu_client(aiohttp_client, tmp_path)
    key = key_of(3)
    _, blob = variant(key, tokens=16, seed=3)
    await put(client, key, blob, header_for(16))
    body = {"model": TINY.name, "chunks": [key.hex()], "device": "1", "lease_s": 5}
    first = await (await client.post("/v1/kv/plan", json=body)).json()
    fetch = first["chunks"][0]["fetch"]
    assert fetch["cuda"] is None  # read once: cold, handed out from shared memory
    assert fetch["shm"] is not None
    second = await (await client.post("/v1/kv/plan", json=body)).json()
    fetch = second["chunks"][0]["fetch"]
    cuda = fetch["cuda"]
    assert fetch["shm"] is None
    assert fetch["tier"] == "gpu1"
    assert cuda["device"] == "GPU-00000000-0000-0000-0000-000000000001"
    assert cuda["device_index"] == 1
    assert len(base64.b64decode(cuda["ipc_handle"])) == 64
    assert (cuda["length"], fetch["dtype"]) == (len(blob), "float32")
    engine = client.app[KV].get()
    memory = engine.devices[1].arena.memory
    slab = int.from_bytes(base64.b64decode(cuda["ipc_handle"])[:8], "little")
    assert memory.bytes_at(slab, cuda["offset"], cuda["length"]) == blob
    # A read with transfer=cuda names the GPU by its UUID.
    got = await client.get(
        f"/v1/kv/chunks/{key.hex()}",
        params={"transfer": "cuda", "device": cuda["device"]},
    )
    doc = await got.json()
    assert doc["cuda"]["ipc_handle"] == cuda["ipc_handle"]
    assert doc["shm"] is None
    assert doc["lease"]["id"]
    stats = await (await client.get("/v1/kv/stats")).json()
    assert stats["gpu"]["enabled"] is True
    assert [d["index"] for d in stats["gpu"]["devices"]] == [0, 1]
    assert stats["gpu"]["devices"][1]["slabs"] == 1
    assert stats["tiers"]["gpu1"]["entries"] == 1
    assert stats["tiers"]["gpu1"]["budget_bytes"] == 4 << 20
    assert stats["tiers"]["gpu0"]["entries"] == 0
    metrics = await (await client.get("/metrics")).text()
    assert 'semcached_kv_entries{tier="gpu1"} 1.0' in metrics


async def test_device_errors_over_http(
    aiohttp_client: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_gpus(monkeypatch, 1)
    client = await gpu_client(aiohttp_client, tmp_path)
    key = key_of(4)
    await put(client, key, variant(key)[1], header_for(16))
    got = await client.get(f"/v1/kv/chunks/{key.hex()}", params={"transfer": "cuda"})
    assert got.status == 400
    assert await error_code(got) == "bad_transfer"
    got = await client.get(
        f"/v1/kv/chunks/{key.hex()}", params={"transfer": "cuda", "device": "GPU-nope"}
    )
    assert got.status == 400
    assert await error_code(got) == "unknown_device"
    plan = await client.post(
        "/v1/kv/plan", json={"model": TINY.name, "chunks": [key.hex()], "device": ""}
    )
    assert plan.status == 400
