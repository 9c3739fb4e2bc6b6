"""The blocking client, on urllib3's connection pool."""

from __future__ import annotations

import time
from types import TracebackType
from typing import Any, TypeVar

import urllib3
from urllib3.exceptions import HTTPError, NewConnectionError
from urllib3.exceptions import TimeoutError as Urllib3Timeout

from semcached.clients import commands
from semcached.clients.base import Attempts, ClientOptions
from semcached.clients.commands import Readiness, Reply, Request
from semcached.clients.retry import RetryPolicy
from semcached.errors import SemcachedConnectionError, SemcachedTimeoutError

__all__ = ["SemcachedClient"]

T = TypeVar("T")


class SemcachedClient:
    """Talks to a semcached daemon; safe to share between threads.

    Use it as a context manager, or call :meth:`close` when done::

        with SemcachedClient("http://127.0.0.1:8080") as client:
            client.ready()
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
        self._pool = urllib3.PoolManager(
            maxsize=pool_size,
            block=False,
            retries=False,  # retries are ours: only idempotent requests, with jitter
            timeout=urllib3.Timeout(connect=connect_timeout_s, read=timeout_s),
        )

    # -- lifecycle -------------------------------------------------------------------

    def close(self) -> None:
        self._pool.clear()

    def __enter__(self) -> SemcachedClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- transport -------------------------------------------------------------------

    def execute(self, request: Request[T]) -> T:
        """Send ``request`` (retrying if it is idempotent) and return its parsed result."""
        attempts = Attempts(request, self.options.retry)
        while True:
            try:
                reply = self._send(request)
            except (SemcachedConnectionError, SemcachedTimeoutError) as exc:
                delay = attempts.retry_delay(type(exc).__name__)
                if delay is None:
                    raise
                time.sleep(delay)
                continue
            if attempts.should_retry_status(reply):
                delay = attempts.retry_delay(f"HTTP {reply.status}")
                if delay is not None:
                    time.sleep(delay)
                    continue
            return attempts.result(reply)

    def _send(self, request: Request[Any]) -> Reply:
        url = self.options.url(request)
        try:
            response = self._pool.request(
                request.method,
                url,
                body=request.body(),
                headers=self.options.headers(request),
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

    # -- commands --------------------------------------------------------------------

    def health(self) -> bool:
        """True when the daemon process answers ``/livez``."""
        return self.execute(commands.health())

    def ready(self) -> Readiness:
        """The daemon's readiness (``ready`` is False while it starts or stops)."""
        return self.execute(commands.ready())

    def metrics(self) -> str:
        """The Prometheus exposition text of ``/metrics``."""
        return self.execute(commands.metrics())

    def get_config(self) -> dict[str, Any]:
        """The daemon's effective settings, secrets redacted."""
        return self.execute(commands.get_config())

    def set_log_level(self, level: str) -> str:
        """Change the daemon's log level until it restarts."""
        return self.execute(commands.set_log_level(level))
