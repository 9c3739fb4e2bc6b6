"""A daemon with a tokens file of three tenants, for the tenancy tests.

- ``acme``: namespaces ``acme`` and ``acme-*``; two tokens, read-only and read/write;
- ``bobco``: namespace ``bobco``; one read/write token;
- ``ops``: every namespace (``*``), every scope, the operator.
"""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from typing import Any

import numpy as np
from aiohttp import web
from aiohttp.test_utils import TestClient

from semcached.service.config import Settings
from semcached.service.http.app import create_app
from semcached.service.http.appkeys import READINESS
from semcached.service.http.server import handler_options
from tests.service.http.test_kv_routes import header_for, kv_settings

Client = TestClient[web.Request, web.Application]
DIM = 8

TOKENS = {
    "acme_ro": "acme-read-only-token-0123456789abcdef",
    "acme_rw": "acme-read-write-token-0123456789abcdef",
    "bob": "bobco-read-write-token-0123456789abcdef",
    "ops": "operator-token-0123456789abcdef012345",
}
NAMESPACE = {"acme": "acme", "bobco": "bobco"}
WRITER = {"acme": "acme_rw", "bobco": "bob"}  # the token that creates a tenant's data
RW = '["semantic:read", "semantic:write", "kv:read", "kv:write"]'


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def tokens_file_text(extra_acme: str = "") -> str:
    return f"""
[tenants.acme]
namespaces = ["acme", "acme-*"]
{extra_acme}

[tenants.bobco]
namespaces = ["bobco"]

[tenants.ops]
namespaces = ["*"]

[[tokens]]
sha256 = "{digest(TOKENS["acme_ro"])}"
tenant = "acme"
scopes = ["semantic:read", "kv:read"]
name = "acme-dashboard"

[[tokens]]
sha256 = "{digest(TOKENS["acme_rw"])}"
tenant = "acme"
scopes = {RW}

[[tokens]]
sha256 = "{digest(TOKENS["bob"])}"
tenant = "bobco"
scopes = {RW}

[[tokens]]
sha256 = "{digest(TOKENS["ops"])}"
tenant = "ops"
scopes = ["semantic:read", "semantic:write", "kv:read", "kv:write", "admin"]
"""


def tenancy_settings(tmp_path: Path, tokens_text: str | None = None, **env: str) -> Settings:
    path = tmp_path / "tokens.toml"
    path.write_text(tokens_file_text() if tokens_text is None else tokens_text)
    return kv_settings(
        tmp_path,
        auth_tokens_file=str(path),
        embedding_dim=str(DIM),
        **env,
    )


async def start(aiohttp_client: Any, settings: Settings) -> Client:
    client: Client = await aiohttp_client(
        create_app(settings), server_kwargs=handler_options(settings)
    )
    for _ in range(500):
        if client.app[READINESS].is_ready:
            return client
        await asyncio.sleep(0.01)
    raise AssertionError(client.app[READINESS].report())


def auth(token_name: str | None) -> dict[str, str]:
    if token_name is None:
        return {}
    if token_name == "bad":
        return {"Authorization": "Bearer not-a-token-of-this-daemon"}
    return {"Authorization": f"Bearer {TOKENS[token_name]}"}


def vector(seed: int) -> list[float]:
    v = np.random.default_rng(seed).standard_normal(DIM)
    return (v / np.linalg.norm(v)).tolist()


def put_header(tokens: int = 16) -> str:
    return header_for(tokens)
