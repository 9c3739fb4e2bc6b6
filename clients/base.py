"""What the sync and async clients share: options, headers, the retry loop, flows, and
:class:`Method`, which turns one command into a method of both clients.

A command is written once, as a function that returns a
:class:`~semcached.clients.request.Request` (or, for commands that need more than one
exchange or local work between them, a :data:`~semcached.clients.request.Flow`).
:func:`command` and :func:`flow` wrap it in a :class:`Method`, declared once in
:class:`~semcached.clients.api.ClientApi`. A Method holds two plain functions with the
command's name, signature and docstring: one that executes the request (or drives the
flow) and returns the result, for a :class:`BlockingClient`, and a coroutine function
that awaits it, for an :class:`AsyncClient`. The transports differ only in
``_send``.

Types: ``Method[P, T]`` is a descriptor over the command's parameters ``P``
(ParamSpec) and result ``T``. Its ``__get__`` overloads tell a type checker what each
kind of client gets: ``SemcachedClient().lookup`` is ``Callable[P, LookupResult]``,
``AsyncSemcachedClient().lookup`` is ``Callable[P, Coroutine[Any, Any,
LookupResult]]`` (an awaitable that ``asyncio.create_task`` also takes), so wrong
arguments and forgotten awaits are caught in both, and ``help()`` shows the command's
own signature and docstring.

Speed: each function is compiled once at import from the command's signature (as
:mod:`dataclasses` compiles ``__init__``), so its arguments bind as a hand-written
method's do, with no ``*args``/``**kwargs`` repacking; and when a concrete client class
is created, :meth:`ClientBase.__init_subclass__` puts its kind's function of each
inherited Method into the class as an ordinary method, so attribute access binds at C
speed too. The descriptor's ``__get__`` only serves the type checker (and classes
outside this scheme). The code before this design restated every signature in each
client (put_chunk's fourteen parameters three times); a stub file or a code generator
run at build time could drift from the commands.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MethodType
from typing import Any, ClassVar, Concatenate, Generic, ParamSpec, Self, TypeVar, overload
from urllib.parse import urlencode, urlsplit

from semcached._version import __version__
from semcached.clients.request import Flow, Reply, Request, raise_for_reply
from semcached.clients.retry import RETRY_STATUSES, RetryPolicy
from semcached.clients.shm import ShmPath
from semcached.errors import SemcachedConnectionError, SemcachedTimeoutError
from semcached.protocol.headers import JSON

__all__ = [
    "AsyncClient",
    "Attempts",
    "BlockingClient",
    "ClientBase",
    "ClientOptions",
    "Method",
    "command",
    "flow",
]

log = logging.getLogger("semcached.clients")

T = TypeVar("T")
P = ParamSpec("P")

_TRANSPORT_ERRORS = (SemcachedConnectionError, SemcachedTimeoutError)
_ASSIGNED = ("__module__", "__name__", "__qualname__", "__doc__")


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
        headers = {"User-Agent": f"semcached-python/{__version__}", "Accept": JSON}
        if request.json is not None:
            headers["Content-Type"] = JSON
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        if request.headers:
            headers.update(request.headers)
        return headers


class Attempts(Generic[T]):
    """Decides, for one request, whether to retry and how long to wait first, within
    the request's own ``timeout_s`` when it has one."""

    def __init__(self, request: Request[T], policy: RetryPolicy) -> None:
        self._request = request
        self._delays = policy.delays() if request.idempotent else iter(())
        self._attempt = 1
        self._deadline = None if request.timeout_s is None else time.monotonic() + request.timeout_s

    def next_request(self) -> Request[T]:
        """The request to send now: with a deadline, its timeout is what is left of it."""
        if self._deadline is None:
            return self._request
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise SemcachedTimeoutError(
                f"{self._request.method} {self._request.path}: "
                f"no time left of its {self._request.timeout_s} s"
            )
        return replace(self._request, timeout_s=left)

    def retry_delay(self, reason: str) -> float | None:
        """Seconds to wait before the next attempt, or None to give up."""
        delay = next(self._delays, None)
        deadline = self._deadline
        if delay is not None and deadline is not None and time.monotonic() + delay >= deadline:
            return None  # the next attempt would start after the deadline
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


