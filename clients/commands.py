"""The command layer shared by the sync and the async client.

A command is a function that returns a :class:`Request`: what to send and how to
turn the reply into a typed result. It does no I/O; the clients' transports
execute requests (the redis-py split between commands and connections), so each
command is written once and both clients stay in step.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import orjson

from semcached.errors import ApiError, api_error_class

__all__ = [
    "Readiness",
    "Reply",
    "Request",
    "get_config",
    "health",
    "metrics",
    "raise_for_reply",
    "ready",
    "set_log_level",
]

T = TypeVar("T")


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
    any other status is raised as an :class:`~semcached.errors.ApiError`.
    """

    method: str
    path: str
    parse: Callable[[Reply], T]
    idempotent: bool
    json: Any = None
    params: Mapping[str, str] | None = None
    ok_status: frozenset[int] = field(default=frozenset({200}))

    def body(self) -> bytes | None:
        return None if self.json is None else orjson.dumps(self.json)


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


# --- health ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Readiness:
    """The daemon's answer on ``/readyz``."""

    ready: bool
    status: str
    waiting_for: tuple[str, ...] = ()
    failed: Mapping[str, str] = field(default_factory=dict)


def _parse_alive(reply: Reply) -> bool:
    return reply.status == 200


def _parse_readiness(reply: Reply) -> Readiness:
    doc = reply.json()
    return Readiness(
        ready=reply.status == 200,
        status=str(doc.get("status", "unknown")),
        waiting_for=tuple(doc.get("waiting_for", ())),
        failed=dict(doc.get("failed", {})),
    )


def health() -> Request[bool]:
    """``GET /livez``: True when the daemon process answers."""
    return Request("GET", "/livez", _parse_alive, idempotent=True)


def ready() -> Request[Readiness]:
    """``GET /readyz``: whether every store and index is up (503 is an answer, not an error)."""
    return Request(
        "GET", "/readyz", _parse_readiness, idempotent=True, ok_status=frozenset({200, 503})
    )


def metrics() -> Request[str]:
    """``GET /metrics``: the Prometheus exposition text."""
    return Request("GET", "/metrics", lambda r: r.body.decode(), idempotent=True)


# --- admin ----------------------------------------------------------------------------


def get_config() -> Request[dict[str, Any]]:
    """``GET /v1/admin/config``: the effective settings, secrets redacted."""
    return Request("GET", "/v1/admin/config", lambda r: dict(r.json()), idempotent=True)


def set_log_level(level: str) -> Request[str]:
    """``PUT /v1/admin/log-level``: change the daemon's log level until restart."""
    return Request(
        "PUT",
        "/v1/admin/log-level",
        lambda r: str(r.json()["level"]),
        idempotent=True,
        json={"level": level},
    )
