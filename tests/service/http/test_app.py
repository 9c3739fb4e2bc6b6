"""The application in-process: errors, auth, metrics, OpenAPI, admin routes."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from openapi_spec_validator import validate
from prometheus_client.parser import text_string_to_metric_families

from semcached.service.config import Settings, load_settings
from semcached.service.http.app import create_app
from semcached.service.http.appkeys import OPENAPI, READINESS
from semcached.service.http.routes import DEFAULT_GROUPS

JSON_TYPE = {"Content-Type": "application/json"}
ClientFactory = Callable[[web.Application], Awaitable[TestClient[web.Request, web.Application]]]


def settings_for(tmp_path: Path, **env: str) -> Settings:
    environ = {
        "SEMCACHED_STORAGE_DATA_DIR": str(tmp_path / "data"),
        "SEMCACHED_EMBEDDING_BACKEND": "none",
    }
    environ.update({f"SEMCACHED_{k.upper()}": v for k, v in env.items()})
    return load_settings(environ=environ)


async def wait_ready(client: TestClient[web.Request, web.Application]) -> None:
    for _ in range(500):
        if client.app[READINESS].is_ready:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"not ready: {client.app[READINESS].report()}")


@pytest.fixture
async def client(
    aiohttp_client: ClientFactory, tmp_path: Path
) -> TestClient[web.Request, web.Application]:
    c = await aiohttp_client(create_app(settings_for(tmp_path, server_max_body_bytes="2048")))
    await wait_ready(c)
    return c


def assert_error(body: Any, code: str) -> None:
    assert set(body) == {"error"}
    assert body["error"]["code"] == code
    assert isinstance(body["error"]["message"], str)
    assert body["error"]["message"]


async def test_probes(client: TestClient[web.Request, web.Application]) -> None:
    live = await client.get("/livez")
    assert live.status == 200
    ready = await client.get("/readyz")
    assert ready.status == 200
    assert await ready.json() == {"status": "ready"}


async def test_readiness_turns_503_on_shutdown(
    client: TestClient[web.Request, web.Application],
) -> None:
    client.app[READINESS].begin_shutdown()
    response = await client.get("/readyz")
    assert response.status == 503
    assert (await response.json())["status"] == "shutting_down"
    assert (await client.get("/livez")).status == 200


async def test_readiness_is_503_until_components_open(
    aiohttp_client: ClientFactory, tmp_path: Path
) -> None:
    app = create_app(settings_for(tmp_path))
    gate = asyncio.Event()

    class SlowIndex:
        name = "slow index"

        async def open(self) -> None:
            await gate.wait()

        async def close(self) -> None:
            pass

    from semcached.service.http.appkeys import COMPONENTS

    app[COMPONENTS].add(SlowIndex())
    client = await aiohttp_client(app)
    response = await client.get("/readyz")
    assert response.status == 503
    body = await response.json()
    assert body["status"] == "starting"
    assert "slow index" in body["waiting_for"]
    gate.set()
    await wait_ready(client)
    assert (await client.get("/readyz")).status == 200


async def test_unknown_route_is_json_404(client: TestClient[web.Request, web.Application]) -> None:
    response = await client.get("/no/such/route")
    assert response.status == 404
    assert response.content_type == "application/json"
    assert_error(await response.json(), "not_found")


async def test_wrong_method_is_json_405(client: TestClient[web.Request, web.Application]) -> None:
    response = await client.delete("/livez")
    assert response.status == 405
    assert_error(await response.json(), "method_not_allowed")


@pytest.mark.parametrize(
    ("body", "code", "field"),
    [
        (b"{not json", "invalid_json", None),
        (b"", "invalid_json", None),
        (b"[1, 2]", "invalid_json", None),
        (b'{"level": 3}', "invalid_field", "level"),
        (b'{"level": "loud"}', "invalid_field", "level"),
        (b'{"level": "info", "extra": 1}', "unknown_field", "extra"),
    ],
)
async def test_malformed_bodies_are_json_400(
    client: TestClient[web.Request, web.Application], body: bytes, code: str, field: str | None
) -> None:
    response = await client.put("/v1/admin/log-level", data=body, headers=JSON_TYPE)
    assert response.status == 400
    doc = await response.json()
    assert_error(doc, code)
    assert doc["error"].get("field") == field


async def test_body_over_limit_is_json_413(
    client: TestClient[web.Request, web.Application],
) -> None:
    response = await client.put(
        "/v1/admin/log-level", data=b"{" + b" " * 4096 + b"}", headers=JSON_TYPE
    )
    assert response.status == 413
    assert_error(await response.json(), "payload_too_large")


async def test_handler_crash_is_json_500_without_traceback(
    aiohttp_client: ClientFactory, tmp_path: Path
) -> None:
    app = create_app(settings_for(tmp_path))

    async def boom(request: web.Request) -> web.Response:
        raise RuntimeError("secret internals")

    app.router.add_get("/boom", boom)
    client = await aiohttp_client(app)
    response = await client.get("/boom")
    assert response.status == 500
    text = await response.text()
    assert "secret internals" not in text
    assert "Traceback" not in text
    assert_error(await response.json(), "internal_error")


async def test_admin_log_level(client: TestClient[web.Request, web.Application]) -> None:
    import logging

    response = await client.put("/v1/admin/log-level", json={"level": "debug"})
    assert response.status == 200
    assert logging.getLogger("semcached").level == logging.DEBUG
    await client.put("/v1/admin/log-level", json={"level": "info"})
    assert logging.getLogger("semcached").level == logging.INFO


async def test_admin_config_redacts_token(aiohttp_client: ClientFactory, tmp_path: Path) -> None:
    app = create_app(settings_for(tmp_path, server_auth_token="tok"))
    client = await aiohttp_client(app)
    response = await client.get("/v1/admin/config", headers={"Authorization": "Bearer tok"})
    assert response.status == 200
    assert (await response.json())["server"]["auth_token"] == "***"


async def test_bearer_token_guards_v1_but_not_probes(
    aiohttp_client: ClientFactory, tmp_path: Path
) -> None:
    client = await aiohttp_client(create_app(settings_for(tmp_path, server_auth_token="tok")))
    await wait_ready(client)
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "tok"}):
        response = await client.get("/v1/admin/config", headers=headers)
        assert response.status == 401
        assert_error(await response.json(), "unauthorized")
        # RFC 6750: a 401 says which scheme to use, and whether the token sent was bad.
        challenge = response.headers["WWW-Authenticate"]
        assert challenge.startswith('Bearer realm="semcached"')
        assert ('error="invalid_token"' in challenge) == bool(headers)
    ok = await client.get("/v1/admin/config", headers={"Authorization": "Bearer tok"})
    assert ok.status == 200
    for open_path in ("/livez", "/readyz", "/metrics", "/v1/openapi.json"):
        assert (await client.get(open_path)).status == 200, open_path


async def test_metrics_follow_prometheus_conventions(
    client: TestClient[web.Request, web.Application],
) -> None:
    await client.get("/livez")
    await client.get("/nope/123")
    response = await client.get("/metrics")
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(await response.text())}
    ours = [name for name in families if name.startswith("semcached_")]
    assert families["semcached_build_info"].samples[0].labels["version"]
    assert "semcached_http_requests" in families
    assert families["semcached_http_requests"].type == "counter"
    assert families["semcached_http_request_duration_seconds"].type == "histogram"
    assert families["semcached_ready"].samples[0].value == 1.0
    routes = {s.labels["route"] for s in families["semcached_http_requests"].samples}
    assert "/livez" in routes
    assert "/nope/123" not in routes
    assert "unmatched" in routes
    for name in ours:
        if families[name].type == "counter":
            assert all(s.name.endswith("_total") for s in families[name].samples), name


async def test_openapi_is_valid_and_matches_routes(
    client: TestClient[web.Request, web.Application],
) -> None:
    response = await client.get("/v1/openapi.json")
    doc = await response.json()
    validate(doc)
    documented = {(path, method.upper()) for path, ops in doc["paths"].items() for method in ops}
    registered = {
        (route.resource.canonical, route.method)
        for route in client.app.router.routes()
        if route.resource is not None
    }
    assert documented == registered
    assert doc == client.app[OPENAPI]


def test_route_groups_have_unique_operation_ids() -> None:
    ids = [op.spec["operationId"] for g in DEFAULT_GROUPS for op in g.operations]
    assert len(ids) == len(set(ids))


async def test_openapi_shows_the_constraints_of_the_structs(
    client: TestClient[web.Request, web.Application],
) -> None:
    doc = await (await client.get("/v1/openapi.json")).json()
    schemas = doc["components"]["schemas"]
    lookup = doc["paths"]["/v1/semantic/lookup"]["post"]
    assert lookup["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/SemanticLookup"
    }
    assert schemas["SemanticLookup"]["additionalProperties"] is False
    assert schemas["SemanticLookup"]["properties"]["namespace"]["pattern"]
    batch = schemas["SemanticLookupBatch"]["properties"]["lookups"]
    assert (batch["minItems"], batch["maxItems"]) == (1, 256)  # semantic.max_batch
    vector = schemas["SemanticInsert"]["properties"]["vector"]["anyOf"][0]["anyOf"][0]
    assert vector["minItems"] == vector["maxItems"] == 384  # embedding.dim (backend none)
    assert schemas["KvPlanRequest"]["properties"]["chunks"]["maxItems"] == 1024
    assert schemas["ChunkPutMeta"]["properties"]["dtype"]["enum"]
    assert schemas["LogLevel"]["properties"]["level"]["enum"] == [
        "debug",
        "error",
        "info",
        "warning",
    ]
    read = doc["paths"]["/v1/kv/chunks/{key}"]["get"]["parameters"]
    assert [(p["name"], p["in"]) for p in read] == [
        ("key", "path"),
        ("variant", "query"),
        ("transfer", "query"),
        ("device", "query"),
        ("lease_s", "query"),
    ]
    assert sorted(read[2]["schema"]["enum"]) == ["cuda", "http", "shm"]


async def _hang_up_mid_body(host: str, port: int) -> dict[str, float]:
    """Send half a body, hang up; the statuses counted for the route."""
    _reader, writer = await asyncio.open_connection(host, port)
    writer.write(
        b"PUT /v1/admin/log-level HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 1000\r\n\r\n{"
    )
    await writer.drain()
    await asyncio.sleep(0.1)  # the handler is reading the body
    writer.close()
    await writer.wait_closed()
    statuses: dict[str, float] = {}
    async with aiohttp.ClientSession() as session:
        for _ in range(200):
            async with session.get(f"http://{host}:{port}/metrics") as response:
                text = await response.text()
            statuses = {
                s.labels["status"]: s.value
                for f in text_string_to_metric_families(text)
                if f.name == "semcached_http_requests"
                for s in f.samples
                if s.labels.get("route") == "/v1/admin/log-level"
            }
            if statuses:
                break
            await asyncio.sleep(0.01)
    return statuses


async def test_a_client_that_hangs_up_mid_body_is_counted_499_not_500(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Issue 14 (7): the handler's read failed with "Connection lost", which was logged
    # with a traceback and counted as a 500, the daemon's fault. Served as serve()
    # serves it (handler_cancellation off: the read fails, the handler is not cancelled).
    runner = web.AppRunner(create_app(settings_for(tmp_path)))
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        assert await _hang_up_mid_body("127.0.0.1", site.port) == {"499": 1.0}
    finally:
        await runner.cleanup()
    assert "unhandled error" not in caplog.text


async def test_a_cancelled_handler_of_a_client_that_hung_up_is_counted_499(
    client: TestClient[web.Request, web.Application],
) -> None:
    # aiohttp's test server cancels the handler of a client that hangs up.
    assert await _hang_up_mid_body(str(client.host), int(client.port or 0)) == {"499": 1.0}