# --- one command, a method of both clients ------------------------------------------------


class Method(Generic[P, T]):
    """A command as a method of both clients (see the module docstring).

    Holds two functions compiled from the command ``build``'s signature (less its
    ``supplied`` first parameters, which the client passes from its own attributes):
    ``blocking`` calls ``self.<runner>(build(...))``, ``asynchronous`` awaits it. Both
    carry the command's signature and docstring (``__wrapped__`` is the command).
    """

    def __init__(
        self, build: Callable[..., Any], runner: str, supplied: tuple[str, ...] = ()
    ) -> None:
        params = list(inspect.signature(build).parameters.values())[len(supplied) :]
        self.blocking: Callable[..., Any] = _compile(build, params, supplied, runner, False)
        self.asynchronous: Callable[..., Any] = _compile(build, params, supplied, runner, True)
        client = inspect.Parameter("self", inspect.Parameter.POSITIONAL_ONLY)
        signature = inspect.Signature([client, *params])
        for function in (self.blocking, self.asynchronous):
            wrapper: Any = functools.update_wrapper(function, build, assigned=_ASSIGNED)
            wrapper.__signature__ = signature
        self.__doc__ = build.__doc__
        self.__wrapped__ = build

    def __set_name__(self, owner: type, name: str) -> None:
        for function in (self.blocking, self.asynchronous):
            function.__name__ = name
            function.__module__ = owner.__module__
            function.__qualname__ = f"{owner.__qualname__}.{name}"

    @overload
    def __get__(
        self, client: None, owner: type[BlockingClient]
    ) -> Callable[Concatenate[BlockingClient, P], T]: ...
    @overload
    def __get__(
        self, client: None, owner: type[AsyncClient]
    ) -> Callable[Concatenate[AsyncClient, P], Coroutine[Any, Any, T]]: ...
    @overload
    def __get__(self, client: None, owner: type) -> Self: ...
    @overload
    def __get__(self, client: BlockingClient, owner: type) -> Callable[P, T]: ...
    @overload
    def __get__(self, client: AsyncClient, owner: type) -> Callable[P, Coroutine[Any, Any, T]]: ...
    def __get__(self, client: ClientBase | None, owner: type) -> Any:
        if client is None:
            return self
        return MethodType(self.asynchronous if client.is_async else self.blocking, client)


# --- the two kinds of client ----------------------------------------------------------


class ClientBase:
    """The state both clients keep: connection options and the same-host shm path."""

    is_async: ClassVar[bool]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Give a concrete client (one that says whether it ``is_async``) the function
        of each :class:`Method` it inherits: its own kind, as a plain method."""
        super().__init_subclass__(**kwargs)
        if not hasattr(cls, "is_async"):
            return
        seen: set[str] = set()
        for klass in cls.__mro__:
            for name, value in vars(klass).items():
                if name not in seen and isinstance(value, Method):
                    setattr(cls, name, value.asynchronous if cls.is_async else value.blocking)
                seen.add(name)

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8080",
        *,
        token: str | None = None,
        timeout_s: float = 10.0,
        connect_timeout_s: float = 2.0,
        retry: RetryPolicy | None = None,
        pool_size: int = 10,
        shm: bool = True,
        shm_dir: str | Path = "/dev/shm",
    ) -> None:
        self.options = ClientOptions(
            base_url, token, timeout_s, connect_timeout_s, retry or RetryPolicy(), pool_size
        )
        # Zero-copy reads of KV blobs when the daemon is on this host (see ``get_chunk``).
        self._shm = ShmPath(shm, Path(shm_dir))
        self._open()

    def _open(self) -> None:
        """Set up the transport's own state (called at the end of ``__init__``)."""


