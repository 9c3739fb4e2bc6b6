"""The Qdrant-compatible routes over plain HTTP: shapes, errors, partitions, tokens."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
from openapi_spec_validator import validate

from semcached.service.http.appkeys import OPENAPI
from tests.service.http.tenancy_kit import (
    DIM,
    TOKENS,
    Client,
    start,
    tenancy_settings,
    vector,
)
from tests.service.http.test_kv_routes import kv_settings

KEY = "litellm_cache_key"
C = "/collections/cache"


def qdrant_settings(tmp_path: Path, **env: str) -> Any:
    return kv_settings(tmp_path, qdrant_enabled="true", embedding_dim=str(DIM), **env)


@pytest.fixture
async def client(aiohttp_client: Any, tmp_path: Path) -> Client:
    return await start(aiohttp_client, qdrant_settings(tmp_path))


def in_partition(value: str) -> dict[str, Any]:
    return {"must": [{"key": KEY, "match": {"value": value}}]}


def point(seed: int, key: str = "k1", **payload: Any) -> dict[str, Any]:
    return {
        "id": str(uuid.UUID(int=seed)),
        "vector": vector(seed),
        "payload": {KEY: key, "text": f"prompt {seed}", "response": f"answer {seed}", **payload},
    }


async def make(client: Client, path: str = C, *, index: bool = True) -> None:
    created = await client.put(path, json={"vectors": {"size": DIM, "distance": "Cosine"}})
    assert created.status == 200, await created.text()
    assert (await created.json())["result"] is True
    if index:
        indexed = await client.put(
            f"{path}/index", json={"field_name": KEY, "field_schema": "keyword"}
        )
        assert indexed.status == 200, await indexed.text()


async def search(client: Client, seed: int, key: str = "k1", **extra: Any) -> Any:
    body = {"vector": vector(seed), "limit": 1, "with_payload": True, "filter": in_partition(key)}
    response = await client.post(f"{C}/points/search", json={**body, **extra})
    return response.status, await response.json()


async def qdrant_error(response: Any, status: int) -> str:
    """The message of a Qdrant-shaped error answer with ``status``."""
    assert response.status == status, await response.text()
    body = await response.json()
    assert set(body) == {"status", "time"}
    message: str = body["status"]["error"]
    return message


async def test_create_then_exists_and_describe(client: Client) -> None:
    before = await (await client.get(f"{C}/exists")).json()
    assert before["result"] == {"exists": False}
    assert before["status"] == "ok"
    await make(client)
    assert (await (await client.get(f"{C}/exists")).json())["result"] == {"exists": True}
    info = (await (await client.get(C)).json())["result"]
    assert info["config"]["params"]["vectors"] == {"size": DIM, "distance": "Cosine"}
    assert info["payload_schema"][KEY]["data_type"] == "keyword"
    again = await client.put(C, json={"vectors": {"size": DIM, "distance": "Cosine"}})
    assert "already exists" in await qdrant_error(again, 409)


async def test_upsert_then_search_answers_id_score_and_payload(client: Client) -> None:
    await make(client)
    upsert = await client.put(f"{C}/points?wait=true", json={"points": [point(1), point(2)]})
    assert upsert.status == 200
    assert (await upsert.json())["result"]["status"] == "completed"
    status, body = await search(client, 1)
    assert status == 200
    [found] = body["result"]
    assert found["id"] == str(uuid.UUID(int=1))
    assert found["score"] == pytest.approx(1.0, abs=1e-5)
    assert found["payload"] == point(1)["payload"]
    status, body = await search(client, 1, with_payload=False)
    assert body["result"][0]["payload"] is None
    status, body = await search(client, 1, with_payload=["response"])
    assert body["result"][0]["payload"] == {"response": "answer 1"}


async def test_points_never_match_across_the_partition_field(client: Client) -> None:
    await make(client)
    await client.put(f"{C}/points", json={"points": [point(1, key="k1")]})
    assert (await search(client, 1, key="k2"))[1]["result"] == []
    assert len((await search(client, 1, key="k1"))[1]["result"]) == 1


async def test_the_same_id_upserted_again_replaces_the_point(client: Client) -> None:
    await make(client)
    await client.put(f"{C}/points", json={"points": [point(1)]})
    newer = {**point(1), "payload": {KEY: "k1", "response": "newer"}}
    await client.put(f"{C}/points", json={"points": [newer]})
    _, body = await search(client, 1)
    assert body["result"][0]["payload"]["response"] == "newer"


async def test_score_threshold_and_a_far_vector_answer_nothing(client: Client) -> None:
    await make(client)
    await client.put(f"{C}/points", json={"points": [point(1)]})
    # Another seed's random vector: far below the category's min_threshold.
    assert (await search(client, 99))[1]["result"] == []
    near = [x + 0.3 for x in vector(1)]
    _, body = await search(client, 1, vector=near)
    assert 0.5 < body["result"][0]["score"] < 1.0
    below = body["result"][0]["score"] + 0.01
    assert (await search(client, 1, vector=near, score_threshold=below))[1]["result"] == []


async def test_unknown_collection_is_404(client: Client) -> None:
    for method, path, body in (
        ("GET", "/collections/nope", None),
        ("PUT", "/collections/nope/points", {"points": [point(1)]}),
        ("POST", "/collections/nope/points/search", {"vector": vector(1), "limit": 1}),
        ("PUT", "/collections/nope/index", {"field_name": KEY, "field_schema": "keyword"}),
    ):
        response = await client.request(method, path, json=body)
        assert "doesn't exist" in await qdrant_error(response, 404), path


async def test_a_wrong_dimension_is_400(client: Client) -> None:
    wrong = await client.put(C, json={"vectors": {"size": DIM + 1, "distance": "Cosine"}})
    assert f"{DIM} dimensions" in await qdrant_error(wrong, 400)
    await make(client)
    short = {**point(1), "vector": [1.0, 0.0]}
    assert "dimensions" in await qdrant_error(
        await client.put(f"{C}/points", json={"points": [short]}), 400
    )
    status, body = await search(client, 1, vector=[1.0, 0.0])
    assert status == 400
    assert "dimensions" in body["status"]["error"]


async def test_bad_bodies_and_unserved_options_are_400(client: Client) -> None:
    dot = await client.put(C, json={"vectors": {"size": DIM, "distance": "Dot"}})
    assert "Cosine" in await qdrant_error(dot, 400)
    await make(client)
    for body in (
        {"points": []},
        {"points": [{**point(1), "id": "not-a-uuid"}]},
        {"points": [{**point(1), "id": -1}]},
        {"points": [{**point(1), "payload": {KEY: 7}}]},
        {"batch": {"ids": [1], "vectors": [vector(1)]}},
        {"points": [{**point(1), "vector": "abc"}]},
    ):
        response = await client.put(f"{C}/points", json=body)
        await qdrant_error(response, 400)
    for extra in (
        {"filter": None},  # a partitioned collection: its filter is required
        {"filter": {"must": [{"key": "other", "match": {"value": "x"}}]}},
        {"filter": {"should": [{"key": KEY, "match": {"value": "x"}}]}},
        {"filter": {"must": [{"key": KEY, "match": {"any": ["x"]}}]}},
        {"limit": 0},
    ):
        status, body = await search(client, 1, **extra)
        assert status == 400, extra
        assert "error" in body["status"]
    not_json = await client.post(
        f"{C}/points/search", data=b"{", headers={"Content-Type": "application/json"}
    )
    await qdrant_error(not_json, 400)
    text = await client.put(f"{C}/index", json={"field_name": KEY, "field_schema": "text"})
    assert "keyword" in await qdrant_error(text, 400)
    bad_name = await client.get("/collections/a%20b/exists")
    await qdrant_error(bad_name, 400)


async def test_the_partition_index_comes_before_points(client: Client) -> None:
    await make(client, index=False)
    await client.put(f"{C}/points", json={"points": [point(1)]})
    late = await client.put(f"{C}/index", json={"field_name": KEY, "field_schema": "keyword"})
    assert "points" in await qdrant_error(late, 400)
    # Unpartitioned: searched without a filter.
    response = await client.post(f"{C}/points/search", json={"vector": vector(1), "limit": 1})
    assert len((await response.json())["result"]) == 1


async def test_delete_removes_the_collection_and_its_points(client: Client) -> None:
    await make(client)
    await client.put(f"{C}/points", json={"points": [point(1)]})
    assert (await (await client.delete(C)).json())["result"] is True
    assert (await (await client.get(f"{C}/exists")).json())["result"] == {"exists": False}
    await make(client)
    assert (await search(client, 1))[1]["result"] == []  # the old points went with it


async def test_collections_survive_a_restart(aiohttp_client: Any, tmp_path: Path) -> None:
    first = await start(aiohttp_client, qdrant_settings(tmp_path))
    await make(first)
    await first.put(f"{C}/points", json={"points": [point(1)]})
    await first.close()
    second = await start(aiohttp_client, qdrant_settings(tmp_path))
    assert (await (await second.get(f"{C}/exists")).json())["result"] == {"exists": True}
    assert len((await search(second, 1))[1]["result"]) == 1


async def test_the_group_is_absent_unless_enabled(aiohttp_client: Any, tmp_path: Path) -> None:
    client = await start(aiohttp_client, kv_settings(tmp_path))
    assert (await client.get(f"{C}/exists")).status == 404
    assert not any(p.startswith("/collections") for p in client.app[OPENAPI]["paths"])


async def test_tokens_come_in_qdrants_api_key_header(aiohttp_client: Any, tmp_path: Path) -> None:
    settings = tenancy_settings(tmp_path, qdrant_enabled="true", qdrant_namespace_prefix="acme-")
    client = await start(aiohttp_client, settings)
    validate(client.app[OPENAPI])
    search_doc = client.app[OPENAPI]["paths"]["/collections/{name}/points/search"]["post"]
    assert search_doc["x-semcached-scope"] == "semantic:read"
    assert {"401", "403"} <= set(search_doc["responses"])

    def key(name: str) -> dict[str, str]:
        return {"api-key": TOKENS[name]}

    body = {"vectors": {"size": DIM, "distance": "Cosine"}}
    assert (await client.get(f"{C}/exists")).status == 401
    assert (await client.put(C, json=body, headers=key("acme_ro"))).status == 403
    # bobco's token: the namespace acme-cache is not its own (Qdrant's error shape).
    other = await client.put(C, json=body, headers=key("bob"))
    assert "namespace" in await qdrant_error(other, 403)
    assert (await client.put(C, json=body, headers=key("acme_rw"))).status == 200
    exists = await client.get(f"{C}/exists", headers=key("acme_ro"))
    assert (await exists.json())["result"] == {"exists": True}
