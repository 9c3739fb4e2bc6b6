"""The load-report command: a gateway tells the daemon how busy its downstream model is.

Like :mod:`~semcached.clients.commands`, a command returns a
:class:`~semcached.clients.request.Request` and does no I/O; both clients get it as the
method ``report_load``.
"""

from __future__ import annotations

from typing import Any

import msgspec

from semcached.clients.request import Reply, Request
from semcached.protocol.semantic import SemanticLoadResult

__all__ = ["ModelLoad", "report_load"]

ModelLoad = SemanticLoadResult
"""A model's load in a namespace after a report: ``pressure`` (smoothed load over the
model's target), ``level`` (0 to 1: how far lookups naming the model relax) and
``engaged``."""


def _model_load(reply: Reply) -> ModelLoad:
    return msgspec.json.decode(reply.body, type=SemanticLoadResult)


def report_load(
    namespace: str,
    model: str,
    *,
    queue_depth: float | None = None,
    latency_ms: float | None = None,
) -> Request[ModelLoad]:
    """Report ``model``'s load for ``namespace`` (``POST /v1/semantic/load``): its queue
    depth, its latency in ms, or both. Lookups of the namespace that name the model
    relax while it is busy. Retried: a repeat at once carries no weight."""
    body: dict[str, Any] = {"namespace": namespace, "model": model}
    if queue_depth is not None:
        body["queue_depth"] = queue_depth
    if latency_ms is not None:
        body["latency_ms"] = latency_ms
    return Request("POST", "/v1/semantic/load", _model_load, idempotent=True, json=body)
