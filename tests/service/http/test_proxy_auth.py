"""Whose key goes where: the caller's Authorization reaches the upstream and nothing else
(not the store, not the log); the daemon's own token never leaves the daemon; the
proxy routes do not exist unless an upstream is configured."""

from __future__ import annotations

import logging
from pathlib import Path

import openai
import pytest
from aiohttp import ClientSession

from tests.service.http.proxy_kit import UPSTREAM_KEY, ServerFactory, proxied, start_daemon
from tests.service.http.test_app import settings_for

MODEL = "gpt-test"
DAEMON_TOKEN = "daemon-token-0815"
MESSAGES = [{"role": "user", "content": "who holds the key"}]


def files_contain(root: Path, needle: bytes) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]


async def test_authorization_goes_upstream_and_nowhere_else(
    aiohttp_server: ServerFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    daemon = await proxied(aiohttp_server, tmp_path)
    client = daemon.async_openai()
    for stream in (False, True):
        prompt = f"who holds the key, streamed={stream}"
        for _ in range(2):
            result = await client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": prompt}], stream=stream
            )
            if stream:
                _ = [chunk async for chunk in result]  # type: ignore[union-attr]
    assert daemon.upstream.authorizations == [f"Bearer {UPSTREAM_KEY}"] * 2
    await daemon.server.close()  # LMDB written through and closed
    data = tmp_path / "data"
    assert any(data.rglob("*.mdb"))
    assert files_contain(data, b"who holds the key")  # the entries are there...
    assert files_contain(data, UPSTREAM_KEY.encode()) == []  # ...the key is not
    assert UPSTREAM_KEY not in caplog.text


async def test_with_auth_the_daemon_token_travels_apart(
    aiohttp_server: ServerFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    daemon = await proxied(aiohttp_server, tmp_path, server_auth_token=DAEMON_TOKEN)
    # The upstream's key in Authorization, the daemon's in X-Semcached-Token.
    client = daemon.async_openai(default_headers={"X-Semcached-Token": DAEMON_TOKEN})
    await client.chat.completions.create(model=MODEL, messages=MESSAGES)
    assert daemon.upstream.authorizations == [f"Bearer {UPSTREAM_KEY}"]
    # Without the daemon's token: 401 (the upstream's key is not one), nothing sent on.
    with pytest.raises(openai.AuthenticationError):
        await daemon.async_openai().chat.completions.create(model=MODEL, messages=MESSAGES)
    # The daemon's token in Authorization authenticates but is never sent upstream.
    own = daemon.async_openai(api_key=DAEMON_TOKEN)
    await own.chat.completions.create(
        model=MODEL, messages=MESSAGES, extra_headers={"Cache-Control": "no-cache"}
    )
    assert daemon.upstream.authorizations == [f"Bearer {UPSTREAM_KEY}", None]
    assert DAEMON_TOKEN not in caplog.text
    assert UPSTREAM_KEY not in caplog.text


async def test_a_configured_upstream_key_replaces_the_callers(
    aiohttp_server: ServerFactory, tmp_path: Path
) -> None:
    daemon = await proxied(
        aiohttp_server,
        tmp_path,
        server_auth_token=DAEMON_TOKEN,
        proxy_upstream_api_key="sk-configured",
    )
    client = daemon.async_openai(api_key=DAEMON_TOKEN)
    answer = await client.chat.completions.create(model=MODEL, messages=MESSAGES)
    assert answer.choices[0].message.content
    assert daemon.upstream.authorizations == ["Bearer sk-configured"]


async def test_no_upstream_no_proxy(aiohttp_server: ServerFactory, tmp_path: Path) -> None:
    server = await start_daemon(aiohttp_server, settings_for(tmp_path))
    async with ClientSession(str(server.make_url(""))) as http:
        for path in ("/v1/chat/completions", "/v1/completions"):
            response = await http.post(path, json={"model": MODEL, "messages": MESSAGES})
            assert response.status == 404
        document = await (await http.get("/v1/openapi.json")).json()
    assert "/v1/chat/completions" not in document["paths"]
    assert "/v1/completions" not in document["paths"]
    assert "proxy" not in {tag["name"] for tag in document.get("tags", [])}


async def test_the_proxy_is_in_the_openapi_document_when_on(
    aiohttp_server: ServerFactory, tmp_path: Path
) -> None:
    daemon = await proxied(aiohttp_server, tmp_path)
    async with ClientSession(daemon.url) as http:
        document = await (await http.get("/v1/openapi.json")).json()
    operation = document["paths"]["/v1/chat/completions"]["post"]
    assert {"200", "502", "504"} <= set(operation["responses"])
    assert "/v1/completions" in document["paths"]
