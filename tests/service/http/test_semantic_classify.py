"""Category classification over HTTP: the reply fields, the stats, the metrics, reloads.

The daemon embeds with its ``http`` backend against an OpenAI-compatible embeddings
service run here on 127.0.0.1 that answers with the kit's bag-of-words vectors, so the
daemon's own code path (probe, batching, classification) is the real one.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientSession, web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from semcached.clients import AsyncSemcachedClient
from semcached.service.config import Settings, load_settings
from semcached.service.http.app import create_app, reload_settings
from semcached.service.http.appkeys import READINESS
from tests.daemon import DaemonProcess
from tests.service.semantic.kit import bow

DIM = 256
Client = TestClient[web.Request, web.Application]
ClientFactory = Callable[..., Awaitable[Client]]
ServerFactory = Callable[..., Awaitable[TestServer]]

CONFIG = """
[categories.code]
examples = ["python function list sort", "python class method compile", "java function bug"]

[categories.volatile]
examples = ["bitcoin price today now", "weather forecast today rain", "stock price now"]
"""
SWAPPED = """
[categories.factual]
examples = ["bitcoin price today now", "weather forecast today rain", "stock price now"]
"""


class BowService:
    """``POST /v1/embeddings`` with bag-of-words vectors; answers 500 while ``failing``."""

    def __init__(self) -> None:
        self.failing = False
        self.texts: list[str] = []

    async def handle(self, request: web.Request) -> web.Response:
        if self.failing:
            return web.json_response({"error": {"message": "down"}}, status=500)
        texts: list[str] = (await request.json())["input"]
        self.texts.extend(texts)
        data = [{"index": i, "embedding": bow(t, DIM).tolist()} for i, t in enumerate(texts)]
        return web.json_response({"object": "list", "data": data})


@pytest.fixture
async def service(aiohttp_server: ServerFactory) -> tuple[BowService, str]:
    bows = BowService()
    app = web.Application()
    app.router.add_post("/v1/embeddings", bows.handle)
    server = await aiohttp_server(app, host="127.0.0.1", port=0)
    return bows, str(server.make_url("/")).rstrip("/")


def environ(tmp_path: Path, url: str) -> dict[str, str]:
    return {
        "SEMCACHED_STORAGE_DATA_DIR": str(tmp_path / "data"),
        "SEMCACHED_EMBEDDING_BACKEND": "http",
        "SEMCACHED_EMBEDDING_HTTP_URL": url,
        "SEMCACHED_EMBEDDING_HTTP_TIMEOUT_S": "5",
    }


async def ready(client: Client) -> Client:
    for _ in range(1000):
        if client.app[READINESS].is_ready:
            return client
        await asyncio.sleep(0.01)
    raise AssertionError(client.app[READINESS].report())


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "semcached.toml"
    path.write_text(CONFIG)
    return path


@pytest.fixture
async def client(
    aiohttp_client: ClientFactory,
    tmp_path: Path,
    service: tuple[BowService, str],
    config: Path,
) -> Client:
    env = environ(tmp_path, service[1])

    def reread() -> Settings:
        return load_settings(config_file=config, environ=env)

    return await ready(await aiohttp_client(create_app(reread(), reread_settings=reread)))


async def post(client: Client, path: str, body: Any) -> tuple[int, Any]:
    response = await client.post(path, json=body)
    return response.status, await response.json()


async def stats(client: Client) -> Any:
    response = await client.get("/v1/semantic/stats")
    assert response.status == 200
    return await response.json()


async def test_unnamed_requests_are_classified_and_say_so(client: Client) -> None:
    status, created = await post(
        client,
        "/v1/semantic/entries",
        {"namespace": "t1", "prompt": "sort python list function", "response": "use sorted"},
    )
    assert status == 201
    assert (created["category"], created["category_source"]) == ("code", "inferred")
    assert created["category_confidence"] >= 0.5

    status, hit = await post(
        client, "/v1/semantic/lookup", {"namespace": "t1", "text": "python list sort function"}
    )
    assert status == 200
    assert hit["hit"] is True
    assert (hit["category"], hit["category_source"]) == ("code", "inferred")
    assert hit["category_confidence"] >= 0.5

    status, given = await post(
        client,
        "/v1/semantic/lookup",
        {"namespace": "t1", "text": "bitcoin price now", "category": "factual"},
    )
    assert (given["category"], given["category_source"], given["category_confidence"]) == (
        "factual",
        "given",
        None,
    )
    status, exact = await post(
        client, "/v1/semantic/lookup", {"namespace": "t1", "text": "sort python list function"}
    )
    assert (exact["strategy"], exact["category"], exact["category_source"]) == (
        "exact",
        "code",
        "entry",
    )
    status, vague = await post(client, "/v1/semantic/lookup", {"namespace": "t1", "text": "zebra"})
    assert (vague["category"], vague["category_source"], vague["category_confidence"]) == (
        "default",
        "default",
        None,
    )
    status, batch = await post(
        client,
        "/v1/semantic/lookup:batch",
        {"lookups": [{"namespace": "t1", "text": "bitcoin price today"}]},
    )
    assert (batch["results"][0]["category"], batch["results"][0]["category_source"]) == (
        "volatile",
        "inferred",
    )

    body = await stats(client)
    assert body["categories"]["code"]["inferred"] == 2
    assert body["categories"]["volatile"]["inferred"] == 1
    assert sum(c["below_floor"] for c in body["categories"].values()) == 1
    classification = body["classification"]
    assert classification["enabled"] is True
    assert classification["reason"] is None
    assert classification["examples"] == {"code": 3, "volatile": 3}
    assert classification["min_confidence"] == 0.5
    assert classification["unclassified"] == 0

    metrics = (await (await client.get("/metrics")).read()).decode()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(metrics)
        for s in family.samples
    }
    inferred = (("category", "code"), ("outcome", "inferred"))
    assert samples[("semcached_semantic_classified_total", inferred)] == 2
    assert samples[("semcached_semantic_classification_enabled", ())] == 1.0


async def test_a_reload_re_embeds_the_examples_and_swaps_them_in(
    client: Client, config: Path, service: tuple[BowService, str]
) -> None:
    bows, _ = service
    await asyncio.to_thread(config.write_text, SWAPPED)
    assert await reload_settings(client.app)
    assert "stock price now" in bows.texts
    body = await stats(client)
    assert body["classification"]["examples"] == {"factual": 3}
    assert body["classification"]["reloads"] == 1
    _, result = await post(
        client, "/v1/semantic/lookup", {"namespace": "t1", "text": "bitcoin price today"}
    )
    assert (result["category"], result["category_source"]) == ("factual", "inferred")


async def test_a_reload_that_cannot_embed_keeps_the_old_examples(
    client: Client, config: Path, service: tuple[BowService, str]
) -> None:
    bows, _ = service
    bows.failing = True
    # New texts: examples embedded before come from the embedding cache.
    await asyncio.to_thread(config.write_text, '[categories.code]\nexamples = ["rust borrow"]\n')
    assert not await reload_settings(client.app)
    body = await stats(client)
    assert body["classification"]["examples"] == {"code": 3, "volatile": 3}
    assert body["classification"]["reload_failures"] == 1
    assert "500" in body["classification"]["last_error"]
    bows.failing = False
    # The old examples still classify (the query's embedding works again).
    _, result = await post(
        client, "/v1/semantic/lookup", {"namespace": "t1", "text": "bitcoin price today"}
    )
    assert (result["category"], result["category_source"]) == ("volatile", "inferred")


async def test_a_config_file_that_no_longer_loads_changes_nothing(
    client: Client, config: Path, caplog: pytest.LogCaptureFixture
) -> None:
    await asyncio.to_thread(config.write_text, '[categories.code]\nexamples = "not a list"\n')
    assert not await reload_settings(client.app)
    assert "configuration not reloaded" in caplog.text
    assert "categories.code.examples: expected a list of strings" in caplog.text
    body = await stats(client)
    assert body["classification"]["examples"] == {"code": 3, "volatile": 3}
    assert body["classification"]["reloads"] == 0


async def test_the_async_client_exposes_the_new_fields(client: Client) -> None:
    async with AsyncSemcachedClient(str(client.make_url("/")).rstrip("/")) as semcached:
        created = await semcached.insert("t1", "weather today rain", {"t": "wet"})
        assert (created.category, created.category_source) == ("volatile", "inferred")
        assert created.category_confidence is not None
        result = await semcached.lookup("t1", "rain weather today")
        assert (result.category, result.category_source, result.hit) == (
            "volatile",
            "inferred",
            True,
        )
        assert result.category_confidence is not None
        assert (await semcached.stats())["volatile"].inferred == 2
        classification = await semcached.classification()
        assert classification is not None
        assert classification.enabled
        assert classification.examples == {"code": 3, "volatile": 3}


async def test_with_embedding_backend_none_classification_is_off(
    aiohttp_client: ClientFactory, tmp_path: Path, config: Path
) -> None:
    settings = load_settings(
        config_file=config,
        environ={
            "SEMCACHED_STORAGE_DATA_DIR": str(tmp_path / "data"),
            "SEMCACHED_EMBEDDING_BACKEND": "none",
            "SEMCACHED_EMBEDDING_DIM": str(DIM),
        },
    )
    client = await ready(await aiohttp_client(create_app(settings)))
    _, created = await post(
        client,
        "/v1/semantic/entries",
        {
            "namespace": "t1",
            "prompt": "python sort",
            "response": 1,
            "vector": bow("python", DIM).tolist(),
        },
    )
    assert (created["category"], created["category_source"]) == ("default", "default")
    classification = (await stats(client))["classification"]
    assert classification["enabled"] is False
    assert "embedding.backend is 'none'" in classification["reason"]
    assert classification["unclassified"] == 1


async def test_sighup_reloads_the_examples_in_the_real_daemon(
    tmp_path: Path, service: tuple[BowService, str], config: Path
) -> None:
    _, url = service
    daemon = DaemonProcess(
        tmp_path / "data",
        ["--config", str(config), "--embedding.backend", "http", "--embedding.http_url", url],
    )
    try:
        base = await asyncio.to_thread(daemon.wait_ready)
        async with ClientSession() as http:

            async def classification() -> Any:
                async with http.get(base + "/v1/semantic/stats") as response:
                    return (await response.json())["classification"]

            assert (await classification())["examples"] == {"code": 3, "volatile": 3}
            await asyncio.to_thread(config.write_text, SWAPPED)
            daemon.proc.send_signal(signal.SIGHUP)
            for _ in range(500):
                if (await classification())["reloads"]:
                    break
                await asyncio.sleep(0.02)
            assert (await classification())["examples"] == {"factual": 3}, daemon.log
        assert "configuration reloaded" in daemon.log
    finally:
        assert await asyncio.to_thread(daemon.terminate) == 0
