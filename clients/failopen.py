"""Fail-open access to the cache: a gateway must not fail because its cache is slow or down.

:class:`FailOpenClient` (around a :class:`~semcached.clients.SemcachedClient`) and
:class:`AsyncFailOpenClient` (around an
:class:`~semcached.clients.AsyncSemcachedClient`) apply one :class:`FailOpenPolicy`:

- **Lookup budget.** A lookup is one request whose own timeout is the budget
  (``Request.timeout_s``: urllib3's or aiohttp's timeout for that call, connecting
  included, no retry after it). Past it, or on any error, the lookup returns None: a
  miss, and the caller asks its model.
- **Circuit breaker** (:mod:`~semcached.clients.breaker`). Transport errors, timeouts,
  5xx and 429 count as failures; after ``failures_to_open`` in a row no request is made
  for ``cooldown_s``, then one probe decides. A 4xx is the caller's mistake and a
  healthy daemon's answer: counted as an error, it does not open the breaker.
- **Stores never block.** :meth:`store` puts the insert on a bounded queue and returns;
  background workers (threads, or tasks on the running loop) send it. A full queue
  drops the store and counts it.

:attr:`stats` returns the counters (:class:`FailOpenStats`); :meth:`flush` waits for
queued stores (tests, shutdown), :meth:`close` flushes and stops the workers. The
wrapped client stays the caller's to close.
"""

from __future__ import annotations

import asyncio
import inspect
import queue
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any, Concatenate, ParamSpec, Protocol, TypeVar

from semcached.clients import commands
from semcached.clients.aio import AsyncSemcachedClient
from semcached.clients.commands import LookupResult
from semcached.clients.guard import FailOpenPolicy, FailOpenStats, Guard
from semcached.clients.request import Request
from semcached.clients.sync import SemcachedClient

__all__ = ["AsyncFailOpenClient", "FailOpenClient", "FailOpenPolicy", "FailOpenStats"]

T = TypeVar("T")
P = ParamSpec("P")


class _Submits(Protocol):
    def submit(self, request: Request[Any]) -> bool: ...


def _as_method(
    method: Callable[..., Any], build: Callable[..., Any], name: str, returns: str, doc: str
) -> None:
    """Give ``method`` the command's parameters (for help() and IDEs), its own name,
    return annotation and docstring."""
    signature = inspect.signature(build)
    own = inspect.Parameter("self", inspect.Parameter.POSITIONAL_ONLY)
    method.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=[own, *signature.parameters.values()], return_annotation=returns
    )
    method.__name__ = name
    method.__doc__ = doc


def _queued(
    build: Callable[P, Request[Any]], name: str, doc: str
) -> Callable[Concatenate[_Submits, P], bool]:
    """A method queuing ``build``'s request (the wrapper's ``submit``)."""

    def method(self: _Submits, /, *args: P.args, **kwargs: P.kwargs) -> bool:
        return self.submit(build(*args, **kwargs))

    _as_method(method, build, name, "bool", doc)
    return method


def _sync_lookup(
    build: Callable[P, Request[LookupResult]], doc: str
) -> Callable[Concatenate[FailOpenClient, P], LookupResult | None]:
    """A method sending ``build``'s lookup within the budget (:meth:`FailOpenClient.call`)."""

    def method(self: FailOpenClient, /, *args: P.args, **kwargs: P.kwargs) -> LookupResult | None:
        self._guard.count("lookups")
        return self.call(build(*args, **kwargs), what="lookup")

    _as_method(method, build, "lookup", "LookupResult | None", doc)
    return method


def _async_lookup(
    build: Callable[P, Request[LookupResult]], doc: str
) -> Callable[Concatenate[AsyncFailOpenClient, P], Coroutine[Any, Any, LookupResult | None]]:
    """:func:`_sync_lookup` for :class:`AsyncFailOpenClient`."""

    async def method(
        self: AsyncFailOpenClient, /, *args: P.args, **kwargs: P.kwargs
    ) -> LookupResult | None:
        self._guard.count("lookups")
        return await self.call(build(*args, **kwargs), what="lookup")

    _as_method(method, build, "lookup", "LookupResult | None", doc)
    return method


