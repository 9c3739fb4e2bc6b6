"""The daemon's client connections: a cap per listener, header deadlines, probes, draining.

aiohttp bounds neither the number of connections nor the time a request's headers may
take, and a flood of idle sockets (slowloris) once used up the open-file limit so that
even ``/livez`` could not connect. Each listener's protocol factory therefore wraps
aiohttp's request handler in a :class:`_Connection` that

- counts the listener's open connections; at its cap, the connection that has waited
  longest for a request (idle, or trickling headers, for over a second) is closed to
  make room, so that idle sockets cannot lock clients out; if every connection is busy
  with a request or fresh, the new one is answered at once with a canned 503
  ``too_many_connections`` and closed (after a short linger that lets the client read
  the answer instead of a reset);
- closes a connection whose request headers take longer than ``server.header_timeout_s``
  from their first byte (aiohttp's keep-alive timer, ``server.keepalive_timeout_s``,
  bounds the idle time before that first byte);
- on a probe listener (``server.probe_port``), serves only the probe paths, so that a
  kubelet and Prometheus never compete with clients for connections.

:func:`connection_middleware` tells each connection when a request is being handled
(no header deadline then) and, once shutdown has begun to drain, answers any new
request with 503 ``not_ready`` and ``Connection: close`` while requests already
running finish with ``Connection: close``. Requests through other servers (aiohttp's
test server) pass through with only the draining rules.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable
from typing import Any, cast

import orjson
from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from aiohttp.web_protocol import RequestHandler
from prometheus_client import CollectorRegistry, Counter, Gauge

from semcached.errors import NotFoundError, ServiceUnavailableError
from semcached.protocol.codes import ErrorCode
from semcached.service.http.jsonio import error_response

__all__ = [
    "EVICTABLE_AFTER_S",
    "LINGERING_REFUSALS",
    "PROBE_CONNECTIONS",
    "PROBE_PATHS",
    "ConnectionTable",
    "Listener",
    "connection_middleware",
]

log = logging.getLogger(__name__)

PROBE_PATHS = frozenset({"/livez", "/readyz", "/metrics"})
PROBE_CONNECTIONS = 32
"""The cap of a probe listener: a kubelet and a Prometheus or two need a handful."""
LINGERING_REFUSALS = 64
"""Refused connections kept open (for their linger) at once; past this they are cut."""
_REFUSAL_LINGER_S = 1.0
EVICTABLE_AFTER_S = 1.0
"""At the cap, only a connection waiting this long for its next request makes room: a
busy client's keep-alive connection waits milliseconds between requests."""

_REFUSAL = b"".join(
    [
        b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n",
        b"Connection: close\r\nRetry-After: 1\r\nContent-Length: %d\r\n\r\n",
        b"%s",
    ]
)
_REFUSAL_BODY = orjson.dumps(
    {
        "error": {
            "code": ErrorCode.TOO_MANY_CONNECTIONS,
            "message": "the daemon has as many connections as it accepts "
            "(server.max_connections); retry, or reuse a connection",
        }
    }
)
REFUSAL = _REFUSAL % (len(_REFUSAL_BODY), _REFUSAL_BODY)


class Listener:
    """One listening socket's connections: how many are open and how many it takes."""

    def __init__(self, table: ConnectionTable, name: str, cap: int, *, probes_only: bool) -> None:
        self.table = table
        self.name = name
        self.cap = cap
        self.probes_only = probes_only
        self.open = 0
        # Connections without a request running, oldest wait first (dicts keep order).
        self.waiting: dict[_Connection, float] = {}

    def factory(self, handler_factory: Callable[[], RequestHandler]) -> Callable[[], Any]:
        """The protocol factory for ``loop.create_server``: aiohttp's handler, wrapped."""

        def make() -> asyncio.Protocol:
            if self.open >= self.cap and not self._make_room():
                return _Refusal(self.table, self.name)
            return _Connection(self, handler_factory())

        return make

    def _make_room(self) -> bool:
        """Close the connection waiting longest for a request, if it waited long enough."""
        if not self.waiting:
            return False
        oldest, since = next(iter(self.waiting.items()))
        if time.monotonic() - since < EVICTABLE_AFTER_S:
            return False
        del self.waiting[oldest]
        if self.table.evicted is not None:
            self.table.evicted.labels(self.name).inc()
        oldest.close()
        return True


