"""The application factory: core state, middlewares, components, route groups."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from aiohttp import web
from aiohttp.typedefs import Middleware

from semcached.errors import ConfigError
from semcached.index.datadir import DataDirectory
from semcached.service.auth.authenticator import Authenticator
from semcached.service.blocking import run_blocking
from semcached.service.config import Settings
from semcached.service.http.appkeys import (
    AUTH,
    COMPONENTS,
    CONNECTIONS,
    DATA_DIR,
    EXECUTOR,
    LISTEN_URLS,
    METRICS,
    OPENAPI,
    READINESS,
    RELOAD_SETTINGS,
    RELOADS,
    SETTINGS,
    SHUTDOWN,
)
from semcached.service.http.connections import ConnectionTable, connection_middleware
from semcached.service.http.middleware import auth_middleware, error_middleware, metrics_middleware
from semcached.service.http.openapi import build_openapi
from semcached.service.http.routes import DEFAULT_GROUPS
from semcached.service.http.routing import RouteGroup
from semcached.service.lifecycle import Components, FunctionComponent, Readiness, ShutdownRequest
from semcached.service.metrics import Metrics
from semcached.service.reloads import Reloads

__all__ = ["create_app", "on_sighup", "reload_settings", "reload_tokens"]

log = logging.getLogger(__name__)

T = TypeVar("T")


def create_app(
    settings: Settings,
    *,
    groups: Sequence[RouteGroup] = DEFAULT_GROUPS,
    reread_settings: Callable[[], Settings] | None = None,
) -> web.Application:
    """Build the daemon's application; nothing is opened until it starts.

    ``reread_settings`` loads the settings again from the sources they came from, for
    a reload (:func:`reload_settings`); by default a reload re-applies ``settings``."""
    groups = [group for group in groups if group.enabled(settings)]
    metrics = Metrics()
    authenticator = Authenticator(settings, metrics.registry)  # ConfigError: a bad tokens file
    log.info("%s", authenticator.table.describe())
    scopes = {(op.method, op.path): op.scope for group in groups for op in group.operations}
    connections = ConnectionTable(header_timeout_s=settings.server.header_timeout_s)
    connections.register_metrics(metrics.registry)
    middlewares: list[Middleware] = [
        metrics_middleware(metrics.http),
        connection_middleware(connections),
        error_middleware,
        auth_middleware(authenticator, scopes),
    ]
    app = web.Application(middlewares=middlewares, client_max_size=settings.server.max_body_bytes)
    app[AUTH] = authenticator

    readiness = Readiness()
    shutdown = ShutdownRequest()
    app[SETTINGS] = settings
    app[METRICS] = metrics
    app[READINESS] = readiness
    app[SHUTDOWN] = shutdown
    app[LISTEN_URLS] = []
    app[RELOADS] = Reloads()
    app[RELOAD_SETTINGS] = reread_settings or (lambda: settings)
    app[COMPONENTS] = Components(readiness, shutdown)
    app[CONNECTIONS] = connections
    app[EXECUTOR] = ThreadPoolExecutor(
        max_workers=settings.server.worker_threads, thread_name_prefix="semcached-worker"
    )
    metrics.ready.set_function(lambda: 1.0 if readiness.is_ready else 0.0)

    _add_data_dir(app, settings)
    for group in groups:
        group.install(app)
    for store in readiness.stores:
        metrics.storage_full.labels(store).set_function(_storage_full_gauge(readiness, store))
    app[OPENAPI] = build_openapi(groups, bearer_auth=authenticator.required, settings=settings)

    app.on_startup.append(_start_components)
    app.on_cleanup.append(_close_components)
    return app


def _storage_full_gauge(readiness: Readiness, store: str) -> Callable[[], float]:
    return lambda: 1.0 if readiness.storage_full(store) else 0.0


def _add_data_dir(app: web.Application, settings: Settings) -> None:
    storage = settings.storage
    data_dir = DataDirectory(
        storage.data_dir,
        initial_map_bytes=storage.lmdb_initial_map_bytes,
        max_map_bytes=storage.lmdb_max_map_bytes,
    )
    app[DATA_DIR] = data_dir

    async def open_data_dir() -> None:
        await run_blocking(app[EXECUTOR], data_dir.open)

    async def close_data_dir() -> None:
        await run_blocking(app[EXECUTOR], data_dir.close)

    app[COMPONENTS].add(FunctionComponent("data directory", open_data_dir, close_data_dir))


async def _start_components(app: web.Application) -> None:
    app[COMPONENTS].start_opening()


async def _close_components(app: web.Application) -> None:
    await app[COMPONENTS].close_all()
    app[EXECUTOR].shutdown(wait=True)


_reloads: set[asyncio.Task[Any]] = set()  # referenced until done (the loop keeps weak refs)


def reload_tokens(app: web.Application) -> None:
    """Reread the tokens file on a worker thread and swap the table in (SIGHUP)."""

    async def reload() -> None:
        authenticator = app[AUTH]
        table = await run_blocking(app[EXECUTOR], authenticator.load)
        if table is not None:
            authenticator.install(table)

    _keep(asyncio.get_running_loop().create_task(reload(), name="reload tokens"))


def reload_settings(app: web.Application) -> asyncio.Task[bool]:
    """Reread the settings and hand them to the reload hooks (SIGHUP): the task's result
    is whether every hook took them. A configuration that no longer loads changes
    nothing and is logged."""

    async def reload() -> bool:
        try:
            settings = await run_blocking(app[EXECUTOR], app[RELOAD_SETTINGS])
        except ConfigError as exc:
            log.error("configuration not reloaded, the running one stays in force: %s", exc)
            return False
        failed = await app[RELOADS].apply(settings)
        log.info("configuration reloaded (%s)", ", ".join(app[RELOADS].names) or "nothing to do")
        return failed == 0

    return _keep(asyncio.get_running_loop().create_task(reload(), name="reload settings"))


def on_sighup(app: web.Application) -> None:
    """SIGHUP: reread the tokens file and the settings."""
    reload_tokens(app)
    reload_settings(app)


def _keep(task: asyncio.Task[T]) -> asyncio.Task[T]:
    """Reference ``task`` until it is done (the loop keeps only weak references)."""
    _reloads.add(task)
    task.add_done_callback(_reloads.discard)
    return task
