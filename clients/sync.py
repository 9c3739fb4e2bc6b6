"""The blocking client, on urllib3's connection pool."""

from __future__ import annotations

import time
from collections.abc import Sequence
from types import TracebackType
from typing import Any, TypeVar

import urllib3
from urllib3.exceptions import HTTPError, NewConnectionError
from urllib3.exceptions import TimeoutError as Urllib3Timeout

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

    # -- semantic cache --------------------------------------------------------------

    def lookup(
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
        return self.execute(commands.lookup(query))

    def lookup_many(self, queries: Sequence[LookupQuery]) -> list[LookupResult]:
        """Several lookups in one request; results in order."""
        return self.execute(commands.lookup_many(queries))

    def insert(
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
        return self.execute(
            commands.insert(
                namespace, prompt, response, category=category, partition=partition,
                model=model, vector=vector, ttl_s=ttl_s,
            )
        )  # fmt: skip

    def get(self, entry_id: int, namespace: str) -> Entry:
        """One entry; raises NotFoundError if it is absent, expired or in another namespace."""
        return self.execute(commands.get_entry(entry_id, namespace))

    def delete(self, entry_id: int, namespace: str) -> bool:
        """Remove one entry; False if there was none."""
        return self.execute(commands.delete_entry(entry_id, namespace))

    def purge(
        self, namespace: str, *, category: str | None = None, partition: str | None = None
    ) -> int:
        """Remove a namespace's entries (optionally one category or partition); the count."""
        return self.execute(commands.purge(namespace, category=category, partition=partition))

    def stats(self) -> dict[str, CategoryStats]:
        """Counters per category."""
        return self.execute(commands.stats())
