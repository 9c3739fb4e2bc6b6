"""Starting the daemon (in-process, on 127.0.0.1) in front of the scripted upstream."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import openai
from aiohttp import web
from aiohttp.test_utils import TestServer

from semcached.service.config import Settings, load_settings
from semcached.service.http.app import create_app
from semcached.service.http.appkeys import READINESS
from semcached.service.http.routes.proxy import PROXY
from semcached.service.proxy.component import Proxy
from tests.service.proxy.upstream_kit import ScriptedUpstream

ServerFactory = Callable[..., Awaitable[TestServer]]
UPSTREAM_KEY = "sk-upstream-secret-4711"


@dataclass
class Proxied:
    upstream: ScriptedUpstream
    server: TestServer
    url: str  # the daemon's base URL, no /v1

    @property
    def proxy(self) -> Proxy:
        return self.server.app[PROXY]

    def openai(self, **kwargs: object) -> openai.OpenAI:
        options: dict[str, object] = {"api_key": UPSTREAM_KEY, "max_retries": 0, **kwargs}
        return openai.OpenAI(base_url=self.url + "/v1", **options)  # type: ignore[arg-type]

    def async_openai(self, **kwargs: object) -> openai.AsyncOpenAI:
        options: dict[str, object] = {"api_key": UPSTREAM_KEY, "max_retries": 0, **kwargs}
        return openai.AsyncOpenAI(base_url=self.url + "/v1", **options)  # type: ignore[arg-type]


def proxy_settings(tmp_path: Path, upstream_base: str, **env: str) -> Settings:
    environ = {
        "SEMCACHED_STORAGE_DATA_DIR": str(tmp_path / "data"),
        "SEMCACHED_EMBEDDING_BACKEND": "http",
        "SEMCACHED_EMBEDDING_HTTP_URL": upstream_base,
        "SEMCACHED_PROXY_UPSTREAM_URL": upstream_base + "/v1",
    }
    environ.update({f"SEMCACHED_{k.upper()}": v for k, v in env.items()})
    return load_settings(environ=environ)


async def start_upstream(aiohttp_server: ServerFactory) -> tuple[ScriptedUpstream, str]:
    upstream = ScriptedUpstream()
    server = await aiohttp_server(upstream.app(), host="127.0.0.1", port=0)
    return upstream, str(server.make_url("")).rstrip("/")


async def start_daemon(aiohttp_server: ServerFactory, settings: Settings) -> TestServer:
    server = await aiohttp_server(create_app(settings), host="127.0.0.1", port=0)
    app: web.Application = server.app
    for _ in range(1000):
        if app[READINESS].is_ready:
            return server
        await asyncio.sleep(0.01)
    raise AssertionError(app[READINESS].report())


async def proxied(aiohttp_server: ServerFactory, tmp_path: Path, **env: str) -> Proxied:
    upstream, base = await start_upstream(aiohttp_server)
    server = await start_daemon(aiohttp_server, proxy_settings(tmp_path, base, **env))
    return Proxied(upstream, server, str(server.make_url("")).rstrip("/"))
