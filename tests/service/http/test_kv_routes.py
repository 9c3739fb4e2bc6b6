"""The ``kv`` route group end to end over HTTP, with random tensors of a tiny model."""

from __future__ import annotations

import asyncio
import base64
import os
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from semcached.clients.shm import ShmMapper
from semcached.protocol.keys import variant_key
from semcached.service.config import Settings, load_settings
from semcached.service.http.app import create_app
from semcached.service.http.appkeys import READINESS
from semcached.service.http.server import handler_options
from tests.service.kv.kit import TINY, key_of, variant

Client = TestClient[web.Request, web.Application]
META = "X-Semcached-KV-Meta"


def kv_settings(tmp_path: Path, **env: str) -> Settings:
    config = tmp_path / "semcached.toml"
    config.write_text(
        f'[kv_models."{TINY.name}"]\nlayers = {TINY.layers}\nkv_heads = {TINY.kv_heads}\n'
        f'head_dim = {TINY.head_dim}\nalpha = 1.0\ntokenizer = "{TINY.tokenizer}"\n'
    )
    environ = {
        "SEMCACHED_STORAGE_DATA_DIR": str(tmp_path / "data"),
        "SEMCACHED_EMBEDDING_BACKEND": "none",
        "SEMCACHED_KV_SHM_DIR": str(tmp_path),
        "SEMCACHED_KV_HOST_BYTES": str(1 << 20),
        "SEMCACHED_KV_DISK_BYTES": str(4 << 20),
        "SEMCACHED_KV_MAX_BLOB_BYTES": str(64 << 10),
    }
    environ.update({f"SEMCACHED_{k.upper()}": v for k, v in env.items()})
    return load_settings(config_file=config, environ=environ)


async def start(aiohttp_client: Any, settings: Settings) -> Client:
    client: Client = await aiohttp_client(
        create_app(settings), server_kwargs=handler_options(settings)
    )
    for _ in range(500):
        if client.app[READINESS].is_ready:
            return client
        await asyncio.sleep(0.01)
    raise AssertionError(client.app[READINESS].report())


@pytest.fixture
async def client(aiohttp_client: Any, tmp_path: Path) -> Client:
    return await start(aiohttp_client, kv_settings(tmp_path))


def header_for(tokens: int = 16, prefix: list[bytes] | None = None, **extra: Any) -> str:
    prefix = prefix or []
    rng = np.random.default_rng(tokens)
    doc = {
        "model": TINY.name,
        "dtype": "float32",
        "shape": [TINY.layers, 2, TINY.kv_heads, tokens, TINY.head_dim],
        "prefix": [k.hex() for k in prefix],
        "prefix_tokens": [16] * len(prefix),
        "rope_base": 4,
        "rope": {"theta": 10000.0},
        "stats": {
            "inter": [1.0] * len(prefix),
            "intra": 50.0,
            "token_scores": base64.b64encode(rng.random(tokens).astype("<f4").tobytes()).decode(),
        },
    }
    doc.update(extra)
    return orjson.dumps(doc).decode()


async def put(client: Client, key: bytes, blob: bytes, header: str, **params: str) -> Any:
    return await client.put(
        f"/v1/kv/chunks/{key.hex()}", data=blob, headers={META: header}, params=params
    )


async def error_code(response: Any) -> str:
    body = await response.json()
    return str(body["error"]["code"])


async def test_put_get_head_delete_round_trip(client: Client) -> None:
    key = key_of(7)
    _, blob = variant(key, tokens=16, seed=3)
    response = await put(client, key, blob, header_for(16))
    assert response.status == 201
    doc = await response.json()
    assert doc["variant"] == variant_key([]).hex()
    assert doc["nbytes"] == len(blob)
    assert doc["tiers"] == ["host", "disk"]

    got = await client.get(f"/v1/kv/chunks/{key.hex()}")
    assert got.status == 200
    assert await got.read() == blob
    meta = orjson.loads(got.headers[META])
    assert (meta["shape"], meta["rope_base"]) == ([2, 2, 2, 16, 8], 4)

    head = await client.head(f"/v1/kv/chunks/{key.hex()}")
    assert head.status == 200
    assert int(head.headers["Content-Length"]) == len(blob)

    again = await put(client, key, blob, header_for(16))
    assert again.status == 200  # replaced

    deleted = await client.delete(f"/v1/kv/chunks/{key.hex()}")
    assert (deleted.status, await deleted.json()) == (200, {"deleted": 1})
    assert (await client.get(f"/v1/kv/chunks/{key.hex()}")).status == 404
    assert (await client.delete(f"/v1/kv/chunks/{key.hex()}")).status == 404


