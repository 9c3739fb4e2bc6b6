"""Issue 14, part A: what a chunk put may cost the daemon before it is refused.

Declared shapes are checked arithmetically before anything of their size is allocated
(defect 1); a declared Content-Length costs nothing until its bytes arrive, uploads in
flight share a byte budget, and slow bodies time out (defect 2); metadata that cannot
be stored fails only its own put (defect 3). The adversary's numbers against a real
daemon process are in ``test_kv_put_adversary.py``.
"""

from __future__ import annotations

import asyncio
import tracemalloc
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.service.http.test_kv_routes import (
    META,
    Client,
    error_code,
    header_for,
    kv_settings,
    put,
    start,
)
from tests.service.kv.kit import TINY, blob_nbytes, key_of, variant

MiB = 1 << 20


def _shape_header(tokens: int) -> str:
    shape = [TINY.layers, 2, TINY.kv_heads, tokens, TINY.head_dim]
    return orjson.dumps({"model": TINY.name, "dtype": "float32", "shape": shape}).decode()


@pytest.fixture
async def client(aiohttp_client: Any, tmp_path: Path) -> Client:
    return await start(aiohttp_client, kv_settings(tmp_path))


@pytest.mark.parametrize("tokens", [10**9, 2**62])
async def test_a_huge_declared_shape_is_413_before_anything_of_its_size_is_allocated(
    client: Client, tokens: int
) -> None:
    header = _shape_header(tokens)
    assert len(header) < 110  # the 104-byte header
    tracemalloc.start()  # numpy reports its buffers to tracemalloc too
    try:
        response = await put(client, key_of(1), b"", header)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert response.status == 413
    assert await error_code(response) == "blob_too_large"
    assert peak < 4 * MiB  # before: 4 GB of zeros for 10**9 tokens; MemoryError (500) at 2**62


async def test_a_content_length_other_than_the_shapes_is_refused_before_the_body(
    client: Client,
) -> None:
    reader, writer = await asyncio.open_connection(client.host, client.port)
    try:
        writer.write(_put_head(key_of(1), header_for(16), blob_nbytes(16) * 2))
        await writer.drain()
        status, _, body = await _response(reader)  # no body was sent
    finally:
        writer.close()
    assert status == 400
    assert orjson.loads(body)["error"]["code"] == "length_mismatch"


async def test_a_stalled_body_gets_408_and_the_connection_closes(
    aiohttp_client: Any, tmp_path: Path
) -> None:
    client = await start(aiohttp_client, kv_settings(tmp_path, server_body_timeout_s="0.2"))
    key = key_of(1)
    _, blob = variant(key, tokens=16)
    reader, writer = await asyncio.open_connection(client.host, client.port)
    try:
        writer.write(_put_head(key, header_for(16), len(blob)) + blob[:1000])
        await writer.drain()
        status, headers, body = await _response(reader)  # and then nothing more is sent
    finally:
        writer.close()
    assert status == 408
    assert orjson.loads(body)["error"]["code"] == "body_timeout"
    assert headers["connection"] == "close"
    assert await _gauge(client, "semcached_kv_upload_bytes_in_flight") == 0
    assert (await client.get(f"/v1/kv/chunks/{key.hex()}")).status == 404


async def test_a_body_trickling_below_the_minimum_rate_gets_408(
    aiohttp_client: Any, tmp_path: Path
) -> None:
    settings = kv_settings(
        tmp_path, server_body_timeout_s="0.3", server_body_min_bytes_per_s="4096"
    )
    client = await start(aiohttp_client, settings)
    key = key_of(1)
    _, blob = variant(key, tokens=16)  # 4 KiB: due within 0.3 s + 1 s
    reader, writer = await asyncio.open_connection(client.host, client.port)
    try:
        writer.write(_put_head(key, header_for(16), len(blob)))
        for offset in range(0, len(blob), 128):  # never idle 0.3 s, but 1 KiB/s at most
            writer.write(blob[offset : offset + 128])
            await writer.drain()
            if reader.at_eof() or reader._buffer:  # type: ignore[attr-defined]
                break  # answered already
            await asyncio.sleep(0.125)
        status, _, body = await _response(reader)
    finally:
        writer.close()
    assert status == 408
    assert orjson.loads(body)["error"]["code"] == "body_timeout"


