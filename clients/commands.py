"""The daemon's health, admin and semantic-cache commands.

A command is a function that returns a :class:`~semcached.clients.request.Request`:
what to send and how to turn the reply into a typed result. It does no I/O; the
clients' transports execute requests (the redis-py split between commands and
connections). :class:`~semcached.clients.api.ClientApi` makes each command a method
of both clients, with this signature and docstring, so each command is written once.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec
import numpy as np
from numpy.typing import NDArray

from semcached.clients.request import Reply, Request
from semcached.protocol.semantic import (
    CategoryCalibration,
    CategoryStats,
    ClassificationStats,
    SemanticFeedbackResult,
    SemanticStats,
)

__all__ = [
    "CategoryCalibration",
    "CategoryStats",
    "ClassificationStats",
    "Entry",
    "FeedbackResult",
    "InsertResult",
    "LookupQuery",
    "LookupResult",
    "Readiness",
    "VectorLike",
    "classification",
    "delete_entry",
    "feedback",
    "get_config",
    "get_entry",
    "health",
    "insert",
    "lookup",
    "lookup_many",
    "metrics",
    "purge",
    "ready",
    "set_log_level",
    "stats",
]

_READY_OK = frozenset({200, 503})
_CREATED = frozenset({201})
_GONE_OK = frozenset({204, 404})


# --- health ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Readiness:
    """The daemon's answer on ``/readyz``."""

    ready: bool
    status: str
    waiting_for: tuple[str, ...] = ()
    failed: Mapping[str, str] = field(default_factory=dict)
    storage_full: tuple[str, ...] = ()  # stores refusing writes (507); still ready


def _parse_alive(reply: Reply) -> bool:
    return reply.status == 200


def _parse_readiness(reply: Reply) -> Readiness:
    doc = reply.json()
    return Readiness(
        ready=reply.status == 200,
        status=str(doc.get("status", "unknown")),
        waiting_for=tuple(doc.get("waiting_for", ())),
        failed=dict(doc.get("failed", {})),
        storage_full=tuple(doc.get("storage_full", ())),
    )


def health() -> Request[bool]:
    """True when the daemon process answers ``GET /livez``."""
    return Request("GET", "/livez", _parse_alive, idempotent=True)


def ready() -> Request[Readiness]:
    """The daemon's readiness, ``GET /readyz`` (``ready`` is False while it starts or
    stops: a 503 there is an answer, not an error)."""
    return Request("GET", "/readyz", _parse_readiness, idempotent=True, ok_status=_READY_OK)


def _text(reply: Reply) -> str:
    return reply.body.decode()


def metrics() -> Request[str]:
    """The Prometheus exposition text of ``GET /metrics``."""
    return Request("GET", "/metrics", _text, idempotent=True)


# --- admin ----------------------------------------------------------------------------


def _config(reply: Reply) -> dict[str, Any]:
    return dict(reply.json())


def get_config() -> Request[dict[str, Any]]:
    """The daemon's effective settings, secrets redacted (``GET /v1/admin/config``)."""
    return Request("GET", "/v1/admin/config", _config, idempotent=True)


def _level(reply: Reply) -> str:
    return str(reply.json()["level"])


def set_log_level(level: str) -> Request[str]:
    """Change the daemon's log level until it restarts (``PUT /v1/admin/log-level``)."""
    return Request("PUT", "/v1/admin/log-level", _level, idempotent=True, json={"level": level})


# --- semantic cache ---------------------------------------------------------------------

VectorLike = Sequence[float] | NDArray[np.floating[Any]]


def _encode_vector(vector: VectorLike) -> str:
    """Base64 of little-endian float32: a third the size of a JSON list, parsed without floats."""
    return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode()


def _decode_response(value: Any, response_format: str) -> Any:
    return base64.b64decode(value) if response_format == "bytes" else value


@dataclass(frozen=True, slots=True)
class LookupResult:
    """A semantic lookup's answer. ``response`` is the cached JSON value (or bytes).

    ``category_source`` says how ``category`` was chosen: ``given`` (the request named
    it), ``inferred`` (classified by the categories' example prompts, with
    ``category_confidence``), ``default`` (named none; unsure or classification off) or
    ``entry`` (an exact match's stored entry). ``verifier_score``: the hit verifier's
    probability that the best candidate answers the prompt, when it judged it."""

    hit: bool
    category: str
    similarity: float | None = None
    entry_id: int | None = None
    age_s: float | None = None
    strategy: str | None = None
    response: Any = None
    lookup_id: str | None = None  # on a hit: pass it to feedback()
    category_source: str = "given"
    category_confidence: float | None = None
    verifier_score: float | None = None
    load_level: float = 0.0  # how far the model's reported load relaxed the hit rule


@dataclass(frozen=True, slots=True)
class InsertResult:
    """Where an entry was stored; ``category_source`` and ``category_confidence`` as in
    :class:`LookupResult`."""

    entry_id: int
    category: str
    expires_at: float
    category_source: str = "given"
    category_confidence: float | None = None


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
class LookupQuery:
    """One lookup of a batch (see :func:`lookup_many`)."""

    namespace: str
    text: str | None = None
    vector: VectorLike | None = None
    category: str | None = None
    partition: str | None = None
    threshold: float | None = None
    model: str | None = None
    exact_only: bool = False

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"namespace": self.namespace}
        if self.text is not None:
            body["text"] = self.text
        if self.vector is not None:
            body["vector"] = _encode_vector(self.vector)
        for name in ("category", "partition", "threshold", "model"):
            value = getattr(self, name)
            if value is not None:
                body[name] = value
        if self.exact_only:
            body["exact_only"] = True
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
        lookup_id=doc.get("lookup_id"),
        category_source=str(doc.get("category_source", "given")),
        category_confidence=doc.get("category_confidence"),
        verifier_score=doc.get("verifier_score"),
        load_level=float(doc.get("load_level", 0.0)),
    )


