"""Load reports over HTTP: the ``X-Semcached-Model-Load`` lookup header, and recording a
report for the caller's namespace (shared by the lookup routes and
``POST /v1/semantic/load``).

The header is one line a gateway can template from what it already knows, in the
``key=value; key=value`` form of HTTP header parameters: ``model=gpt-4o;
queue_depth=12`` (``latency_ms=800`` instead, or both). A report changes how a
namespace's lookups are decided, so it needs ``semantic:write`` whichever way it
comes, and names a namespace the token may use (403 otherwise).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from aiohttp import web

from semcached.errors import BadRequestError, PermissionDeniedError
from semcached.protocol.codes import ErrorCode
from semcached.protocol.headers import MODEL_LOAD_HEADER
from semcached.protocol.semantic import MAX_LOAD, MODEL_PATTERN, SemanticLoadResult
from semcached.service.auth.scopes import Scope
from semcached.service.http.appkeys import AUTH, SEMANTIC
from semcached.service.http.tenancy import principal
from semcached.service.semantic.load import ModelLoad

__all__ = ["HeaderReport", "header_report", "load_result", "record"]

_MODEL = re.compile(MODEL_PATTERN)


@dataclass(frozen=True, slots=True)
class HeaderReport:
    model: str
    queue_depth: float | None = None
    latency_ms: float | None = None


def _bad(why: str) -> BadRequestError:
    return BadRequestError(
        ErrorCode.INVALID_FIELD,
        f"{MODEL_LOAD_HEADER}: {why} (expected e.g. 'model=gpt-4o; queue_depth=12')",
        field=MODEL_LOAD_HEADER,
    )


def header_report(request: web.Request) -> HeaderReport | None:
    """The request's load header, parsed (None without one); 400 naming the header
    when it is malformed. O(header length)."""
    raw = request.headers.get(MODEL_LOAD_HEADER)
    if raw is None:
        return None
    values: dict[str, str] = {}
    for part in raw.split(";"):
        key, sep, value = part.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or key not in ("model", "queue_depth", "latency_ms") or key in values:
            raise _bad(f"unexpected {part.strip()!r}")
        values[key] = value
    model = values.get("model")
    if model is None or not _MODEL.match(model):
        raise _bad("model: missing or not a model name")
    numbers: dict[str, float] = {}
    for key in ("queue_depth", "latency_ms"):
        if key in values:
            try:
                number = float(values[key])
            except ValueError:
                raise _bad(f"{key}: not a number") from None
            if not (math.isfinite(number) and 0 <= number <= MAX_LOAD):
                raise _bad(f"{key}: must be a number from 0 to {MAX_LOAD:g}")
            numbers[key] = number
    if not numbers:
        raise _bad("give queue_depth, latency_ms or both")
    return HeaderReport(model, **numbers)


def record(request: web.Request, namespace: str, report: HeaderReport) -> ModelLoad:
    """Record ``report`` for ``namespace`` (already checked as the caller's) as the
    caller's tenant; 403 without ``semantic:write``."""
    caller = principal(request)
    if not caller.can(Scope.SEMANTIC_WRITE):
        raise request.app[AUTH].forbidden(
            caller,
            PermissionDeniedError(
                ErrorCode.INSUFFICIENT_SCOPE,
                f"a load report ({MODEL_LOAD_HEADER}) needs the semantic:write scope, "
                "which the token lacks",
                field=MODEL_LOAD_HEADER,
            ),
        )
    return (
        request.app[SEMANTIC]
        .get()
        .load.report(
            namespace,
            report.model,
            queue_depth=report.queue_depth,
            latency_ms=report.latency_ms,
            owner=caller.tenant.name,
        )
    )


def load_result(state: ModelLoad) -> SemanticLoadResult:
    return SemanticLoadResult(
        namespace=state.namespace,
        model=state.model,
        pressure=state.pressure,
        level=state.level,
        engaged=state.engaged,
    )