async def test_a_json_body_that_stalls_gets_408(aiohttp_client: Any, tmp_path: Path) -> None:
    client = await start(aiohttp_client, kv_settings(tmp_path, server_body_timeout_s="0.2"))
    reader, writer = await asyncio.open_connection(client.host, client.port)
    body = orjson.dumps({"model": TINY.name, "chunks": []})
    try:
        writer.write(
            b"POST /v1/kv/plan HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body[:5]
        )
        await writer.drain()
        status, _, answer = await _response(reader)
    finally:
        writer.close()
    assert status == 408
    assert orjson.loads(answer)["error"]["code"] == "body_timeout"


async def test_uploads_beyond_the_in_flight_budget_get_503_with_retry_after(
    aiohttp_client: Any, tmp_path: Path
) -> None:
    settings = kv_settings(
        tmp_path,
        kv_max_blob_bytes=str(MiB),
        kv_max_inflight_upload_bytes=str(MiB),
        kv_host_bytes="0",
    )
    client = await start(aiohttp_client, settings)
    tokens = MiB // blob_nbytes(1)  # one blob of 1 MiB fills the budget
    big = key_of(1)
    _, blob = variant(big, tokens=tokens)
    reader, writer = await asyncio.open_connection(client.host, client.port)
    try:
        # (No statistics: the in-process test server caps a header at 8 KiB.)
        writer.write(_put_head(big, _shape_header(tokens), len(blob)) + blob[: len(blob) // 2])
        await writer.drain()
        for _ in range(500):  # the first put is admitted and half received
            if await _gauge(client, "semcached_kv_upload_bytes_in_flight") == len(blob):
                break
            await asyncio.sleep(0.01)
        else:
            raise AssertionError("the first put was not admitted")

        small = key_of(2)
        _, small_blob = variant(small, tokens=16)
        refused = await put(client, small, small_blob, header_for(16))
        assert refused.status == 503
        assert await error_code(refused) == "uploads_busy"
        assert refused.headers["Retry-After"] == "1"
        assert await _gauge(client, "semcached_kv_uploads_refused_total") == 1

        writer.write(blob[len(blob) // 2 :])  # the first put completes
        await writer.drain()
        status, _, _ = await _response(reader)
        assert status == 201
    finally:
        writer.close()
    assert await _gauge(client, "semcached_kv_upload_bytes_in_flight") == 0
    assert (await put(client, small, small_blob, header_for(16))).status == 201


@pytest.mark.parametrize(("depth", "code"), [(300, "invalid_meta"), (3000, "invalid_json")])
async def test_a_put_with_unstorable_metadata_fails_alone_among_concurrent_puts(
    client: Client, depth: int, code: str
) -> None:
    """Defect 3 over HTTP: rope nested 300 deep (orjson's limit is 254) or deeper than
    msgspec decodes; before, the first failed the group commit it shared (500s) and
    the second was a 500 of its own."""
    nested = "[" * depth + "]" * depth  # spelt out: orjson cannot write it either
    bad = header_for(16).replace('"rope":{', '"rope":{"scaling":' + nested + ",")
    assert bad != header_for(16)

    async def one(i: int) -> tuple[int, int, str | None]:
        key = key_of(i)
        _, blob = variant(key, tokens=16, seed=i)
        response = await put(client, key, blob, bad if i == 4 else header_for(16))
        code = None if response.status < 400 else await error_code(response)
        return i, response.status, code

    results = await asyncio.gather(*(one(i) for i in range(8)))
    statuses = {i: (status, code) for i, status, code in results}
    bad_status, bad_code = statuses.pop(4)
    assert statuses == dict.fromkeys([0, 1, 2, 3, 5, 6, 7], (201, None))
    assert (bad_status, bad_code) == (400, code)
    stats = await (await client.get("/v1/kv/stats")).json()
    assert stats["variants"] == 7


# -- helpers -------------------------------------------------------------------------------


def _put_head(key: bytes, header: str, length: int) -> bytes:
    return (
        f"PUT /v1/kv/chunks/{key.hex()} HTTP/1.1\r\nHost: t\r\n{META}: {header}\r\n"
        f"Content-Type: application/octet-stream\r\nContent-Length: {length}\r\n\r\n"
    ).encode()


async def _response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response with a Content-Length body, read off a raw connection."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
    status_line, *lines = head.decode().split("\r\n")
    headers = {}
    for line in lines:
        if line:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return int(status_line.split()[1]), headers, body


async def _gauge(client: Client, name: str) -> float:
    text = await (await client.get("/metrics")).text()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                return float(sample.value)
    raise AssertionError(f"no metric {name}")