class BlockingClient(ClientBase):
    """A client whose methods block: it sends one request with :meth:`_send`."""

    is_async = False

    def _send(self, request: Request[Any]) -> Reply:
        raise NotImplementedError

    def execute(self, request: Request[T]) -> T:
        """Send ``request`` (retrying if it is idempotent) and return its parsed result."""
        attempts = Attempts(request, self.options.retry)
        while True:
            try:
                reply = self._send(attempts.next_request())
            except _TRANSPORT_ERRORS as exc:
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

    def run(self, flow: Flow[T]) -> T:
        """Drive ``flow``: execute each request it yields and send it the result (or
        throw the error into it) until it returns."""
        try:
            request = next(flow)
            while True:
                try:
                    result = self.execute(request)
                except BaseException as exc:  # the flow's try/with blocks see it
                    request = flow.throw(exc)
                else:
                    request = flow.send(result)
        except StopIteration as stop:
            value: T = stop.value
            return value


class AsyncClient(ClientBase):
    """A client whose methods are coroutines: it sends one request with :meth:`_send`."""

    is_async = True

    async def _send(self, request: Request[Any]) -> Reply:
        raise NotImplementedError

    async def execute(self, request: Request[T]) -> T:
        """Send ``request`` (retrying if it is idempotent) and return its parsed result."""
        attempts = Attempts(request, self.options.retry)
        while True:
            try:
                reply = await self._send(attempts.next_request())
            except _TRANSPORT_ERRORS as exc:
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

    async def run(self, flow: Flow[T]) -> T:
        """Drive ``flow`` as :meth:`BlockingClient.run` does, awaiting each request."""
        try:
            request = next(flow)
            while True:
                try:
                    result = await self.execute(request)
                except BaseException as exc:  # cancellation too: the flow cleans up
                    request = flow.throw(exc)
                else:
                    request = flow.send(result)
        except StopIteration as stop:
            value: T = stop.value
            return value


def command(build: Callable[P, Request[T]]) -> Method[P, T]:
    """A method that sends the one request ``build`` returns and returns its result."""
    return Method(build, "execute")


def flow(build: Callable[Concatenate[ShmPath, P], Flow[T]]) -> Method[P, T]:
    """A method that drives the flow ``build`` returns; the flow gets the client's
    same-host shm path first (what it learned about the daemon's host lives there)."""
    return Method(build, "run", supplied=("self._shm",))


def _compile(
    build: Callable[..., Any],
    params: list[inspect.Parameter],
    supplied: tuple[str, ...],
    runner: str,
    is_async: bool,
) -> Callable[..., Any]:
    """``def name(self, /, <params>): return self.<runner>(build(<supplied>, <params>))``
    (``async def`` and ``await`` for ``is_async``), compiled once at import as
    :mod:`dataclasses` compiles ``__init__``: the parameters are bound as a hand-written
    method binds them, with no ``*args``/``**kwargs`` repacking on each call."""
    kind = inspect.Parameter
    namespace: dict[str, Any] = {"__build": build}
    head: list[str] = ["self"]  # then the positional-only parameters, then "/"
    rest: list[str] = []
    args = list(supplied)
    for p in params:
        text = p.name
        if p.kind is kind.VAR_POSITIONAL:
            text = f"*{p.name}"
            args.append(text)
        elif p.kind is kind.VAR_KEYWORD:
            text = f"**{p.name}"
            args.append(text)
        else:
            if p.kind is kind.KEYWORD_ONLY and not any(t.startswith("*") for t in rest):
                rest.append("*")
            args.append(f"{p.name}={p.name}" if p.kind is kind.KEYWORD_ONLY else p.name)
        if p.default is not p.empty:
            namespace[f"__default_{p.name}"] = p.default
            text += f"=__default_{p.name}"
        (head if p.kind is kind.POSITIONAL_ONLY else rest).append(text)
    call = f"self.{runner}(__build({', '.join(args)}))"
    source = (
        f"{'async ' if is_async else ''}def {build.__name__}({', '.join([*head, '/', *rest])}):\n"
        f"    return {'await ' if is_async else ''}{call}\n"
    )
    exec(compile(source, f"<semcached.clients.{build.__name__}>", "exec"), namespace)
    function: Callable[..., Any] = namespace[build.__name__]
    return function
