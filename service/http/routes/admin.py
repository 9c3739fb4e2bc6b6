"""Operator routes: inspect the effective settings, change the log level at run time."""

from __future__ import annotations

from typing import Literal

import msgspec
from aiohttp import web

from semcached.service.auth.scopes import Scope
from semcached.service.http.appkeys import SETTINGS
from semcached.service.http.decoding import Decoder
from semcached.service.http.jsonio import json_response, struct_response
from semcached.service.http.routing import Reply, RouteGroup
from semcached.service.logs import set_level

__all__ = ["group"]

group = RouteGroup("admin", "Operator routes (a token with the admin scope).")


class LogLevel(msgspec.Struct, forbid_unknown_fields=True):
    level: Literal["debug", "info", "warning", "error"]


LOG_LEVEL = Decoder(LogLevel)


@group.route(
    "GET",
    "/v1/admin/config",
    summary="The effective settings, secrets redacted.",
    responses={200: Reply("Settings by section.", {"type": "object"})},
    scope=Scope.ADMIN,
)
async def get_config(request: web.Request) -> web.Response:
    return json_response(request.app[SETTINGS].redacted())


@group.route(
    "PUT",
    "/v1/admin/log-level",
    summary="Change the log level of the running daemon (not persisted).",
    body=LOG_LEVEL,
    body_description="The new level.",
    responses={200: Reply("The level now in force.", LogLevel)},
    scope=Scope.ADMIN,
)
async def put_log_level(request: web.Request) -> web.Response:
    body = await LOG_LEVEL.read(request)
    set_level(body.level)
    return struct_response(body)
