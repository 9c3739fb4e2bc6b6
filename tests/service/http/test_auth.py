"""Tokens over HTTP: the 401/403/429 answers, hashed storage, reloads, quotas, old data."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
from pathlib import Path
from typing import Any

import pytest
from openapi_spec_validator import validate
from prometheus_client.parser import text_string_to_metric_families

from semcached.errors import ConfigError
from semcached.service.auth.tenants import TenantLimits
from semcached.service.auth.tokens import load_tokens_file, token_digest
from semcached.service.http.app import create_app, reload_tokens
from semcached.service.http.appkeys import AUTH, OPENAPI
from tests.service.http.tenancy_kit import (
    RW,
    TOKENS,
    Client,
    auth,
    digest,
    put_header,
    start,
    tenancy_settings,
    tokens_file_text,
    vector,
)
from tests.service.http.test_kv_routes import kv_settings
from tests.service.kv.kit import key_of, variant

CHALLENGE = 'Bearer realm="semcached"'


@pytest.fixture
async def client(aiohttp_client: Any, tmp_path: Path) -> Client:
    return await start(aiohttp_client, tenancy_settings(tmp_path))


async def insert(client: Client, token: str, namespace: str, n: int) -> Any:
    body = {"namespace": namespace, "prompt": f"p{n}", "response": n, "vector": vector(n)}
    return await client.post("/v1/semantic/entries", json=body, headers=auth(token))


async def test_401_says_how_to_authenticate(client: Client) -> None:
    missing = await client.get("/v1/kv/models")
    assert missing.status == 401
    assert missing.headers["WWW-Authenticate"] == CHALLENGE
    assert (await missing.json())["error"]["code"] == "unauthorized"
    wrong = await client.get("/v1/kv/models", headers=auth("bad"))
    assert wrong.status == 401
    assert wrong.headers["WWW-Authenticate"] == f'{CHALLENGE}, error="invalid_token"'
    for header in ("Basic abc", "Bearer", "bearer  ", TOKENS["ops"]):  # no scheme
        response = await client.get("/v1/kv/models", headers={"Authorization": header})
        assert response.status == 401, header
    lower = await client.get("/v1/kv/models", headers={"Authorization": f"bearer {TOKENS['bob']}"})
    assert lower.status == 200  # the scheme is case-insensitive (RFC 7235)


async def test_qdrants_api_key_header_carries_a_token(client: Client) -> None:
    ok = await client.get("/v1/kv/models", headers={"api-key": TOKENS["bob"]})
    assert ok.status == 200
    wrong = await client.get("/v1/kv/models", headers={"api-key": "bad"})
    assert wrong.status == 401
    # Authorization, when sent, is the one read: a bad one is not rescued by api-key.
    both = await client.get("/v1/kv/models", headers={**auth("bad"), "api-key": TOKENS["bob"]})
    assert both.status == 401


async def test_a_missing_scope_is_403_insufficient_scope(client: Client) -> None:
    response = await insert(client, "acme_ro", "acme", 1)
    assert response.status == 403
    assert (await response.json())["error"]["code"] == "insufficient_scope"
    assert 'error="insufficient_scope"' in response.headers["WWW-Authenticate"]
    assert 'scope="semantic:write"' in response.headers["WWW-Authenticate"]
    other = await client.post(
        "/v1/semantic/lookup", json={"namespace": "bobco", "vector": vector(1)},
        headers=auth("acme_rw"),
    )  # fmt: skip
    assert other.status == 403
    body = await other.json()
    assert (body["error"]["code"], body["error"]["field"]) == ("namespace_forbidden", "namespace")


@pytest.mark.parametrize("mode", ["single", "file"])
async def test_a_non_utf8_authorization_header_is_401_not_500(
    aiohttp_client: Any, tmp_path: Path, mode: str
) -> None:
    """Defect: a non-UTF-8 Authorization header gave a 500 with a traceback."""
    settings = (
        tenancy_settings(tmp_path)
        if mode == "file"
        else kv_settings(tmp_path, server_auth_token="t0ken")
    )
    client = await start(aiohttp_client, settings)
    assert client.server.port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", client.server.port)
    writer.write(
        b"GET /v1/kv/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \xff\xfe\xc3(\r\n"
        b"Connection: close\r\n\r\n"
    )
    await writer.drain()
    reply = await reader.read()
    writer.close()
    assert reply.startswith(b"HTTP/1.1 401"), reply[:200]
    assert b'error="invalid_token"' in reply
    assert b"Traceback" not in reply


async def test_the_table_holds_digests_never_tokens(client: Client) -> None:
    table = client.app[AUTH].table
    assert set(table.principals) == {hashlib.sha256(t.encode()).digest() for t in TOKENS.values()}
    dumped = repr(table) + repr(client.app[AUTH].__dict__)
    assert not any(token in dumped for token in TOKENS.values())
    config = await client.get("/v1/admin/config", headers=auth("ops"))
    served = await config.text()
    assert not any(token in served for token in TOKENS.values())
    assert token_digest(TOKENS["bob"]) in table.principals


async def test_rate_limit_is_per_tenant_with_retry_after(
    aiohttp_client: Any, tmp_path: Path
) -> None:
    text = tokens_file_text(extra_acme="requests_per_s = 0.001\nburst = 3")
    client = await start(aiohttp_client, tenancy_settings(tmp_path, text))
    statuses = [
        (await client.get("/v1/kv/models", headers=auth("acme_rw"))).status for _ in range(3)
    ]
    assert statuses == [200, 200, 200]
    limited = await client.get("/v1/kv/models", headers=auth("acme_ro"))  # the same tenant
    assert limited.status == 429
    assert (await limited.json())["error"]["code"] == "rate_limited"
    assert int(limited.headers["Retry-After"]) >= 1
    assert (await client.get("/v1/kv/models", headers=auth("bob"))).status == 200  # unaffected
    metrics = await (await client.get("/metrics")).text()
    samples = {
        (s.labels.get("tenant"), s.labels.get("outcome")): s.value
        for f in text_string_to_metric_families(metrics)
        if f.name == "semcached_tenant_requests"
        for s in f.samples
        if s.name.endswith("_total")
    }
    assert samples[("acme", "rate_limited")] == 1
    assert samples[("acme", "allowed")] == 3


async def test_a_tenant_quota_evicts_its_own_oldest_entries(
    aiohttp_client: Any, tmp_path: Path
) -> None:
    text = tokens_file_text(extra_acme="semantic_max_entries = 2")
    client = await start(aiohttp_client, tenancy_settings(tmp_path, text))
    bob = [await (await insert(client, "bob", "bobco", 100 + n)).json() for n in range(3)]
    ids = []
    for n in range(3):
        ids.append(
            (await (await insert(client, "acme_rw", "acme-eu" if n else "acme", n)).json())[
                "entry_id"
            ]
        )
        await asyncio.sleep(0.002)  # distinct creation times
    present = [
        (await client.get(f"/v1/semantic/entries/{i}", params={"namespace": ns},
                          headers=auth("acme_rw"))).status
        for i, ns in zip(ids, ["acme", "acme-eu", "acme-eu"], strict=True)
    ]  # fmt: skip
    assert present == [404, 200, 200]
    for entry in bob:  # bobco has no quota and lost nothing
        response = await client.get(
            f"/v1/semantic/entries/{entry['entry_id']}", params={"namespace": "bobco"},
            headers=auth("bob"),
        )  # fmt: skip
        assert response.status == 200


async def test_a_tenant_at_its_lease_cap_is_429_alone(aiohttp_client: Any, tmp_path: Path) -> None:
    text = tokens_file_text(extra_acme="max_leases = 1")
    client = await start(aiohttp_client, tenancy_settings(tmp_path, text))
    for token in ("acme_rw", "bob"):
        key = key_of(1)
        _, blob = variant(key)
        headers = {**auth(token), "X-Semcached-KV-Meta": put_header()}
        assert (
            await client.put(f"/v1/kv/chunks/{key.hex()}", data=blob, headers=headers)
        ).status == 201

    async def lease(token: str) -> Any:
        return await client.get(
            f"/v1/kv/chunks/{key_of(1).hex()}", params={"transfer": "shm"}, headers=auth(token)
        )

    assert (await lease("acme_rw")).status == 200
    refused = await lease("acme_ro")  # the tenant's, whichever token
    assert refused.status == 429
    assert (await refused.json())["error"]["code"] == "lease_quota_exceeded"
    assert [(await lease("bob")).status for _ in range(3)] == [200, 200, 200]


async def test_one_tenants_put_never_overwrites_anothers_chunk(client: Client) -> None:
    key = key_of(42)
    _, mine = variant(key, seed=1)
    _, theirs = variant(key, seed=2)
    for token, blob in (("acme_rw", mine), ("bob", theirs)):
        headers = {**auth(token), "X-Semcached-KV-Meta": put_header()}
        response = await client.put(f"/v1/kv/chunks/{key.hex()}", data=blob, headers=headers)
        assert response.status == 201  # each a first put: no one replaced anyone
    got = await client.get(f"/v1/kv/chunks/{key.hex()}", headers=auth("acme_ro"))
    assert await got.read() == mine
    assert (await client.delete(f"/v1/kv/chunks/{key.hex()}", headers=auth("bob"))).status == 200
    got = await client.get(f"/v1/kv/chunks/{key.hex()}", headers=auth("acme_ro"))
    assert await got.read() == mine


async def test_a_tenant_with_the_unscoped_kv_scope_sees_the_laptop_modes_chunks(
    aiohttp_client: Any, tmp_path: Path
) -> None:
    """A store written without tokens keeps its keys; an operator may give it to a tenant."""
    key = key_of(7)
    _, blob = variant(key)
    laptop = await start(aiohttp_client, kv_settings(tmp_path))
    response = await laptop.put(
        f"/v1/kv/chunks/{key.hex()}", data=blob, headers={"X-Semcached-KV-Meta": put_header()}
    )
    assert response.status == 201
    await laptop.close()
    text = tokens_file_text().replace(
        '[tenants.bobco]\nnamespaces = ["bobco"]',
        '[tenants.bobco]\nnamespaces = ["bobco"]\nkv_scope = ""',
    )
    client = await start(aiohttp_client, tenancy_settings(tmp_path, text))
    assert (
        await (await client.get(f"/v1/kv/chunks/{key.hex()}", headers=auth("bob"))).read() == blob
    )
    assert (await client.get(f"/v1/kv/chunks/{key.hex()}", headers=auth("acme_rw"))).status == 404


async def test_reload_swaps_the_table_and_a_bad_file_keeps_the_old(
    client: Client, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "tokens.toml"
    newcomer = "a-token-added-by-the-reload-0123456789"
    path.write_text(tokens_file_text().replace(digest(TOKENS["bob"]), digest(newcomer)))
    await _reload(client)
    assert (await client.get("/v1/kv/models", headers=auth("bob"))).status == 401
    fresh = await client.get("/v1/kv/models", headers={"Authorization": f"Bearer {newcomer}"})
    assert fresh.status == 200

    path.write_text("[[tokens]]\nsha256 = 'not hex'\n")
    with caplog.at_level(logging.ERROR):
        await _reload(client)
    assert "previous one stays in force" in caplog.text
    assert newcomer not in caplog.text
    fresh = await client.get("/v1/kv/models", headers={"Authorization": f"Bearer {newcomer}"})
    assert fresh.status == 200


async def _reload(client: Client) -> None:
    before = client.app[AUTH].table
    reload_tokens(client.app)
    for _ in range(200):
        await asyncio.sleep(0.01)
        if client.app[AUTH].table is not before:
            return
    # A failed reload leaves the table as it was: give the worker time to have tried.


async def test_openapi_documents_auth_answers_and_scopes(client: Client) -> None:
    doc = client.app[OPENAPI]
    validate(doc)
    for path, operations in doc["paths"].items():
        for method, op in operations.items():
            if "x-semcached-scope" not in op:
                assert not path.startswith("/v1/") or path == "/v1/openapi.json", path
                assert "security" not in op, path
                continue
            assert op["security"] == [{"bearer": []}, {"apiKey": []}]
            assert {"401", "403", "429"} <= set(op["responses"]), (method, path)
            assert op["x-semcached-scope"] in {
                "semantic:read", "semantic:write", "kv:read", "kv:write", "admin"
            }  # fmt: skip
    assert doc["paths"]["/v1/kv/chunks/{key}"]["put"]["x-semcached-scope"] == "kv:write"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[[tokens]]\ntoken = 'plain'\n", "unknown key 'token'"),
        ("[tenants.a]\nnamespaces = []\n[[tokens]]\nsha256 = 'abc'\ntenant = 'a'\n"
         "scopes = ['admin']\n", "64 lower-case hex"),
        (f"[[tokens]]\nsha256 = '{'a' * 64}'\ntenant = 'nobody'\nscopes = ['admin']\n",
         "tenants.<name>"),
        (f"[tenants.a]\nnamespaces = []\n[[tokens]]\nsha256 = '{'a' * 64}'\ntenant = 'a'\n"
         "scopes = ['root']\n", "scopes"),
        ("[tenants.a]\nnamespaces = ['a b']\n", "namespace pattern"),
        ("[tenants.a]\n", "namespaces is required"),
        ("[tenants.a]\nnamespaces = []\nburst = 0\n", "burst"),
        ("[tenants.a]\nnamespaces = []\nmax_leases = -1\n", "max_leases"),
        (f"[tenants.a]\nnamespaces = []\n[[tokens]]\nsha256 = '{'a' * 64}'\ntenant = 'a'\n"
         f"scopes = {RW}\n[[tokens]]\nsha256 = '{'a' * 64}'\ntenant = 'a'\nscopes = {RW}\n",
         "listed twice"),
        ("oops = 1\n", "unknown key 'oops'"),
        ("not toml [", "invalid TOML"),
    ],
)  # fmt: skip
def test_a_bad_tokens_file_is_refused_naming_the_key(
    tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "tokens.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_tokens_file(path, TenantLimits())
    with pytest.raises(ConfigError):
        create_app(tenancy_settings(tmp_path, text))


def test_tenant_limits_default_to_the_auth_settings(tmp_path: Path) -> None:
    settings = tenancy_settings(tmp_path, auth_max_leases="7", auth_requests_per_s="2.5")
    table = load_tokens_file(
        Path(settings.auth.tokens_file), TenantLimits.from_settings(settings.auth)
    )
    assert table.tenants["bobco"].limits.max_leases == 7
    assert table.tenants["bobco"].limits.requests_per_s == 2.5
    assert table.tenants["bobco"].kv_scope == "bobco"
