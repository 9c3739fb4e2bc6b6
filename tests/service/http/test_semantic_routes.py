"""The semantic route group over HTTP: the happy paths, every bad input, and kill -9."""

from __future__ import annotations

import asyncio
import base64
import signal
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families

from semcached.clients import SemcachedClient
from semcached.errors import SemcachedError
from semcached.service.config import load_settings
from semcached.service.http.app import create_app
from semcached.service.http.appkeys import READINESS
from tests.daemon import DaemonProcess

DIM = 384
JSON_TYPE = {"Content-Type": "application/json"}
Client = TestClient[web.Request, web.Application]
ClientFactory = Callable[[web.Application], Awaitable[Client]]


def unit(seed: int) -> list[float]:
    v = np.random.default_rng(seed).standard_normal(DIM)
    return (v / np.linalg.norm(v)).tolist()


@pytest.fixture
async def client(aiohttp_client: ClientFactory, tmp_path: Path) -> Client:
    settings = load_settings(
        environ={
            "SEMCACHED_STORAGE_DATA_DIR": str(tmp_path / "data"),
            "SEMCACHED_EMBEDDING_BACKEND": "none",
            "SEMCACHED_SEMANTIC_NAMESPACES": "t1,t2",
            "SEMCACHED_SERVER_MAX_BODY_BYTES": str(64 * 1024),
        }
    )
    c = await aiohttp_client(create_app(settings))
    for _ in range(500):
        if c.app[READINESS].is_ready:
            return c
        await asyncio.sleep(0.01)
    raise AssertionError(c.app[READINESS].report())


async def post(client: Client, path: str, body: Any) -> tuple[int, Any, Any]:
    response = await client.post(path, json=body)
    return response.status, await response.json(), response.headers


async def test_insert_then_lookup_hit_and_miss(client: Client) -> None:
    status, created, _ = await post(
        client,
        "/v1/semantic/entries",
        {
            "namespace": "t1",
            "prompt": "hello",
            "response": {"text": "hi", "n": [1, 2]},
            "vector": unit(1),
            "category": "conversation",
            "partition": "m1",
        },
    )
    assert status == 201
    assert created["category"] == "conversation"

    status, hit, headers = await post(
        client,
        "/v1/semantic/lookup",
        {"namespace": "t1", "vector": unit(1), "category": "conversation", "partition": "m1"},
    )
    assert status == 200
    assert hit["hit"] is True
    assert hit["entry_id"] == created["entry_id"]
    assert hit["response"] == {"text": "hi", "n": [1, 2]}
    assert hit["strategy"] == "semantic"
    assert headers["X-Cache-Status"] == "HIT"
    assert float(headers["X-Semcached-Similarity"]) == pytest.approx(1.0, abs=1e-4)

    status, miss, headers = await post(
        client, "/v1/semantic/lookup", {"namespace": "t1", "vector": unit(2), "partition": "m1"}
    )
    assert status == 200
    assert miss["hit"] is False
    assert "response" not in miss
    assert headers["X-Cache-Status"] == "MISS"


async def test_base64_vectors_and_bytes_responses(client: Client) -> None:
    vector = np.asarray(unit(3), dtype="<f4")
    encoded = base64.b64encode(vector.tobytes()).decode()
    payload = base64.b64encode(b"\x00\xffraw").decode()
    status, _, _ = await post(
        client,
        "/v1/semantic/entries",
        {
            "namespace": "t1",
            "prompt": "p",
            "response": payload,
            "response_format": "bytes",
            "vector": encoded,
        },
    )
    assert status == 201
    _, hit, _ = await post(client, "/v1/semantic/lookup", {"namespace": "t1", "vector": encoded})
    assert hit["hit"]
    assert hit["response_format"] == "bytes"
    assert base64.b64decode(hit["response"]) == b"\x00\xffraw"


async def test_exact_text_lookup_and_embedding_disabled(client: Client) -> None:
    await post(
        client,
        "/v1/semantic/entries",
        {"namespace": "t1", "prompt": "What is 2+2?", "response": "4", "vector": unit(4)},
    )
    _, hit, _ = await post(
        client, "/v1/semantic/lookup", {"namespace": "t1", "text": "What is 2+2?"}
    )
    assert hit["hit"]
    assert hit["strategy"] == "exact"
    status, error, _ = await post(
        client, "/v1/semantic/lookup", {"namespace": "t1", "text": "What is 3+3?"}
    )
    assert status == 400
    assert error["error"]["code"] == "embedding_disabled"