def _lookup(reply: Reply) -> LookupResult:
    return _lookup_result(reply.json())


def lookup(
    namespace: str,
    text: str | None = None,
    *,
    vector: VectorLike | None = None,
    category: str | None = None,
    partition: str | None = None,
    threshold: float | None = None,
    model: str | None = None,
    exact_only: bool = False,
) -> Request[LookupResult]:
    """Find a cached response to a prompt meaning the same thing (text and/or vector),
    ``POST /v1/semantic/lookup``; ``model``: the downstream model, whose reported load
    (:func:`~semcached.clients.load.report_load`) may relax the hit rule;
    ``exact_only``: the same text only (no embedding, no search). Safe to retry: a
    lookup changes nothing but hit counts."""
    query = LookupQuery(namespace, text, vector, category, partition, threshold, model, exact_only)
    return Request("POST", "/v1/semantic/lookup", _lookup, idempotent=True, json=query.body())


def _lookups(reply: Reply) -> list[LookupResult]:
    return [_lookup_result(d) for d in reply.json()["results"]]


def lookup_many(queries: Sequence[LookupQuery]) -> Request[list[LookupResult]]:
    """Several lookups in one request (``POST /v1/semantic/lookup:batch``); results in
    the order of ``queries``."""
    body = {"lookups": [q.body() for q in queries]}
    return Request("POST", "/v1/semantic/lookup:batch", _lookups, idempotent=True, json=body)


def _inserted(reply: Reply) -> InsertResult:
    doc = reply.json()
    return InsertResult(
        int(doc["entry_id"]),
        str(doc["category"]),
        float(doc["expires_at"]),
        str(doc.get("category_source", "given")),
        doc.get("category_confidence"),
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
    """Cache ``response`` for ``prompt`` (``POST /v1/semantic/entries``); returns once
    durable. ``bytes`` responses are stored as opaque bytes, anything else as JSON.
    Not retried: a repeat would store the entry twice."""
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
    return Request(
        "POST", "/v1/semantic/entries", _inserted, idempotent=False, json=body, ok_status=_CREATED
    )


def _entry(reply: Reply) -> Entry:
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


def get_entry(entry_id: int, namespace: str) -> Request[Entry]:
    """One entry (``GET /v1/semantic/entries/{id}``); raises NotFoundError if it is
    absent, expired or in another namespace."""
    path = f"/v1/semantic/entries/{int(entry_id)}"
    return Request("GET", path, _entry, idempotent=True, params={"namespace": namespace})


def _removed(reply: Reply) -> bool:
    return reply.status == 204


def delete_entry(entry_id: int, namespace: str) -> Request[bool]:
    """Remove one entry (``DELETE /v1/semantic/entries/{id}``); False if there was none."""
    return Request(
        "DELETE",
        f"/v1/semantic/entries/{int(entry_id)}",
        _removed,
        idempotent=True,
        params={"namespace": namespace},
        ok_status=_GONE_OK,
    )


def _purged(reply: Reply) -> int:
    return int(reply.json()["purged"])


def purge(
    namespace: str, *, category: str | None = None, partition: str | None = None
) -> Request[int]:
    """Remove a namespace's entries, optionally one category or partition
    (``POST /v1/semantic/purge``); how many were removed."""
    body: dict[str, Any] = {"namespace": namespace}
    if category is not None:
        body["category"] = category
    if partition is not None:
        body["partition"] = partition
    return Request("POST", "/v1/semantic/purge", _purged, idempotent=True, json=body)


def _category_stats(reply: Reply) -> dict[str, CategoryStats]:
    return msgspec.json.decode(reply.body, type=SemanticStats).categories


def stats() -> Request[dict[str, CategoryStats]]:
    """Counters per category (``GET /v1/semantic/stats``)."""
    return Request("GET", "/v1/semantic/stats", _category_stats, idempotent=True)


FeedbackResult = SemanticFeedbackResult
"""What a report recorded: ``counted`` (it fed the category's calibration), ``removed``
(the entry was deleted), and the category's ``calibration`` after it."""


def _feedback(reply: Reply) -> FeedbackResult:
    return msgspec.json.decode(reply.body, type=SemanticFeedbackResult)


def feedback(
    lookup_id: str | None = None,
    *,
    correct: bool,
    entry_id: int | None = None,
    reason: str | None = None,
) -> Request[FeedbackResult]:
    """Report whether a served hit was right (``POST /v1/semantic/feedback``): name it by
    the hit's ``lookup_id`` (which recalibrates its category's threshold) or by
    ``entry_id``. An entry reported wrong is removed at once. Raises NotFoundError for
    an id the daemon does not know among the caller's namespaces. Retried only by
    lookup id, which counts once however often it is sent."""
    body: dict[str, Any] = {"correct": correct}
    if lookup_id is not None:
        body["lookup_id"] = lookup_id
    if entry_id is not None:
        body["entry_id"] = int(entry_id)
    if reason is not None:
        body["reason"] = reason
    return Request(
        "POST", "/v1/semantic/feedback", _feedback, idempotent=lookup_id is not None, json=body
    )


def _classification(reply: Reply) -> ClassificationStats | None:
    return msgspec.json.decode(reply.body, type=SemanticStats).classification


def classification() -> Request[ClassificationStats | None]:
    """Whether requests that name no category are classified, why not, with which
    example prompts, and the counts (``GET /v1/semantic/stats``; None from a daemon
    that does not classify)."""
    return Request("GET", "/v1/semantic/stats", _classification, idempotent=True)