@pytest.mark.parametrize(
    "case",
    [
        ("zz", None, 0, {}, 400, "bad_key"),
        (None, "", 0, {}, 400, "missing_meta"),
        (None, "{not json", 0, {}, 400, "invalid_json"),
        (None, header_for(16, model="nope"), 0, {}, 400, "unknown_model"),
        (None, header_for(16, shape=[2, 2, 3, 16, 8]), 0, {}, 400, "bad_shape"),
        (None, header_for(16, dtype="int4"), 0, {}, 400, "invalid_meta"),
        (None, header_for(16), -4, {}, 400, "length_mismatch"),
        (None, header_for(16), 4, {}, 400, "length_mismatch"),
        (None, header_for(16, stats={"inter": [1.0]}), 0, {}, 400, "invalid_meta"),
        (None, header_for(16, colour="red"), 0, {}, 400, "unknown_field"),
        (None, header_for(16), 0, {"variant": "00" * 16}, 400, "bad_variant"),
    ],
)
async def test_bad_puts_are_4xx_json_and_store_nothing(
    client: Client, case: tuple[str | None, str | None, int, dict[str, str], int, str]
) -> None:
    path_key, header, body_delta, params, status, code = case
    key = key_of(1)
    _, blob = variant(key, tokens=16)
    blob = blob[:body_delta] if body_delta < 0 else blob + b"\0" * body_delta
    headers = {} if header == "" else {META: header or header_for(16)}
    response = await client.put(
        f"/v1/kv/chunks/{path_key or key.hex()}", data=blob, headers=headers, params=params
    )
    assert response.status == status
    assert await error_code(response) == code
    stats = await (await client.get("/v1/kv/stats")).json()
    assert stats["variants"] == 0


async def test_an_oversized_blob_is_413_before_it_is_read(client: Client) -> None:
    key = key_of(1)
    tokens = 1024  # 256 KiB > max_blob_bytes (64 KiB)
    response = await put(client, key, b"\0" * (tokens * 256), header_for(tokens))
    assert response.status == 413
    assert await error_code(response) == "blob_too_large"


async def test_plan_reports_hits_misses_and_recompute_positions(client: Client) -> None:
    a, b, c = key_of(1), key_of(2), key_of(3)
    _, blob = variant(a, tokens=16)
    assert (await put(client, a, blob, header_for(16))).status == 201
    _, blob_c = variant(c, tokens=16, prefix=[b])
    assert (await put(client, c, blob_c, header_for(16, prefix=[b]))).status == 201
    unknown = key_of(99)
    response = await client.post(
        "/v1/kv/plan",
        json={
            "model": TINY.name,
            "chunks": [a.hex(), unknown.hex(), c.hex()],
            "chunk_tokens": [16, 10, 16],
            "start": 4,
        },
    )
    assert response.status == 200
    plan = await response.json()
    assert (plan["hits"], plan["misses"]) == (2, 1)
    first, miss, last = plan["chunks"]
    assert first["exact_prefix"]
    assert first["recompute"] == []
    assert first["rope_shift"] == 0
    assert first["fetch"]["http"].startswith(f"/v1/kv/chunks/{a.hex()}?variant=")
    assert not miss["hit"]
    assert miss["fetch"] is None
    # c was computed after [b]; now after [a, unknown]: nothing shared, beta 0.
    assert last["beta"] == 0.0
    assert 0 < last["cfo"] <= 1
    assert len(last["recompute"]) == int(np.ceil(round(last["cfo"] * 16, 9)))
    assert (last["position"], last["rope_shift"]) == (30, 26)
    assert plan["recompute_tokens"] == len(last["recompute"])
    assert plan["lease"] is None


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"{", "invalid_json"),
        (b"[]", "invalid_json"),
        (orjson.dumps({"model": "nope", "chunks": []}), "unknown_model"),
        (orjson.dumps({"model": TINY.name, "chunks": ["xx"]}), "bad_key"),
        (orjson.dumps({"model": TINY.name, "chunks": "ab"}), "invalid_field"),
        (orjson.dumps({"model": TINY.name, "chunks": [], "start": -1}), "invalid_field"),
        (orjson.dumps({"model": TINY.name, "chunks": [], "extra": 1}), "unknown_field"),
    ],
)
async def test_bad_plans_are_4xx(client: Client, body: bytes, code: str) -> None:
    response = await client.post(
        "/v1/kv/plan", data=body, headers={"Content-Type": "application/json"}
    )
    assert response.status == 400
    assert await error_code(response) == code


