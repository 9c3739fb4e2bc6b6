"""The command layer shared by the sync and the async client.

A command is a function that returns a :class:`Request`: what to send and how to
turn the reply into a typed result. It does no I/O; the clients' transports
execute requests (the redis-py split between commands and connections), so each
command is written once and both clients stay in step.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import numpy as np
import orjson
from numpy.typing import NDArray

from semcached.errors import ApiError, api_error_class

__all__ = [
    "CategoryStats",
    "Entry",
    "InsertResult",
    "LookupQuery",
    "LookupResult",
    "Readiness",
    "Reply",
    "Request",
    "VectorLike",
    "delete_entry",
    "get_config",
    "get_entry",
    "health",
    "insert",
    "lookup",
    "lookup_many",
    "metrics",
    "purge",
    "raise_for_reply",
    "ready",
    "set_log_level",
    "stats",
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
    any other status is raised as an :class:`~semcached.errors.ApiError`. The body is
    ``json`` (serialised) or ``data`` (raw bytes, sent as they are); ``headers`` add to
    the client's own.
    """

    method: str
    path: str
    parse: Callable[[Reply], T]
    idempotent: bool
    json: Any = None
    params: Mapping[str, str] | None = None
    ok_status: frozenset[int] = field(default=frozenset({200}))
    data: bytes | bytearray | memoryview | None = None
    headers: Mapping[str, str] | None = None

    def body(self) -> bytes | bytearray | memoryview | None:
        if self.data is not None:
            return self.data
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


# --- semantic cache ---------------------------------------------------------------------

VectorLike = Sequence[float] | NDArray[np.floating[Any]]


def _encode_vector(vector: VectorLike) -> str:
    """Base64 of little-endian float32: a third the size of a JSON list, parsed without floats."""
    return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode()


def _decode_response(value: Any, response_format: str) -> Any:
    return base64.b64decode(value) if response_format == "bytes" else value


@dataclass(frozen=True, slots=True)
class LookupResult:
    """A semantic lookup's answer. ``response`` is the cached JSON value (or bytes)."""

    hit: bool
    category: str
    similarity: float | None = None
    entry_id: int | None = None
    age_s: float | None = None
    strategy: str | None = None
    response: Any = None


@dataclass(frozen=True, slots=True)
class InsertResult:
    entry_id: int
    category: str
    expires_at: float


@dataclass(frozen=True, slots=True)
class Entry:
    """A cached entry as stored."""

    entry_id: int
    namespace: str
    category: str
    partition: str
    model: str
    prompt: str
    response: Any
    created_at: float
    expires_at: float
    hit_count: int
    last_hit_at: float
    size_bytes: int


@dataclass(frozen=True, slots=True)
class CategoryStats:
    entries: int
    bytes: int
    hits: int
    misses: int
    inserts: int
    evictions: int
    expirations: int


@dataclass(frozen=True, slots=True)
class LookupQuery:
    """One lookup of a batch (see :func:`lookup_many`)."""

    namespace: str
    text: str | None = None
    vector: VectorLike | None = None
    category: str | None = None
    partition: str | None = None
    threshold: float | None = None

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"namespace": self.namespace}
        if self.text is not None:
            body["text"] = self.text
        if self.vector is not None:
            body["vector"] = _encode_vector(self.vector)
        for name in ("category", "partition", "threshold"):
            value = getattr(self, name)
            if value is not None:
                body[name] = value
        return body


def _lookup_result(doc: Mapping[str, Any]) -> LookupResult:
    return LookupResult(
        hit=bool(doc["hit"]),
        category=str(doc["category"]),
        similarity=doc.get("similarity"),
        entry_id=doc.get("entry_id"),
        age_s=doc.get("age_s"),
        strategy=doc.get("strategy"),
        response=_decode_response(doc.get("response"), doc.get("response_format", "json")),
    )


def lookup(query: LookupQuery) -> Request[LookupResult]:
    """``POST /v1/semantic/lookup``. Safe to retry: a lookup changes nothing but hit counts."""
    return Request(
        "POST",
        "/v1/semantic/lookup",
        lambda r: _lookup_result(r.json()),
        idempotent=True,
        json=query.body(),
    )


