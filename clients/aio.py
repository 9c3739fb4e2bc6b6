"""The asyncio client: the commands of :class:`~semcached.clients.api.ClientApi` over
aiohttp's connection pool."""

from __future__ import annotations

from types import TracebackType
from typing import Any

import aiohttp

from semcached.clients.api import ClientApi
from semcached.clients.base import AsyncClient
from semcached.clients.request import Reply, Request
from semcached.errors import SemcachedConnectionError, SemcachedTimeoutError

__all__ = ["AsyncSemcachedClient"]


class AsyncSemcachedClient(ClientApi, AsyncClient):
    """Talks to a semcached daemon from asyncio code.

    The connection pool opens on first use inside the running loop; use the client
    as an async context manager, or await :meth:`close` when done::

        async with AsyncSemcachedClient("http://127.0.0.1:8080") as client:
            await client.ready()
    """

    def _open(self) -> None:
        self._session: aiohttp.ClientSession | None = None

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
        self._shm.close()

    async def __aenter__(self) -> AsyncSemcachedClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def _send(self, request: Request[Any]) -> Reply:
        url = self.options.url(request)
        # A request's own budget bounds the whole exchange (the session's timeouts
        # otherwise; passed only when set: aiohttp reads ``timeout=None`` as "no limit").
        budget: dict[str, Any] = {}
        if request.timeout_s is not None:
            budget["timeout"] = aiohttp.ClientTimeout(total=request.timeout_s)
        try:
            async with self._get_session().request(
                request.method,
                url,
                data=request.body(),
                headers=self.options.headers(request),
                **budget,
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