async def test_shm_handles_map_to_the_same_bytes_and_leases_end(
    client: Client, tmp_path: Path
) -> None:
    key = key_of(5)
    _, blob = variant(key, tokens=16, seed=9)
    await put(client, key, blob, header_for(16))
    got = await client.get(f"/v1/kv/chunks/{key.hex()}", params={"transfer": "shm"})
    assert got.status == 200
    doc = await got.json()
    mapper = ShmMapper(tmp_path)
    view = mapper.view(doc["shm"]["segment"], doc["shm"]["offset"], doc["shm"]["length"])
    assert bytes(view) == blob
    del view
    lease = doc["lease"]["id"]
    assert (await client.delete(f"/v1/kv/leases/{lease}")).status == 204
    assert (await client.delete(f"/v1/kv/leases/{lease}")).status == 404

    plan = await (
        await client.post(
            "/v1/kv/plan",
            json={"model": TINY.name, "chunks": [key.hex()], "shm": True, "lease_s": 0.2},
        )
    ).json()
    shm = plan["chunks"][0]["fetch"]["shm"]
    assert bytes(mapper.view(shm["segment"], shm["offset"], shm["length"])) == blob
    assert plan["lease"]["ttl_s"] == 0.2
    stats = await (await client.get("/v1/kv/stats")).json()
    assert stats["leases"] == 1
    for _ in range(40):  # the sweeper ends it within about a second
        await asyncio.sleep(0.1)
        stats = await (await client.get("/v1/kv/stats")).json()
        if stats["leases"] == 0:
            break
    assert stats["leases"] == 0
    mapper.close()


async def test_stats_count_per_tier(client: Client) -> None:
    key = key_of(1)
    _, blob = variant(key, tokens=16)
    await put(client, key, blob, header_for(16))
    await client.get(f"/v1/kv/chunks/{key.hex()}")
    await client.get(f"/v1/kv/chunks/{key_of(2).hex()}")
    stats = await (await client.get("/v1/kv/stats")).json()
    host, disk = stats["tiers"]["host"], stats["tiers"]["disk"]
    assert (host["entries"], host["bytes"], host["hits"]) == (1, len(blob), 1)
    assert (disk["entries"], disk["bytes"], disk["misses"]) == (1, len(blob), 1)
    assert host["budget_bytes"] == 1 << 20
    metrics = await (await client.get("/metrics")).text()
    assert 'semcached_kv_entries{tier="host"} 1.0' in metrics
    assert 'semcached_kv_hits_total{tier="host"} 1.0' in metrics


async def test_without_a_host_tier_shm_is_refused_and_http_still_works(
    aiohttp_client: Any, tmp_path: Path
) -> None:
    client = await start(aiohttp_client, kv_settings(tmp_path, kv_host_bytes="0"))
    key = key_of(1)
    _, blob = variant(key, tokens=16)
    assert (await put(client, key, blob, header_for(16))).status == 201
    assert await (await client.get(f"/v1/kv/chunks/{key.hex()}")).read() == blob
    got = await client.get(f"/v1/kv/chunks/{key.hex()}", params={"transfer": "shm"})
    assert got.status == 400
    assert await error_code(got) == "shm_disabled"


