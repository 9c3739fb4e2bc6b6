"""``POST /v1/semantic/load``: a gateway reports its downstream model's load (route
group ``semantic``; in a module of its own to keep that one's size).

While a model's smoothed load over its target is high, lookups of the namespace that
name the model relax their category's threshold (within the category's
``load_min_threshold`` and false-hit budget) and new entries live longer
(``load_ttl_factor``); see :mod:`semcached.service.semantic.load`.
"""

from __future__ import annotations

from aiohttp import web

from semcached.protocol.semantic import SemanticLoadReport, SemanticLoadResult
from semcached.service.auth.scopes import Scope
from semcached.service.http.decoding import Decoder
from semcached.service.http.jsonio import struct_response
from semcached.service.http.model_load import HeaderReport, load_result, record
from semcached.service.http.routes.semantic import group
from semcached.service.http.routing import Reply, error_reply
from semcached.service.http.tenancy import namespace

__all__ = ["report_load"]

LOAD = Decoder(SemanticLoadReport)


@group.route(
    "POST",
    "/v1/semantic/load",
    summary="Report a downstream model's load (queue depth and/or latency).",
    description="The report is smoothed per (namespace, model) with the model's targets "
    "(load.queue_depth_target, load.latency_ms_target, or its [load_models] table); past "
    "load.engage the namespace's lookups naming the model relax, until the load falls "
    "below load.release or reports stop for load.stale_s. A report for another tenant's "
    "namespace is a 403; a tenant may track at most load.max_models models (429).",
    body=LOAD,
    body_description="The report.",
    responses={
        200: Reply("The model's load in the namespace after the report.", SemanticLoadResult),
        429: error_reply(
            "The tenant already tracks load.max_models models (too_many_models), or is "
            "over its requests per second; see Retry-After."
        ),
    },
    scope=Scope.SEMANTIC_WRITE,
)
async def report_load(request: web.Request) -> web.Response:
    body = await LOAD.read(request)
    space = namespace(request, body.namespace)
    state = record(request, space, HeaderReport(body.model, body.queue_depth, body.latency_ms))
    return struct_response(load_result(state))
