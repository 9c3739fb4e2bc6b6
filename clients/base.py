"""What the sync and async clients share: options, headers, the retry loop's decisions."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Generic, TypeVar
from urllib.parse import urlencode, urlsplit

from semcached._version import __version__
from semcached.clients.commands import Reply, Request, raise_for_reply
from semcached.clients.retry import RETRY_STATUSES, RetryPolicy

__all__ = ["Attempts", "ClientOptions"]

log = logging.getLogger("semcached.clients")

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class ClientOptions:
    """Connection settings common to both clients.

    ``timeout_s`` bounds one attempt from sending to the last byte of the reply;
    ``connect_timeout_s`` bounds opening a connection. ``pool_size`` connections
    are kept alive and reused.
    """

    base_url: str = "http://127.0.0.1:8080"
    token: str | None = None
    timeout_s: float = 10.0
    connect_timeout_s: float = 2.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    pool_size: int = 10

    def __post_init__(self) -> None:
        parts = urlsplit(self.base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"base_url must be an http(s) URL, got {self.base_url!r}")
        if self.timeout_s <= 0 or self.connect_timeout_s <= 0:
            raise ValueError("timeouts must be positive")

    def url(self, request: Request[T]) -> str:
        url = self.base_url.rstrip("/") + request.path
        if request.params:
            url += "?" + urlencode(request.params)
        return url

    def headers(self, request: Request[T]) -> dict[str, str]:
        headers = {"User-Agent": f"semcached-python/{__version__}", "Accept": "application/json"}
        if request.json is not None:
            headers["Content-Type"] = "application/json"
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        if request.headers:
            headers.update(request.headers)
        return headers


class Attempts(Generic[T]):
    """Decides, for one request, whether to retry and how long to wait first."""

    def __init__(self, request: Request[T], policy: RetryPolicy) -> None:
        self._request = request
        self._delays = policy.delays() if request.idempotent else iter(())
        self._attempt = 1

    def retry_delay(self, reason: str) -> float | None:
        """Seconds to wait before the next attempt, or None to give up."""
        delay = next(self._delays, None)
        if delay is not None:
            log.debug(
                "retrying %s %s after %s (attempt %d failed); waiting %.3f s",
                self._request.method,
                self._request.path,
                reason,
                self._attempt,
                delay,
            )
            self._attempt += 1
        return delay

    def should_retry_status(self, reply: Reply) -> bool:
        return reply.status in RETRY_STATUSES and reply.status not in self._request.ok_status

    def result(self, reply: Reply) -> T:
        """The parsed reply, or the typed error it carries."""
        if reply.status not in self._request.ok_status:
            raise raise_for_reply(reply)
        return self._request.parse(reply)
