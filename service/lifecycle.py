"""Start-up, readiness and shutdown of the daemon's components.

A *component* is anything that must be opened before the daemon can serve traffic
and closed when it stops: a store, an index, a thread pool. Route groups register
theirs at application set-up; the core opens them in the background once the
listener is up (so ``/livez`` answers during a long index load) and ``/readyz``
stays 503 until every one is open. Shutdown closes them in reverse order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, Protocol, TypeVar

from semcached.errors import ServiceUnavailableError

__all__ = [
    "Component",
    "Components",
    "FunctionComponent",
    "Readiness",
    "ShutdownRequest",
    "Slot",
]

T = TypeVar("T")

log = logging.getLogger(__name__)


class Component(Protocol):
    """Something opened before serving and closed at shutdown."""

    @property
    def name(self) -> str: ...

    async def open(self) -> None: ...

    async def close(self) -> None: ...


@dataclass(slots=True)
class FunctionComponent:
    """A component made of two coroutine functions (for small cases)."""

    name: str
    opener: Callable[[], Awaitable[None]]
    closer: Callable[[], Awaitable[None]] | None = None

    async def open(self) -> None:
        await self.opener()

    async def close(self) -> None:
        if self.closer is not None:
            await self.closer()


ReadinessStatus = Literal["starting", "ready", "failed", "shutting_down"]


class Readiness:
    """What ``/readyz`` reports: ready once every component is open, until shutdown.

    It also names the stores that are full (they refuse inserts with 507 because
    nothing is left to evict), and the features off by a fault (``degraded``: e.g. hit
    verification without its model file). Neither makes the daemon unready: it still
    serves every hit, so a load balancer should keep sending it traffic.
    """

    def __init__(self) -> None:
        self._waiting: list[str] = []
        self._failed: dict[str, str] = {}
        self._shutting_down = False
        self._stores: dict[str, Callable[[], bool]] = {}
        self._degraded: dict[str, str] = {}

    def expect(self, name: str) -> None:
        self._waiting.append(name)

    def opened(self, name: str) -> None:
        self._waiting.remove(name)

    def failed(self, name: str, reason: str) -> None:
        self._failed[name] = reason

    def degrade(self, feature: str, reason: str) -> None:
        """Report ``feature`` as off by a fault; the daemon serves (and is ready) without it."""
        self._degraded[feature] = reason

    def begin_shutdown(self) -> None:
        self._shutting_down = True

    def watch_storage(self, store: str, is_full: Callable[[], bool]) -> None:
        """Report ``store`` as full whenever ``is_full()`` says so."""
        self._stores[store] = is_full

    @property
    def stores(self) -> list[str]:
        """The names of the watched stores."""
        return list(self._stores)

    def storage_full(self, store: str) -> bool:
        return self._stores[store]()

    @property
    def status(self) -> ReadinessStatus:
        if self._shutting_down:
            return "shutting_down"
        if self._failed:
            return "failed"
        if self._waiting:
            return "starting"
        return "ready"

    @property
    def is_ready(self) -> bool:
        return self.status == "ready"

    def report(self) -> dict[str, Any]:
        body: dict[str, Any] = {"status": self.status}
        if self._waiting:
            body["waiting_for"] = list(self._waiting)
        if self._failed:
            body["failed"] = dict(self._failed)
        full = [store for store, is_full in self._stores.items() if is_full()]
        if full:
            body["storage_full"] = full
        if self._degraded:
            body["degraded"] = dict(self._degraded)
        return body


class ShutdownRequest:
    """A one-shot request to stop the daemon, with the exit code to stop with."""

    def __init__(self) -> None:
        self._event = asyncio.Event()
        self.exit_code = 0
        self.reason = ""

    def request(self, reason: str, exit_code: int = 0) -> None:
        if self._event.is_set():
            return
        self.reason = reason
        self.exit_code = exit_code
        self._event.set()

    @property
    def requested(self) -> bool:
        return self._event.is_set()

    async def wait(self) -> None:
        await self._event.wait()


@dataclass
class Components:
    """The ordered set of components of one application."""

    readiness: Readiness
    shutdown: ShutdownRequest
    _items: list[Component] = field(default_factory=list)
    _opened: list[Component] = field(default_factory=list)
    _task: asyncio.Task[None] | None = None

    def add(self, component: Component) -> None:
        """Register a component; they open in registration order."""
        if self._task is not None:
            raise RuntimeError("components are already opening; register them at set-up")
        self._items.append(component)
        self.readiness.expect(component.name)

    def start_opening(self) -> None:
        """Open every component in a background task."""
        self._task = asyncio.create_task(self._open_all(), name="semcached-open-components")

    async def _open_all(self) -> None:
        for component in self._items:
            started = time.perf_counter()
            try:
                await component.open()
            except Exception as exc:
                log.exception("failed to open %s", component.name)
                self.readiness.failed(component.name, f"{type(exc).__name__}: {exc}")
                self.shutdown.request(f"{component.name} failed to open", exit_code=1)
                return
            self._opened.append(component)
            self.readiness.opened(component.name)
            log.info("opened %s in %.3f s", component.name, time.perf_counter() - started)
        log.info("ready")

    async def close_all(self) -> None:
        """Stop opening (if still under way) and close what was opened, newest first."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        while self._opened:
            component = self._opened.pop()
            try:
                await component.close()
            except Exception:
                log.exception("failed to close %s", component.name)
            else:
                log.info("closed %s", component.name)


class Slot(Generic[T]):
    """Holds a component's object once it is open; empty before and after.

    Route handlers ``get()`` it: while the daemon starts or stops they answer 503
    instead of touching a half-open store. (The application's own state is frozen
    once it starts, so components fill a slot instead of setting app keys.)
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._value: T | None = None

    def set(self, value: T | None) -> None:
        self._value = value

    def get(self) -> T:
        if self._value is None:
            raise ServiceUnavailableError("not_ready", f"the {self.name} is not open")
        return self._value

    @property
    def is_set(self) -> bool:
        return self._value is not None