def lookup_many(queries: Sequence[LookupQuery]) -> Request[list[LookupResult]]:
    """``POST /v1/semantic/lookup:batch``: results in the order of ``queries``."""
    return Request(
        "POST",
        "/v1/semantic/lookup:batch",
        lambda r: [_lookup_result(d) for d in r.json()["results"]],
        idempotent=True,
        json={"lookups": [q.body() for q in queries]},
    )


def insert(
    namespace: str,
    prompt: str,
    response: Any,
    *,
    category: str | None = None,
    partition: str | None = None,
    model: str | None = None,
    vector: VectorLike | None = None,
    ttl_s: float | None = None,
) -> Request[InsertResult]:
    """``POST /v1/semantic/entries``. ``bytes`` responses are stored as opaque bytes,
    anything else as JSON. Not retried: a repeat would store the entry twice."""
    body: dict[str, Any] = {"namespace": namespace, "prompt": prompt}
    if isinstance(response, bytes | bytearray | memoryview):
        body["response"] = base64.b64encode(bytes(response)).decode()
        body["response_format"] = "bytes"
    else:
        body["response"] = response
    optional = {"category": category, "partition": partition, "model": model, "ttl_s": ttl_s}
    body.update({k: v for k, v in optional.items() if v is not None})
    if vector is not None:
        body["vector"] = _encode_vector(vector)

    def parse(reply: Reply) -> InsertResult:
        doc = reply.json()
        return InsertResult(int(doc["entry_id"]), str(doc["category"]), float(doc["expires_at"]))

    return Request(
        "POST", "/v1/semantic/entries", parse, idempotent=False, json=body,
        ok_status=frozenset({201}),
    )  # fmt: skip


def get_entry(entry_id: int, namespace: str) -> Request[Entry]:
    """``GET /v1/semantic/entries/{id}``; a missing entry raises NotFoundError."""

    def parse(reply: Reply) -> Entry:
        doc = reply.json()
        return Entry(
            entry_id=int(doc["entry_id"]),
            namespace=doc["namespace"],
            category=doc["category"],
            partition=doc["partition"],
            model=doc["model"],
            prompt=doc["prompt"],
            response=_decode_response(doc["response"], doc["response_format"]),
            created_at=float(doc["created_at"]),
            expires_at=float(doc["expires_at"]),
            hit_count=int(doc["hit_count"]),
            last_hit_at=float(doc["last_hit_at"]),
            size_bytes=int(doc["size_bytes"]),
        )

    return Request(
        "GET", f"/v1/semantic/entries/{int(entry_id)}", parse, idempotent=True,
        params={"namespace": namespace},
    )  # fmt: skip


def delete_entry(entry_id: int, namespace: str) -> Request[bool]:
    """``DELETE /v1/semantic/entries/{id}``: True if it was removed, False if absent."""
    return Request(
        "DELETE", f"/v1/semantic/entries/{int(entry_id)}", lambda r: r.status == 204,
        idempotent=True, params={"namespace": namespace}, ok_status=frozenset({204, 404}),
    )  # fmt: skip


def purge(
    namespace: str, *, category: str | None = None, partition: str | None = None
) -> Request[int]:
    """``POST /v1/semantic/purge``: how many entries were removed."""
    body: dict[str, Any] = {"namespace": namespace}
    if category is not None:
        body["category"] = category
    if partition is not None:
        body["partition"] = partition
    return Request(
        "POST", "/v1/semantic/purge", lambda r: int(r.json()["purged"]), idempotent=True,
        json=body,
    )  # fmt: skip


def stats() -> Request[dict[str, CategoryStats]]:
    """``GET /v1/semantic/stats``: counters per category."""
    return Request(
        "GET",
        "/v1/semantic/stats",
        lambda r: {n: CategoryStats(**s) for n, s in r.json()["categories"].items()},
        idempotent=True,
    )
