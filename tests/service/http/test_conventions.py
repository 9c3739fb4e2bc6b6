"""HTTP conventions: 405 with Allow, 415 for bodies that are not JSON, 408 for a stalled
body, and an OpenAPI document that declares every status a route answers with."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from semcached.service.config import Settings
from semcached.service.http.app import create_app
from semcached.service.http.appkeys import OPENAPI
from semcached.service.http.server import handler_options
from tests.service.http.test_app import ClientFactory, settings_for, wait_ready

Client = TestClient[web.Request, web.Application]
TOKEN = "conventions-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
JSON_TYPE = {"Content-Type": "application/json"}


async def started(aiohttp_client: ClientFactory, settings: Settings) -> Client:
    client = await aiohttp_client(create_app(settings))
    await wait_ready(client)
    return client


@pytest.fixture
async def client(aiohttp_client: ClientFactory, tmp_path: Path) -> Client:
    return await started(
        aiohttp_client,
        settings_for(
            tmp_path,
            server_auth_token=TOKEN,
            server_max_body_bytes="4096",
            embedding_dim="4",
            server_body_timeout_s="0.3",
            server_body_min_bytes_per_s="0",  # only the gap between reads counts here
        ),
    )


# --- 405 ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("DELETE", "/livez", {"GET"}),
        ("POST", "/v1/semantic/entries/1", {"GET", "DELETE"}),
        ("POST", "/v1/kv/chunks/" + "0" * 32, {"GET", "HEAD", "PUT", "DELETE"}),
    ],
)
async def test_405_says_which_methods_are_allowed(
    client: Client, method: str, path: str, allowed: set[str]
) -> None:
    # Issue 14 (8): the JSON 405 dropped aiohttp's Allow header.
    response = await client.request(method, path, headers=AUTH)
    assert response.status == 405
    assert {m.strip() for m in response.headers["Allow"].split(",")} == allowed
    assert (await response.json())["error"]["code"] == "method_not_allowed"


# --- 415 ------------------------------------------------------------------------------

LOOKUP = orjson.dumps({"namespace": "n", "vector": [1.0, 0.0, 0.0, 0.0]})


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/x-www-form-urlencoded", "application/octet-stream", "text/json"],
)
async def test_a_body_that_is_not_declared_json_is_415(client: Client, content_type: str) -> None:
    # Issue 14 (8): text/plain (and anything else) was parsed as JSON.
    response = await client.post(
        "/v1/semantic/lookup", data=LOOKUP, headers={**AUTH, "Content-Type": content_type}
    )
    assert response.status == 415
    assert (await response.json())["error"]["code"] == "unsupported_media_type"


@pytest.mark.parametrize(
    "content_type",
    [None, "application/json", "application/json; charset=utf-8", "application/vnd.x+json"],
)
async def test_json_and_an_absent_content_type_are_accepted(
    client: Client, content_type: str | None
) -> None:
    headers = dict(AUTH)
    if content_type is not None:
        headers["Content-Type"] = content_type
    # skip_auto_headers: without a Content-Type the client would add octet-stream.
    response = await client.post(
        "/v1/semantic/lookup", data=LOOKUP, headers=headers, skip_auto_headers=["Content-Type"]
    )
    assert response.status == 200, await response.text()


# --- 408 ------------------------------------------------------------------------------


async def test_a_stalled_json_body_is_408(client: Client) -> None:
    reader, writer = await asyncio.open_connection(client.host, client.port)
    writer.write(
        b"POST /v1/semantic/lookup HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Authorization: Bearer " + TOKEN.encode() + b"\r\nContent-Length: 100\r\n\r\n{"
    )
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
    writer.close()
    assert head.startswith(b"HTTP/1.1 408 ")


async def test_a_body_that_keeps_coming_is_read_whole(client: Client) -> None:
    async def slowly() -> Any:
        for i in range(0, len(LOOKUP), 8):
            yield LOOKUP[i : i + 8]
            await asyncio.sleep(0.05)  # each gap well under the 0.3 s limit, the whole over it

    response = await client.post(
        "/v1/semantic/lookup", data=slowly(), headers={**AUTH, **JSON_TYPE}
    )
    assert response.status == 200, await response.text()


# --- every status a route answers with is declared -------------------------------------


def _path(template: str, value: str) -> str:
    return template.replace("{id}", value).replace("{key}", value)


async def _probe(client: Client, method: str, path: str, **kwargs: Any) -> int:
    response = await client.request(method, path, **kwargs)
    if response.status >= 400 and method != "HEAD":
        body = await response.json()  # always the error document
        assert set(body) == {"error"}, body
    return response.status


async def _statuses(client: Client, method: str, template: str) -> set[int]:
    """Statuses from a battery of bad and odd requests to one operation."""
    got = set()
    hex_key = "0" * 32
    for value in ("1", hex_key, "zz", str(1 << 70)):
        path = _path(template, value)
        got.add(await _probe(client, method, path))  # no token
        got.add(await _probe(client, method, path, headers={"Authorization": "Bearer wrong"}))
        for query in ({}, {"namespace": "n"}, {"variant": "zz", "transfer": "carrier"}):
            got.add(await _probe(client, method, path, headers=AUTH, params=query))
        if method in ("POST", "PUT"):
            for body, headers in [
                (b"{", JSON_TYPE),
                (b"{}", JSON_TYPE),
                (b"[]", JSON_TYPE),
                (b"{}", {"Content-Type": "text/plain"}),
                (b"{" + b" " * 8192 + b"}", JSON_TYPE),
                (LOOKUP, JSON_TYPE),
            ]:
                got.add(await _probe(client, method, path, data=body, headers={**AUTH, **headers}))
    return got


async def test_every_status_a_route_answers_with_is_declared(
    aiohttp_client: ClientFactory, tmp_path: Path
) -> None:
    # Issue 14 (8): statuses such as 409 put_in_progress were missing from the document.
    # Every operation, with and without the KV cache, gets a battery of odd requests;
    # each status that comes back must be declared on that operation.
    apps = [
        settings_for(
            tmp_path / "on",
            server_auth_token=TOKEN,
            server_max_body_bytes="4096",
            embedding_dim="4",
        ),
        settings_for(tmp_path / "off", server_auth_token=TOKEN, kv_enabled="false"),
    ]
    seen: set[int] = set()
    for settings in apps:
        client = await started(aiohttp_client, settings)
        doc = client.app[OPENAPI]
        for template, operations in doc["paths"].items():
            for method, operation in operations.items():
                declared = {int(code) for code in operation["responses"]}
                got = await _statuses(client, method.upper(), template)
                seen |= got
                assert got <= declared, (method, template, got - declared)
    assert {400, 401, 404, 413, 415} <= seen


def test_the_put_in_progress_conflict_is_declared() -> None:
    from semcached.service.http.openapi import build_openapi
    from semcached.service.http.routes import DEFAULT_GROUPS

    doc = build_openapi(DEFAULT_GROUPS, bearer_auth=False)
    put = doc["paths"]["/v1/kv/chunks/{key}"]["put"]["responses"]
    assert {"200", "201", "400", "404", "409", "411", "413", "503", "507"} <= set(put)
    assert "4XX" not in put  # statuses are listed, not waved through as a range
    assert "401" not in put  # without a token nothing answers 401
    lookup = doc["paths"]["/v1/semantic/lookup"]["post"]["responses"]
    assert {"400", "408", "413", "415", "500", "503"} <= set(lookup)


def test_handler_options_are_the_settings() -> None:
    settings = settings_for(Path("/nonexistent"), server_keepalive_timeout_s="12.5")
    assert handler_options(settings)["keepalive_timeout"] == 12.5
