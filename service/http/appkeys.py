"""Typed keys for the state an application shares between the core and route groups."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from aiohttp import web

from semcached.index.datadir import DataDirectory
from semcached.service.auth.authenticator import Authenticator
from semcached.service.auth.tenants import Principal
from semcached.service.config import Settings
from semcached.service.context import DaemonContext
from semcached.service.http.bodies import UploadBudget
from semcached.service.http.body_buffers import BodyBuffers
from semcached.service.http.connections import ConnectionTable
from semcached.service.lifecycle import Components, Readiness, ShutdownRequest, Slot
from semcached.service.metrics import Metrics
from semcached.service.reloads import Reloads

__all__ = [
    "AUTH",
    "BODY_BUFFERS",
    "COMPONENTS",
    "CONNECTIONS",
    "DATA_DIR",
    "EXECUTOR",
    "KV",
    "LISTEN_URLS",
    "METRICS",
    "OPENAPI",
    "PRINCIPAL",
    "READINESS",
    "RELOADS",
    "RELOAD_SETTINGS",
    "SEMANTIC",
    "SETTINGS",
    "SHUTDOWN",
    "UPLOADS",
    "daemon_context",
]

SETTINGS = web.AppKey("settings", Settings)
METRICS = web.AppKey("metrics", Metrics)
READINESS = web.AppKey("readiness", Readiness)
SHUTDOWN = web.AppKey("shutdown", ShutdownRequest)
COMPONENTS = web.AppKey("components", Components)
EXECUTOR = web.AppKey("executor", ThreadPoolExecutor)
DATA_DIR = web.AppKey("data_dir", DataDirectory)
# The client connections of the daemon's listeners, and the drain at shutdown.
CONNECTIONS = web.AppKey("connections", ConnectionTable)
# What a configuration reload (SIGHUP) re-applies, and how the settings are reread.
RELOADS = web.AppKey("reloads", Reloads)
RELOAD_SETTINGS: web.AppKey[Callable[[], Settings]] = web.AppKey("reload_settings")
# Who may call what: the token table, rate limits, reloads.
AUTH = web.AppKey("auth", Authenticator)
# The principal a /v1/ request acts as (set by the auth middleware before the handler).
PRINCIPAL = web.RequestKey("principal", Principal)
if TYPE_CHECKING:
    from semcached.service.kv.engine import KvCache
    from semcached.service.semantic.engine import SemanticCache
# The semantic cache engine, once open (a Slot: 503 before).
SEMANTIC: web.AppKey[Slot[SemanticCache]] = web.AppKey("semantic")
# The chunk KV cache engine, once open (a Slot: 503 before).
KV: web.AppKey[Slot[KvCache]] = web.AppKey("kv")
# The bytes of chunk puts in flight (kv.max_inflight_upload_bytes).
UPLOADS = web.AppKey("uploads", UploadBudget)
# Chunk put body buffers kept for reuse (kv.body_buffer_bytes).
BODY_BUFFERS = web.AppKey("body_buffers", BodyBuffers)
OPENAPI: web.AppKey[dict[str, Any]] = web.AppKey("openapi")
# Filled in by the server once it listens: the base URL of each listening socket.
LISTEN_URLS: web.AppKey[list[str]] = web.AppKey("listen_urls")


def daemon_context(app: web.Application) -> DaemonContext:
    """The pieces of ``app``'s state that a feature's ``install_*`` function takes."""
    return DaemonContext(
        settings=app[SETTINGS],
        data_dir=app[DATA_DIR],
        executor=app[EXECUTOR],
        components=app[COMPONENTS],
        registry=app[METRICS].registry,
        reloads=app[RELOADS],
    )