class FailOpenClient:
    """A :class:`SemcachedClient` that never fails or stalls its caller (module docstring).

    Safe to share between threads. ``clock`` drives the breaker's cool-down (tests)."""

    def __init__(
        self,
        client: SemcachedClient,
        policy: FailOpenPolicy | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self._guard = Guard(policy, clock)
        self.policy = self._guard.policy
        self.breaker = self._guard.breaker
        self._queue: queue.Queue[Request[Any] | None] = queue.Queue(self.policy.store_queue)
        self._workers: list[threading.Thread] = []
        self._start_lock = threading.Lock()
        self._closed = False

    @property
    def stats(self) -> FailOpenStats:
        return self._guard.stats

    def call(self, request: Request[T], *, what: str = "request") -> T | None:
        """Execute ``request`` within the lookup budget: its result, or None if the
        budget ran out, it failed, or the breaker is open."""
        guard = self._guard
        if not guard.admit():
            return None
        try:
            result = self.client.execute(guard.budgeted(request))
        except Exception as exc:  # fail open: any failure is a miss
            guard.failed(exc, what, "errors", "budget_misses")
            return None
        guard.succeeded(result)
        return result

    lookup = _sync_lookup(
        commands.lookup,
        ":meth:`SemcachedClient.lookup` within the budget; None when the cache could not "
        "answer in time (a miss the daemon did not decide).",
    )
    store = _queued(
        commands.insert,
        "store",
        ":meth:`SemcachedClient.insert`, queued: returns at once, False if it was dropped "
        "(queue full, breaker open, closed).",
    )

    def submit(self, request: Request[Any]) -> bool:
        """Queue any request to be sent in the background (see :meth:`store`)."""
        encoded = self._guard.queueable(request, closed=self._closed)
        if encoded is None:
            return False
        self._start()
        try:
            self._queue.put_nowait(encoded)
        except queue.Full:
            self._guard.count("stores_dropped")
            return False
        return True

    def flush(self, timeout_s: float | None = None) -> bool:
        """Wait until every queued store was sent (or failed); False on timeout."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        done = self._queue.all_tasks_done
        with done:
            while self._queue.unfinished_tasks:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                done.wait(left)
        return True

    def close(self, timeout_s: float | None = 5.0) -> None:
        """Send what is queued (for up to ``timeout_s``), then stop the workers."""
        self._closed = True
        self.flush(timeout_s)
        with self._start_lock:
            for _ in self._workers:
                self._queue.put(None)
            for worker in self._workers:
                worker.join(timeout_s)
            self._workers.clear()

    def __enter__(self) -> FailOpenClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _start(self) -> None:
        if len(self._workers) == self.policy.store_workers:
            return
        with self._start_lock:
            while len(self._workers) < self.policy.store_workers and not self._closed:
                worker = threading.Thread(target=self._drain, name="semcached-store", daemon=True)
                worker.start()
                self._workers.append(worker)

    def _drain(self) -> None:
        while True:
            request = self._queue.get()
            try:
                if request is None:
                    return
                self._send(request)
            finally:
                self._queue.task_done()

    def _send(self, request: Request[Any]) -> None:
        guard = self._guard
        if not guard.admit():
            return
        try:
            self.client.execute(guard.stored(request))
        except Exception as exc:
            guard.failed(exc, "store", "stores_failed", "stores_failed")
            return
        guard.succeeded(None)
        guard.count("stores_sent")


class AsyncFailOpenClient:
    """An :class:`AsyncSemcachedClient` that never fails or stalls its caller.

    Stores are sent by tasks on the loop that queued them; use it from one event loop
    (as the wrapped client's connection pool must be)."""

    def __init__(
        self,
        client: AsyncSemcachedClient,
        policy: FailOpenPolicy | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self._guard = Guard(policy, clock)
        self.policy = self._guard.policy
        self.breaker = self._guard.breaker
        self._queue: asyncio.Queue[Request[Any]] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._workers: list[asyncio.Task[None]] = []
        self._closed = False

    @property
    def stats(self) -> FailOpenStats:
        return self._guard.stats

    async def call(self, request: Request[T], *, what: str = "request") -> T | None:
        """Execute ``request`` within the lookup budget (see :meth:`FailOpenClient.call`)."""
        guard = self._guard
        if not guard.admit():
            return None
        try:
            # The request's own timeout bounds the exchange; this bounds the rest (a
            # connection pool waiting for a free connection) by the same budget.
            async with asyncio.timeout(guard.policy.lookup_budget_s * 2):
                result = await self.client.execute(guard.budgeted(request))
        except Exception as exc:  # fail open; cancellation still propagates
            guard.failed(exc, what, "errors", "budget_misses")
            return None
        guard.succeeded(result)
        return result

    lookup = _async_lookup(
        commands.lookup,
        ":meth:`AsyncSemcachedClient.lookup` within the budget; None when the cache "
        "could not answer in time.",
    )
    store = _queued(
        commands.insert,
        "store",
        "An insert, queued (call it from the loop): returns at once, False if dropped.",
    )

    def submit(self, request: Request[Any]) -> bool:
        """Queue any request to be sent in the background (see :meth:`store`)."""
        encoded = self._guard.queueable(request, closed=self._closed)
        if encoded is None:
            return False
        try:
            self._started().put_nowait(encoded)
        except asyncio.QueueFull:
            self._guard.count("stores_dropped")
            return False
        return True

    async def flush(self, timeout_s: float | None = None) -> bool:
        """Wait until every queued store was sent (or failed); False on timeout."""
        if self._queue is None:
            return True
        try:
            async with asyncio.timeout(timeout_s):
                await self._queue.join()
        except TimeoutError:
            return False
        return True

    async def close(self, timeout_s: float | None = 5.0) -> None:
        """Send what is queued (for up to ``timeout_s``), then stop the workers."""
        self._closed = True
        await self.flush(timeout_s)
        for worker in self._workers:
            worker.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers.clear()

    async def __aenter__(self) -> AsyncFailOpenClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _started(self) -> asyncio.Queue[Request[Any]]:
        loop = asyncio.get_running_loop()
        if self._queue is None or self._loop is not loop:
            # First use, or a new loop (asyncio.run again): the old workers went with
            # their loop.
            self._loop = loop
            self._queue = asyncio.Queue(self.policy.store_queue)
            self._workers = [
                loop.create_task(self._drain(self._queue), name="semcached-store")
                for _ in range(self.policy.store_workers)
            ]
        return self._queue

    async def _drain(self, pending: asyncio.Queue[Request[Any]]) -> None:
        while True:
            request = await pending.get()
            try:
                await self._send(request)
            finally:
                pending.task_done()

    async def _send(self, request: Request[Any]) -> None:
        guard = self._guard
        if not guard.admit():
            return
        try:
            await self.client.execute(guard.stored(request))
        except Exception as exc:
            guard.failed(exc, "store", "stores_failed", "stores_failed")
            return
        guard.succeeded(None)
        guard.count("stores_sent")