async def test_an_exact_only_lookup_never_embeds(client: Client) -> None:
    # The daemon here has no embedder: a lookup that needed a vector would be a 400.
    await post(
        client,
        "/v1/semantic/entries",
        {"namespace": "t1", "prompt": "What is 2+2?", "response": "4", "vector": unit(4)},
    )
    exact = {"namespace": "t1", "exact_only": True}
    _, hit, _ = await post(client, "/v1/semantic/lookup", {**exact, "text": "What is 2+2?"})
    assert (hit["hit"], hit["strategy"]) == (True, "exact")
    status, miss, _ = await post(client, "/v1/semantic/lookup", {**exact, "text": "What is 3+3?"})
    assert status == 200
    assert (miss["hit"], miss["category"], miss["category_source"]) == (False, "default", "default")
    status, error, _ = await post(client, "/v1/semantic/lookup", {**exact, "vector": unit(4)})
    assert (status, error["error"]["code"]) == (400, "missing_field")


async def test_batch_entries_purge_and_stats(client: Client) -> None:
    ids = []
    for i in range(3):
        _, created, _ = await post(
            client,
            "/v1/semantic/entries",
            {"namespace": "t1", "prompt": f"q{i}", "response": i, "vector": unit(10 + i)},
        )
        ids.append(created["entry_id"])
    status, batch, _ = await post(
        client,
        "/v1/semantic/lookup:batch",
        {
            "lookups": [
                {"namespace": "t1", "vector": unit(10)},
                {"namespace": "t1", "vector": unit(99)},
            ]
        },
    )
    assert status == 200
    assert [r["hit"] for r in batch["results"]] == [True, False]

    entry = await client.get(f"/v1/semantic/entries/{ids[0]}", params={"namespace": "t1"})
    assert entry.status == 200
    body = await entry.json()
    assert (body["prompt"], body["response"], body["namespace"]) == ("q0", 0, "t1")
    other = await client.get(f"/v1/semantic/entries/{ids[0]}", params={"namespace": "t2"})
    assert other.status == 404  # another tenant cannot see it

    deleted = await client.delete(f"/v1/semantic/entries/{ids[0]}", params={"namespace": "t1"})
    assert deleted.status == 204
    again = await client.delete(f"/v1/semantic/entries/{ids[0]}", params={"namespace": "t1"})
    assert again.status == 404

    _, purged, _ = await post(client, "/v1/semantic/purge", {"namespace": "t1"})
    assert purged == {"purged": 2}

    stats = await (await client.get("/v1/semantic/stats")).json()
    assert stats["entries"] == 0
    assert stats["categories"]["default"]["inserts"] == 3
    assert stats["categories"]["default"]["hits"] == 1

    metrics = await (await client.get("/metrics")).text()
    families = {f.name: f for f in text_string_to_metric_families(metrics)}
    lookups = families["semcached_semantic_lookups"]
    assert lookups.type == "counter"
    samples = {(s.labels["category"], s.labels["result"]): s.value for s in lookups.samples}
    assert samples[("default", "hit")] == 1
    assert samples[("default", "miss")] == 1
    # Both lookups searched the index, one at a time: two calls of one query each.
    assert families["semcached_semantic_index_searches"].samples[0].value == 2
    assert families["semcached_semantic_index_queries"].samples[0].value == 2


GOOD = {"namespace": "t1", "prompt": "p", "response": "r", "vector": unit(5)}
BAD_INSERTS: list[tuple[str, Any, int, str | None]] = [
    # (case, body, status, field)
    ("wrong dimension", {**GOOD, "vector": [1.0, 2.0]}, 400, "vector"),
    (
        "NaN in base64",
        {**GOOD, "vector": base64.b64encode(np.full(DIM, np.nan, dtype="<f4").tobytes()).decode()},
        400,
        "vector",
    ),
    ("zero vector", {**GOOD, "vector": [0.0] * DIM}, 400, "vector"),
    ("vector of strings", {**GOOD, "vector": ["a"] * DIM}, 400, "vector"),
    ("bad base64", {**GOOD, "vector": "***"}, 400, "vector"),
    ("empty prompt", {**GOOD, "prompt": "  "}, 400, "prompt"),
    ("prompt not a string", {**GOOD, "prompt": 5}, 400, "prompt"),
    ("missing response", {k: v for k, v in GOOD.items() if k != "response"}, 400, "response"),
    ("unknown namespace", {**GOOD, "namespace": "t9"}, 400, "namespace"),
    ("malformed namespace", {**GOOD, "namespace": "a b"}, 400, "namespace"),
    ("missing namespace", {k: v for k, v in GOOD.items() if k != "namespace"}, 400, "namespace"),
    ("unknown category", {**GOOD, "category": "astrology"}, 400, "category"),
    ("negative ttl", {**GOOD, "ttl_s": -5}, 400, "ttl_s"),
    ("ttl not a number", {**GOOD, "ttl_s": "1h"}, 400, "ttl_s"),
    ("bad response_format", {**GOOD, "response_format": "xml"}, 400, "response_format"),
    ("bytes not base64", {**GOOD, "response_format": "bytes", "response": "%%"}, 400, "response"),
    ("unknown field", {**GOOD, "tll_s": 5}, 400, "tll_s"),
    ("partition not a string", {**GOOD, "partition": 3}, 400, "partition"),
]


