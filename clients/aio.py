"""The asyncio client, on aiohttp's connection pool."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from types import TracebackType
from typing import Any, TypeVar

import aiohttp

from semcached.clients import commands
from semcached.clients.base import Attempts, ClientOptions
from semcached.clients.commands import (
    CategoryStats,
    Entry,
    InsertResult,
    LookupQuery,
    LookupResult,
    Readiness,
    Reply,
    Request,
    VectorLike,
)
from semcached.clients.retry import RetryPolicy
from semcached.errors import SemcachedConnectionError, SemcachedTimeoutError

__all__ = ["AsyncSemcachedClient"]

T = TypeVar("T")


class AsyncSemcachedClient:
    """Talks to a semcached daemon from asyncio code.

    The connection pool opens on first use inside the running loop; use the client
    as an async context manager, or await :meth:`close` when done::

        async with AsyncSemcachedClient("http://127.0.0.1:8080") as client:
            await client.ready()
    """

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8080",
        *,
        token: str | None = None,
        timeout_s: float = 10.0,
        connect_timeout_s: float = 2.0,
        retry: RetryPolicy | None = None,
        pool_size: int = 10,
    ) -> None:
        self.options = ClientOptions(
            base_url, token, timeout_s, connect_timeout_s, retry or RetryPolicy(), pool_size
        )
        self._session: aiohttp.ClientSession | None = None

    # -- lifecycle -------------------------------------------------------------------

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.options.pool_size),
                timeout=aiohttp.ClientTimeout(
                    total=self.options.timeout_s, connect=self.options.connect_timeout_s
                ),
                raise_for_status=False,
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> AsyncSemcachedClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- transport -------------------------------------------------------------------

    async def execute(self, request: Request[T]) -> T:
        """Send ``request`` (retrying if it is idempotent) and return its parsed result."""
        attempts = Attempts(request, self.options.retry)
        while True:
            try:
                reply = await self._send(request)
            except (SemcachedConnectionError, SemcachedTimeoutError) as exc:
                delay = attempts.retry_delay(type(exc).__name__)
                if delay is None:
                    raise
                await asyncio.sleep(delay)
                continue
            if attempts.should_retry_status(reply):
                delay = attempts.retry_delay(f"HTTP {reply.status}")
                if delay is not None:
                    await asyncio.sleep(delay)
                    continue
            return attempts.result(reply)

    async def _send(self, request: Request[Any]) -> Reply:
        url = self.options.url(request)
        try:
            async with self._get_session().request(
                request.method, url, data=request.body(), headers=self.options.headers(request)
            ) as response:
                body = await response.read()
                return Reply(
                    response.status, {k.lower(): v for k, v in response.headers.items()}, body
                )
        except TimeoutError as exc:
            raise SemcachedTimeoutError(f"{request.method} {url} timed out") from exc
        except aiohttp.ClientConnectorError as exc:
            raise SemcachedConnectionError(f"cannot connect to {url}: {exc}") from exc
        except aiohttp.ClientError as exc:
            raise SemcachedConnectionError(f"{request.method} {url} failed: {exc}") from exc

    # -- commands --------------------------------------------------------------------

    async def health(self) -> bool:
        """True when the daemon process answers ``/livez``."""
        return await self.execute(commands.health())

    async def ready(self) -> Readiness:
        """The daemon's readiness (``ready`` is False while it starts or stops)."""
        return await self.execute(commands.ready())

    async def metrics(self) -> str:
        """The Prometheus exposition text of ``/metrics``."""
        return await self.execute(commands.metrics())

    async def get_config(self) -> dict[str, Any]:
        """The daemon's effective settings, secrets redacted."""
        return await self.execute(commands.get_config())

    async def set_log_level(self, level: str) -> str:
        """Change the daemon's log level until it restarts."""
        return await self.execute(commands.set_log_level(level))

    # -- semantic cache --------------------------------------------------------------

    async def lookup(
        self,
        namespace: str,
        text: str | None = None,
        *,
        vector: VectorLike | None = None,
        category: str | None = None,
        partition: str | None = None,
        threshold: float | None = None,
    ) -> LookupResult:
        """Find a cached response to a prompt meaning the same thing (text and/or vector)."""
        query = LookupQuery(namespace, text, vector, category, partition, threshold)
        return await self.execute(commands.lookup(query))

    async def lookup_many(self, queries: Sequence[LookupQuery]) -> list[LookupResult]:
        """Several lookups in one request; results in order."""
        return await self.execute(commands.lookup_many(queries))

    async def insert(
        self,
        namespace: str,
        prompt: str,
        response: Any,
        *,
        category: str | None = None,
        partition: str | None = None,
        model: str | None = None,
        vector: VectorLike | None = None,
        ttl_s: float | None = None,
    ) -> InsertResult:
        """Cache ``response`` (JSON value, or bytes) for ``prompt``; returns once durable."""
        return await self.execute(
            commands.insert(
                namespace, prompt, response, category=category, partition=partition,
                model=model, vector=vector, ttl_s=ttl_s,
            )
        )  # fmt: skip

    async def get(self, entry_id: int, namespace: str) -> Entry:
        """One entry; raises NotFoundError if it is absent, expired or in another namespace."""
        return await self.execute(commands.get_entry(entry_id, namespace))

    async def delete(self, entry_id: int, namespace: str) -> bool:
        """Remove one entry; False if there was none."""
        return await self.execute(commands.delete_entry(entry_id, namespace))

    async def purge(
        self, namespace: str, *, category: str | None = None, partition: str | None = None
    ) -> int:
        """Remove a namespace's entries (optionally one category or partition); the count."""
        return await self.execute(commands.purge(namespace, category=category, partition=partition))

    async def stats(self) -> dict[str, CategoryStats]:
        """Counters per category."""
        return await self.execute(commands.stats())
