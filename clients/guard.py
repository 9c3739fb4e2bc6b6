"""What the fail-open wrappers (:mod:`~semcached.clients.failopen`) share: the policy,
the counters, and :class:`Guard`, which applies the breaker and counts each call."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from typing import TypeVar

from semcached.clients.breaker import CircuitBreaker
from semcached.clients.commands import LookupResult
from semcached.clients.request import Request
from semcached.errors import ApiError
from semcached.protocol.headers import JSON

__all__ = ["FailOpenPolicy", "FailOpenStats", "Guard"]

log = logging.getLogger("semcached.clients.failopen")

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class FailOpenPolicy:
    """How long a lookup may take, when to stop calling, how much to queue."""

    lookup_budget_s: float = 0.05
    failures_to_open: int = 5
    cooldown_s: float = 5.0
    store_queue: int = 1000  # stores waiting to be sent; more are dropped
    store_workers: int = 2
    store_timeout_s: float = 2.0  # one store, off the answer path: may take longer

    def __post_init__(self) -> None:
        if self.lookup_budget_s <= 0 or self.store_timeout_s <= 0:
            raise ValueError("lookup_budget_s and store_timeout_s must be positive")
        if self.store_queue < 1 or self.store_workers < 1:
            raise ValueError("store_queue and store_workers must be at least 1")


@dataclass(frozen=True, slots=True)
class FailOpenStats:
    """Counters since the wrapper was made.

    ``lookups`` asked, of which ``hits`` hit, ``budget_misses`` ran out of budget,
    ``errors`` failed otherwise and ``short_circuits`` were not sent (breaker open;
    stores skipped so count here too). ``breaker_opens``: times the breaker opened.
    Stores: ``stores_sent`` reached the daemon, ``stores_failed`` did not,
    ``stores_dropped`` found the queue full.
    """

    lookups: int = 0
    hits: int = 0
    budget_misses: int = 0
    errors: int = 0
    short_circuits: int = 0
    breaker_opens: int = 0
    stores_sent: int = 0
    stores_failed: int = 0
    stores_dropped: int = 0


_COUNTERS = tuple(f.name for f in fields(FailOpenStats))


def _opens_breaker(exc: Exception) -> bool:
    """Whether a failure says the daemon is unwell (not that the caller asked wrongly)."""
    return not isinstance(exc, ApiError) or exc.status >= 500 or exc.status == 429


class Guard:
    """What both wrappers share: the policy, the breaker and the counters."""

    def __init__(self, policy: FailOpenPolicy | None, clock: Callable[[], float]) -> None:
        self.policy = policy or FailOpenPolicy()
        self.breaker = CircuitBreaker(
            self.policy.failures_to_open, self.policy.cooldown_s, clock=clock
        )
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(_COUNTERS, 0)

    @property
    def stats(self) -> FailOpenStats:
        with self._lock:
            counts = dict(self._counts)
        counts["breaker_opens"] = self.breaker.opens
        return FailOpenStats(**counts)

    def count(self, name: str) -> None:
        with self._lock:
            self._counts[name] += 1

    def admit(self) -> bool:
        """Ask the breaker whether to send a request now (counted if not)."""
        if self.breaker.allow():
            return True
        self.count("short_circuits")
        return False

    def failed(self, exc: Exception, what: str, counter: str, timeouts: str) -> None:
        """Count a failed call (a timeout under ``timeouts``, anything else under
        ``counter``) and tell the breaker."""
        self.count(timeouts if isinstance(exc, TimeoutError) else counter)
        if not _opens_breaker(exc):
            self.breaker.success()  # the daemon answered: it is up
            log.warning("semcached %s refused: %s", what, exc)
        elif self.breaker.failure():
            log.warning(
                "semcached %s failed (%s); not calling the daemon for %.1f s",
                what,
                exc,
                self.breaker.cooldown_s,
            )
        else:
            log.debug("semcached %s failed: %s", what, exc)

    def succeeded(self, result: object) -> None:
        self.breaker.success()
        if isinstance(result, LookupResult) and result.hit:
            self.count("hits")

    def budgeted(self, request: Request[T]) -> Request[T]:
        return replace(request, timeout_s=self.policy.lookup_budget_s)

    def queueable(self, request: Request[T], *, closed: bool) -> Request[T] | None:
        """The store to queue, encoded (:meth:`serialized`); None, counted, when the
        wrapper is closed or the breaker open (``short_circuits``) or it is not JSON."""
        if closed or self.breaker.rejecting():
            self.count("short_circuits")
            return None
        return self.serialized(request)

    def serialized(self, request: Request[T]) -> Request[T] | None:
        """``request`` with its JSON body encoded now, in the caller's thread: a value
        that cannot be encoded is the caller's bug (counted as a failed store), not a
        daemon failure for the breaker to count later. None if it cannot be."""
        if request.json is None:
            return request
        try:
            body = request.body()
        except TypeError as exc:
            self.count("stores_failed")
            log.warning("semcached store not queued: its value is not JSON: %s", exc)
            return None
        headers = {**(request.headers or {}), "Content-Type": JSON}
        return replace(request, json=None, data=body, headers=headers)

    def stored(self, request: Request[T]) -> Request[T]:
        return replace(request, timeout_s=self.policy.store_timeout_s)
