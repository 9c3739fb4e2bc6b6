"""The blocking client: the commands of :class:`~semcached.clients.api.ClientApi` over
urllib3's connection pool."""

from __future__ import annotations

from types import TracebackType
from typing import Any, cast

import urllib3
from urllib3.exceptions import HTTPError, NewConnectionError
from urllib3.exceptions import TimeoutError as Urllib3Timeout

from semcached.clients.api import ClientApi
from semcached.clients.base import BlockingClient
from semcached.clients.request import Reply, Request
from semcached.errors import SemcachedConnectionError, SemcachedTimeoutError

__all__ = ["SemcachedClient"]


class SemcachedClient(ClientApi, BlockingClient):
    """Talks to a semcached daemon; safe to share between threads.

    Use it as a context manager, or call :meth:`close` when done::

        with SemcachedClient("http://127.0.0.1:8080") as client:
            client.ready()
    """

    def _open(self) -> None:
        options = self.options
        self._pool = urllib3.PoolManager(
            maxsize=options.pool_size,
            block=False,
            retries=False,  # retries are ours: only idempotent requests, with jitter
            timeout=urllib3.Timeout(connect=options.connect_timeout_s, read=options.timeout_s),
        )

    def close(self) -> None:
        self._pool.clear()
        self._shm.close()

    def __enter__(self) -> SemcachedClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _send(self, request: Request[Any]) -> Reply:
        url = self.options.url(request)
        # A request's own budget replaces the pool's timeouts: ``total`` bounds connecting
        # and reading together (``read`` alone restarts with every byte that arrives).
        # (Passed only when set: urllib3 reads ``timeout=None`` as "wait forever".)
        budget: dict[str, Any] = {}
        if request.timeout_s is not None:
            connect = min(self.options.connect_timeout_s, request.timeout_s)
            budget["timeout"] = urllib3.Timeout(total=request.timeout_s, connect=connect)
        try:
            response = self._pool.request(
                request.method,
                url,
                # urllib3 sends any buffer (memoryview of a KV blob) as it is.
                body=cast("bytes | None", request.body()),
                headers=self.options.headers(request),
                **budget,
            )
        except NewConnectionError as exc:
            raise SemcachedConnectionError(f"cannot connect to {url}: {exc}") from exc
        except Urllib3Timeout as exc:
            raise SemcachedTimeoutError(f"{request.method} {url} timed out: {exc}") from exc
        except HTTPError as exc:
            raise SemcachedConnectionError(f"{request.method} {url} failed: {exc}") from exc
        return Reply(
            response.status, {k.lower(): v for k, v in response.headers.items()}, response.data
        )