@pytest.mark.parametrize(
    ("case", "body", "status", "field"), BAD_INSERTS, ids=[c[0] for c in BAD_INSERTS]
)
async def test_bad_inserts_are_4xx_and_store_nothing(
    client: Client, case: str, body: Any, status: int, field: str | None
) -> None:
    got, error, _ = await post(client, "/v1/semantic/entries", body)
    assert got == status, error
    assert error["error"]["field"] == field
    stats = await (await client.get("/v1/semantic/stats")).json()
    assert stats["entries"] == 0


BAD_LOOKUPS: list[tuple[str, Any, str | None]] = [
    ("no text or vector", {"namespace": "t1"}, "text"),
    ("empty text", {"namespace": "t1", "text": ""}, "text"),
    ("threshold out of range", {"namespace": "t1", "vector": unit(1), "threshold": 2}, "threshold"),
    (
        "threshold a string",
        {"namespace": "t1", "vector": unit(1), "threshold": "high"},
        "threshold",
    ),
    ("unknown category", {"namespace": "t1", "vector": unit(1), "category": "x"}, "category"),
    ("infinite value", {"namespace": "t1", "vector": [1e39] * DIM}, "vector"),
    ("boolean in vector", {"namespace": "t1", "vector": [True] + [0.5] * (DIM - 1)}, "vector"),
    ("nested vector", {"namespace": "t1", "vector": [[0.5] * DIM]}, "vector"),
]


@pytest.mark.parametrize(("case", "body", "field"), BAD_LOOKUPS, ids=[c[0] for c in BAD_LOOKUPS])
async def test_bad_lookups_are_400_naming_the_field(
    client: Client, case: str, body: Any, field: str | None
) -> None:
    status, error, _ = await post(client, "/v1/semantic/lookup", body)
    assert status == 400, error
    assert error["error"]["field"] == field


@pytest.mark.parametrize(
    ("data", "status", "code"),
    [
        (b"{not json", 400, "invalid_json"),
        (b'{"namespace": "t1", "text": "\xff\xfe"}', 400, "invalid_json"),  # not UTF-8
        (b"[]", 400, "invalid_json"),
        (b'{"namespace": "t1", "text": "' + b"x" * 70_000 + b'"}', 413, "payload_too_large"),
    ],
)
async def test_malformed_bodies(client: Client, data: bytes, status: int, code: str) -> None:
    response = await client.post("/v1/semantic/lookup", data=data, headers=JSON_TYPE)
    assert response.status == status
    assert (await response.json())["error"]["code"] == code


async def test_bad_batches(client: Client) -> None:
    for body in ({"lookups": []}, {"lookups": "x"}, {"lookups": [1]}, {}):
        status, error, _ = await post(client, "/v1/semantic/lookup:batch", body)
        assert status == 400
        assert error["error"]["field"] == "lookups"


async def test_bad_entry_ids(client: Client) -> None:
    for raw in ("abc", "-1", str(1 << 64)):
        response = await client.get(f"/v1/semantic/entries/{raw}", params={"namespace": "t1"})
        assert response.status == 400
    missing_ns = await client.get("/v1/semantic/entries/1")
    assert missing_ns.status == 400


def test_kill_9_during_inserts_keeps_every_acknowledged_entry(tmp_path: Path) -> None:
    data = tmp_path / "data"
    process = DaemonProcess(data)
    url = process.wait_ready()
    acknowledged: list[int] = []
    lock = threading.Lock()
    stop = threading.Event()

    def writer(worker: int) -> None:
        with SemcachedClient(url, timeout_s=5) as client:
            for i in range(10_000):
                if stop.is_set():
                    return
                try:
                    result = client.insert(
                        "t1", f"w{worker} prompt {i}", {"i": i}, vector=unit(worker * 100_000 + i)
                    )
                except SemcachedError:
                    return  # the daemon died under us: this one was not acknowledged
                with lock:
                    acknowledged.append(result.entry_id)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    while True:
        with lock:
            if len(acknowledged) >= 150:
                break
        threading.Event().wait(0.01)
    process.proc.send_signal(signal.SIGKILL)
    process.proc.wait(10)
    stop.set()
    for t in threads:
        t.join(10)
    with lock:
        acked = list(acknowledged)

    restarted = DaemonProcess(data)
    try:
        url = restarted.wait_ready()
        with SemcachedClient(url) as client:
            for entry_id in acked:
                assert client.get(entry_id, "t1").entry_id == entry_id
            assert client.stats()["default"].entries >= len(acked)
    finally:
        restarted.terminate()