async def test_disabled_kv_answers_404(aiohttp_client: Any, tmp_path: Path) -> None:
    client = await start(aiohttp_client, kv_settings(tmp_path, kv_enabled="false"))
    response = await client.get("/v1/kv/stats")
    assert response.status == 404
    assert await error_code(response) == "kv_disabled"


async def test_a_put_staged_in_shared_memory_is_read_from_there(
    client: Client, tmp_path: Path
) -> None:
    key = key_of(3)
    _, blob = variant(key, tokens=16, seed=4)
    (tmp_path / "semcached-put-test").write_bytes(blob)
    source = {"X-Semcached-KV-Source": "shm:semcached-put-test"}
    response = await client.put(
        f"/v1/kv/chunks/{key.hex()}", data=b"", headers={META: header_for(16), **source}
    )
    assert response.status == 201
    assert await (await client.get(f"/v1/kv/chunks/{key.hex()}")).read() == blob


@pytest.mark.parametrize(
    ("name", "make", "code"),
    [
        ("semcached-put-missing", None, "shm_source_unavailable"),
        ("other-name", "file", "bad_source"),
        ("semcached-put-../escape", None, "bad_source"),
        ("semcached-put-short", "short", "length_mismatch"),
        ("semcached-put-fifo", "fifo", "bad_source"),
        # Issue 14, defect 9: a link to a file the daemon can read but the client may
        # not (its own arena, another client's staged put) is refused, not read.
        ("semcached-put-hard", "hard link", "bad_source"),
        ("semcached-put-soft", "symbolic link", "bad_source"),
    ],
)
async def test_bad_staged_puts_are_4xx(
    client: Client, tmp_path: Path, name: str, make: str | None, code: str
) -> None:
    key = key_of(3)
    _, blob = variant(key, tokens=16)
    path = tmp_path / name
    if make == "file":
        path.write_bytes(blob)
    elif make == "short":
        path.write_bytes(blob[:-1])
    elif make == "fifo":
        os.mkfifo(path)
    elif make is not None and make.endswith("link"):
        other = tmp_path / "not-the-clients"
        other.write_bytes(blob)
        (os.link if make == "hard link" else os.symlink)(other, path)
    response = await client.put(
        f"/v1/kv/chunks/{key.hex()}",
        data=b"",
        headers={META: header_for(16), "X-Semcached-KV-Source": f"shm:{name}"},
    )
    assert response.status == 400
    assert await error_code(response) == code


@pytest.mark.parametrize(
    ("params", "code", "field"),
    [
        ({"variant": "zz"}, "bad_key", "variant"),
        ({"variant": "0" * 31 + "\n"}, "bad_key", "variant"),
        ({"transfer": "ftp"}, "bad_transfer", "transfer"),
        ({"transfer": "shm", "lease_s": "soon"}, "invalid_field", "lease_s"),
        ({"transfer": "shm", "lease_s": "0"}, "invalid_field", "lease_s"),
    ],
)
async def test_bad_read_parameters_are_4xx(
    client: Client, params: dict[str, str], code: str, field: str
) -> None:
    response = await client.get(f"/v1/kv/chunks/{key_of(1).hex()}", params=params)
    assert response.status == 400
    error = (await response.json())["error"]
    assert (error["code"], error["field"]) == (code, field)


async def test_plan_items_and_limits_name_the_field(client: Client) -> None:
    for body, code, field in [
        ({"model": TINY.name, "chunks": ["0" * 32, 5]}, "bad_key", "chunks"),
        ({"model": TINY.name, "chunks": [], "chunk_tokens": [0]}, "invalid_field", "chunk_tokens"),
        ({"model": TINY.name, "chunks": [], "shm": "yes"}, "invalid_field", "shm"),
        ({"chunks": []}, "missing_field", "model"),
    ]:
        response = await client.post("/v1/kv/plan", json=body)
        error = (await response.json())["error"]
        assert (response.status, error["code"], error["field"]) == (400, code, field)
