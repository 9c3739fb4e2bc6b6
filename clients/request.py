"""One HTTP exchange described as data: :class:`Request` (what to send, how to read the
answer) and :class:`Reply` (what came back), and :data:`Flow`, a command that needs
more than one exchange.

Nothing here does I/O. Commands (:mod:`~semcached.clients.commands`,
:mod:`~semcached.clients.kv`) build requests and flows; the clients' transports
(:mod:`~semcached.clients.sync`, :mod:`~semcached.clients.aio`) send them.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeAlias, TypeVar

import orjson

from semcached.errors import ApiError, api_error_class

__all__ = ["Flow", "Reply", "Request", "raise_for_reply"]

T = TypeVar("T")

_OK = frozenset({200})


@dataclass(frozen=True, slots=True)
class Reply:
    """What came back: status, headers (lower-cased names) and the raw body."""

    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body)


@dataclass(frozen=True, slots=True)
class Request(Generic[T]):
    """One HTTP exchange, described without performing it.

    ``idempotent`` requests may be retried after a transport failure or a 502/503/504;
    others are sent at most once. ``ok_status`` lists the statuses ``parse`` handles;
    any other status is raised as an :class:`~semcached.errors.ApiError`. The body is
    ``json`` (serialised) or ``data`` (raw bytes, sent as they are); ``headers`` add to
    the client's own. ``timeout_s`` bounds the exchange as a whole, connecting and
    retries included (each attempt gets what is left; none starts after it): a
    caller's budget, tighter than the client's own per-attempt timeouts.
    """

    method: str
    path: str
    parse: Callable[[Reply], T]
    idempotent: bool
    json: Any = None
    params: Mapping[str, str] | None = None
    ok_status: frozenset[int] = field(default=_OK)
    data: bytes | bytearray | memoryview | None = None
    headers: Mapping[str, str] | None = None
    timeout_s: float | None = None

    def body(self) -> bytes | bytearray | memoryview | None:
        if self.data is not None:
            return self.data
        return None if self.json is None else orjson.dumps(self.json)


Flow: TypeAlias = Generator[Request[Any], Any, T]
"""A command that needs more than one exchange, or local work between exchanges (a
shared-memory file staged around a put, a lease taken then a segment mapped): a
generator that yields each :class:`Request`, is sent its parsed result (or has its
error thrown in, so ``try``/``with`` inside the flow work as in straight-line code),
and returns the command's result. Each client drives flows with its own I/O."""


def raise_for_reply(reply: Reply) -> ApiError:
    """The typed exception for an error reply (the daemon's JSON error, or a stand-in)."""
    cls = api_error_class(reply.status)
    try:
        error = reply.json()["error"]
        return cls(
            str(error["code"]), str(error["message"]), status=reply.status, field=error.get("field")
        )
    except (orjson.JSONDecodeError, KeyError, TypeError):
        # Not the daemon's error format: a proxy or load balancer in between answered.
        text = reply.body[:200].decode("utf-8", "replace")
        return cls("http_error", f"HTTP {reply.status}: {text}", status=reply.status)