async def test_a_batch_item_error_names_the_item_field(client: Client) -> None:
    for item, code, field in [
        ({"namespace": "t1", "vector": [True] * DIM}, "invalid_field", "vector"),
        ({"namespace": "t1", "vector": unit(1), "colour": 1}, "unknown_field", "colour"),
        ({"vector": unit(1)}, "missing_field", "namespace"),
        ({"namespace": "t9", "vector": unit(1)}, "unknown_namespace", "namespace"),
    ]:
        body = {"lookups": [{"namespace": "t1", "vector": unit(2)}, item]}
        status, error, _ = await post(client, "/v1/semantic/lookup:batch", body)
        assert (status, error["error"]["code"], error["error"]["field"]) == (400, code, field)


async def test_json_responses_are_stored_compact_and_served_as_sent(client: Client) -> None:
    data = (
        b'{"namespace": "t1", "prompt": "p", "vector": %s, "response": {"a": [1, 2.5, "\\u00e9"]}}'
    )
    response = await client.post(
        "/v1/semantic/entries", data=data % str(unit(7)).encode(), headers=JSON_TYPE
    )
    assert response.status == 201
    entry_id = (await response.json())["entry_id"]
    entry = await client.get(f"/v1/semantic/entries/{entry_id}", params={"namespace": "t1"})
    raw = await entry.read()
    assert b'"response":{"a":[1,2.5,"\xc3\xa9"]}' in raw
    assert (await entry.json())["size_bytes"] > 0


async def test_a_response_that_is_not_json_is_invalid_json(client: Client) -> None:
    body = b'{"namespace": "t1", "prompt": "p", "response": "\xff", "vector": [1.0]}'
    response = await client.post("/v1/semantic/entries", data=body, headers=JSON_TYPE)
    assert response.status == 400
    assert (await response.json())["error"]["code"] == "invalid_json"


async def test_purge_rejects_a_null_partition(client: Client) -> None:
    status, error, _ = await post(
        client, "/v1/semantic/purge", {"namespace": "t1", "partition": None}
    )
    assert (status, error["error"]["field"]) == (400, "partition")


@pytest.mark.parametrize("scale", [2e19, 3e38, 1e-30], ids=["2e19", "3e38", "1e-30"])
async def test_extreme_but_finite_vectors_are_normalised(client: Client, scale: float) -> None:
    # Issue 14 (7): a float32 sum of squares overflowed from components of about 2e19
    # (underflowed below 1e-23): an insert was a 500, a lookup a silent miss.
    vector = (np.asarray(unit(3)) * scale).tolist()
    status, created, _ = await post(
        client,
        "/v1/semantic/entries",
        {"namespace": "t1", "prompt": "big", "response": 1, "vector": vector},
    )
    assert status == 201, created
    status, hit, _ = await post(
        client, "/v1/semantic/lookup", {"namespace": "t1", "vector": vector}
    )
    assert (status, hit["hit"], hit["entry_id"]) == (200, True, created["entry_id"])
    status, hit, _ = await post(
        client, "/v1/semantic/lookup", {"namespace": "t1", "vector": unit(3)}
    )
    assert hit["entry_id"] == created["entry_id"]


@pytest.mark.parametrize("depth", [255, 300, 1100, 5000])
async def test_a_response_nested_too_deep_is_400_naming_the_response(
    client: Client, depth: int
) -> None:
    # Issue 14 (7): orjson stores at most 254 levels; deeper was a 500 (and past about
    # 1000 levels msgspec's own recursion limit was another 500).
    nested = "[" * depth + "]" * depth
    body = b'{"namespace": "t1", "prompt": "p", "vector": %s, "response": %s}' % (
        str(unit(4)).encode(),
        nested.encode(),
    )
    response = await client.post("/v1/semantic/entries", data=body, headers=JSON_TYPE)
    error = await response.json()
    assert response.status == 400, error
    assert (error["error"]["code"], error["error"]["field"]) == ("invalid_field", "response")
    stats = await (await client.get("/v1/semantic/stats")).json()
    assert stats["entries"] == 0


async def test_a_response_254_levels_deep_is_stored_and_served(client: Client) -> None:
    nested: Any = []
    for _ in range(253):
        nested = [nested]
    status, created, _ = await post(
        client,
        "/v1/semantic/entries",
        {"namespace": "t1", "prompt": "p", "response": nested, "vector": unit(5)},
    )
    assert status == 201, created
    status, hit, _ = await post(
        client, "/v1/semantic/lookup", {"namespace": "t1", "vector": unit(5)}
    )
    assert (status, hit["response"]) == (200, nested)