class ConnectionTable:
    """Every connection the daemon's listeners accepted, and the drain at shutdown."""

    def __init__(self, *, header_timeout_s: float) -> None:
        self.header_timeout_s = header_timeout_s
        self.listeners: list[Listener] = []
        self.in_flight = 0
        self.draining = False
        self.lingering_refusals = 0
        self._connections: dict[RequestHandler, _Connection] = {}
        self._quiet: asyncio.Event | None = None
        self.refused: Counter | None = None
        self.evicted: Counter | None = None
        self.header_timeouts: Counter | None = None

    def listener(self, name: str, cap: int, *, probes_only: bool = False) -> Listener:
        listener = Listener(self, name, cap, probes_only=probes_only)
        self.listeners.append(listener)
        return listener

    def register_metrics(self, registry: CollectorRegistry) -> None:
        gauge = Gauge(
            "semcached_http_connections",
            "Client connections open now, by listener (main or probe).",
            ["listener"],
            registry=registry,
        )
        for name in ("main", "probe"):
            gauge.labels(name).set_function(functools.partial(self._open, name))
        self.refused = Counter(
            "semcached_http_connections_refused",
            "Connections answered 503 too_many_connections and closed (listener at its cap).",
            ["listener"],
            registry=registry,
        )
        self.evicted = Counter(
            "semcached_http_connections_evicted",
            "Connections waiting for a request, closed to make room at the listener's cap.",
            ["listener"],
            registry=registry,
        )
        self.header_timeouts = Counter(
            "semcached_http_header_timeouts",
            "Connections closed because a request's headers took over server.header_timeout_s.",
            registry=registry,
        )

    def _open(self, name: str) -> float:
        return float(sum(x.open for x in self.listeners if x.name == name))

    def of(self, request: web.Request) -> _Connection | None:
        protocol = request.protocol
        return self._connections.get(protocol) if isinstance(protocol, RequestHandler) else None

    def begin_draining(self) -> None:
        """From now on new requests get 503 and running ones ``Connection: close``."""
        self.draining = True
        self._quiet = asyncio.Event()
        if self.in_flight == 0:
            self._quiet.set()

    async def wait_quiet(self, timeout_s: float) -> bool:
        """Wait (at most ``timeout_s``) until no request runs; whether none does."""
        assert self._quiet is not None, "begin_draining() first"
        try:
            async with asyncio.timeout(timeout_s):
                await self._quiet.wait()
        except TimeoutError:
            return False
        return True

    def request_started(self) -> None:
        self.in_flight += 1

    def request_finished(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0 and self._quiet is not None:
            self._quiet.set()


class _Connection(asyncio.Protocol):
    """aiohttp's request handler for one connection, plus its count and header deadline."""

    __slots__ = ("_header_timer", "_inner", "_listener", "busy")

    def __init__(self, listener: Listener, inner: RequestHandler) -> None:
        self._listener = listener
        self._inner = inner
        self._header_timer: asyncio.TimerHandle | None = None
        self.busy = False

    @property
    def probes_only(self) -> bool:
        return self._listener.probes_only

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._listener.open += 1
        self._listener.waiting[self] = time.monotonic()
        self._listener.table._connections[self._inner] = self
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if not self.busy and self._header_timer is None:  # the first bytes of a request
            self._header_timer = asyncio.get_running_loop().call_later(
                self._listener.table.header_timeout_s, self._headers_too_slow
            )
        self._inner.data_received(data)

    def eof_received(self) -> None:
        self._inner.eof_received()  # aiohttp's returns None: the transport then closes

    def connection_lost(self, exc: BaseException | None) -> None:
        self._listener.open -= 1
        self._listener.waiting.pop(self, None)
        self._listener.table._connections.pop(self._inner, None)
        self._cancel_timer()
        self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    def request_started(self) -> None:
        """aiohttp has the request's headers: their deadline is met."""
        self.busy = True
        self._listener.waiting.pop(self, None)
        self._cancel_timer()

    def request_finished(self) -> None:
        self.busy = False
        if not self._inner.connected:
            return
        self._listener.waiting[self] = time.monotonic()

    def close(self) -> None:
        """Close at once (it is waiting for a request: nothing is lost)."""
        self._cancel_timer()
        self._inner.force_close()

    def _cancel_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if self.busy:
            return
        table = self._listener.table
        if table.header_timeouts is not None:
            table.header_timeouts.inc()
        log.debug("closing a connection whose request headers took too long")
        self._inner.force_close()


class _Refusal(asyncio.Protocol):
    """A connection past its listener's cap: answer 503, linger briefly, close."""

    def __init__(self, table: ConnectionTable, listener: str) -> None:
        self._table = table
        self._listener = listener
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        if self._table.refused is not None:
            self._table.refused.labels(self._listener).inc()
        transport.write(REFUSAL)
        if self._table.lingering_refusals >= LINGERING_REFUSALS or not transport.can_write_eof():
            transport.close()
            return
        # Closing with the client's request unread would send a reset that can destroy
        # the answer before it is read: half-close, drain what comes, then close.
        self._table.lingering_refusals += 1
        self._transport = transport
        transport.write_eof()
        self._timer = asyncio.get_running_loop().call_later(_REFUSAL_LINGER_S, transport.close)

    def data_received(self, data: bytes) -> None:
        pass  # the request of a refused connection is read and dropped

    def eof_received(self) -> bool:
        return False  # the client is done: close

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._transport is not None:
            self._table.lingering_refusals -= 1
            self._transport = None
        if self._timer is not None:
            self._timer.cancel()


def connection_middleware(table: ConnectionTable) -> Middleware:
    """Header deadlines off while a request runs; probe listeners serve probes; draining."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        connection = table.of(request)
        if connection is not None:
            connection.request_started()
        try:
            if connection is not None and connection.probes_only:
                if request.path not in PROBE_PATHS:
                    return error_response(
                        NotFoundError(
                            ErrorCode.NOT_FOUND,
                            "the probe listener serves only " + ", ".join(sorted(PROBE_PATHS)),
                        )
                    )
            elif table.draining:
                refusal = error_response(
                    ServiceUnavailableError(
                        ErrorCode.NOT_READY, "the daemon is shutting down; retry elsewhere"
                    )
                )
                refusal.force_close()
                return refusal
            table.request_started()
            try:
                response = await handler(request)
            finally:
                table.request_finished()
            if table.draining:
                response.force_close()  # this connection ends with this answer
            return response
        finally:
            if connection is not None:
                connection.request_finished()

    return middleware
