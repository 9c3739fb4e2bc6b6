"""Running the daemon: listen, serve until a signal, then shut down in order.

SIGHUP rereads the tokens file (``auth.tokens_file``) and the settings, and hands them
to the features' reload hooks (the categories' example prompts).

Shutdown sequence on SIGTERM or SIGINT (or a component failing to open):
1. ``/readyz`` turns 503 at once, and stays so for ``server.drain_delay_s`` while
   the listener still accepts and serves (a load balancer sees it and stops routing
   here);
2. the listener closes; a request that then arrives on an open keep-alive connection
   is answered 503 ``not_ready`` with ``Connection: close``, and requests already
   running get ``server.shutdown_timeout_s`` to finish (their bodies keep arriving;
   their answers carry ``Connection: close``);
3. the idle connections close, anything still running past the grace is cancelled,
   and components close newest first (stores flush and close);
4. the process exits 0 (1 if a component failed to open).

Why not aiohttp's own ``AppRunner.cleanup()`` alone: it marks every connection closing
first, and a closing connection drops the bytes that still arrive, so an upload in
flight stalled until the timeout and was reset, and a request sent on a keep-alive
connection got no answer at all. It runs here only once requests have finished.

The listeners are made here with ``loop.create_server`` around aiohttp's protocol
factory (see :mod:`~semcached.service.http.connections`), for the connection cap,
the header deadline and the probe listener.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import signal
from collections.abc import Callable

import threadpoolctl
from aiohttp import web

from semcached._version import __version__
from semcached.service.config import Settings
from semcached.service.http.app import create_app, on_sighup
from semcached.service.http.appkeys import CONNECTIONS, LISTEN_URLS, READINESS, SHUTDOWN
from semcached.service.http.connections import PROBE_CONNECTIONS
from semcached.service.logs import AccessLogger, access_logger

__all__ = ["default_max_connections", "handler_options", "raise_open_file_limit", "run", "serve"]

log = logging.getLogger(__name__)

MAX_DEFAULT_CONNECTIONS = 16384
_CANCEL_WAIT_S = 0.5
"""aiohttp's own wait per connection at cleanup, after the grace: only cancellation left."""


def handler_options(settings: Settings) -> dict[str, float]:
    """Options of aiohttp's request handler that follow from the settings."""
    return {
        # A KV put carries its metadata (per-token scores) in one header.
        "max_field_size": max(8190, settings.kv.max_meta_bytes),
        # KV blobs are megabytes: read the socket in large pieces.
        "read_bufsize": 1 << 20,
        # aiohttp's keep-alive timer runs from the connection's start and from each
        # answer until the next request is complete: it closes idle connections and
        # bounds trickled headers (aiohttp's default is an hour).
        "keepalive_timeout": settings.server.keepalive_timeout_s,
    }


def raise_open_file_limit() -> int:
    """Raise the soft open-file limit to the hard one; the limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft == resource.RLIM_INFINITY or soft >= target:
        return soft if soft != resource.RLIM_INFINITY else target
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError) as exc:
        log.warning("cannot raise the open-file limit from %d to %d: %s", soft, target, exc)
        return soft
    return target


def default_max_connections(open_files: int) -> int:
    """A quarter of the open-file limit stays for stores, probes and refusals."""
    return max(1, min(MAX_DEFAULT_CONNECTIONS, open_files - open_files // 4))


async def serve(
    settings: Settings,
    app: web.Application | None = None,
    *,
    reread_settings: Callable[[], Settings] | None = None,
) -> int:
    """Serve ``app`` (by default the daemon's, rereading its settings on SIGHUP with
    ``reread_settings``) until asked to stop; return the exit code."""
    if app is None:
        app = create_app(settings, reread_settings=reread_settings)
    server = settings.server
    open_files = raise_open_file_limit()
    cap = server.max_connections or default_max_connections(open_files)
    log.info("accepting up to %d connections (open-file limit %d)", cap, open_files)
    runner = web.AppRunner(
        app,
        handle_signals=False,
        access_log_class=AccessLogger,
        access_log=access_logger() if server.access_log else None,
        shutdown_timeout=_CANCEL_WAIT_S,
        **handler_options(settings),
    )
    await runner.setup()
    assert runner.server is not None
    connections = app[CONNECTIONS]
    shutdown = app[SHUTDOWN]
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, shutdown.request, signal.Signals(sig).name)
    loop.add_signal_handler(signal.SIGHUP, on_sighup, app)
    listeners: list[asyncio.Server] = []
    try:
        main_listener = connections.listener("main", cap)
        main = await _listen(main_listener.factory(runner.server), server.host, server.port)
        if main is None:
            return 1
        listeners.append(main)
        if server.probe_port >= 0:
            probe_listener = connections.listener("probe", PROBE_CONNECTIONS, probes_only=True)
            probes = await _listen(
                probe_listener.factory(runner.server), server.host, server.probe_port
            )
            if probes is None:
                return 1
            listeners.append(probes)
            for url in _urls(probes):
                log.info("probes (/livez, /readyz, /metrics) served on %s", url)
        app[LISTEN_URLS][:] = _urls(main)
        for url in app[LISTEN_URLS]:
            log.info("semcached %s listening on %s", __version__, url)
        await shutdown.wait()
        log.info("shutting down (%s)", shutdown.reason)
        app[READINESS].begin_shutdown()
        if server.drain_delay_s > 0:
            await asyncio.sleep(server.drain_delay_s)
        main.close()  # no new connections; open ones stay until their requests are done
        connections.begin_draining()
        if not await connections.wait_quiet(server.shutdown_timeout_s):
            log.warning(
                "%d requests still running after %g s (server.shutdown_timeout_s); cancelling them",
                connections.in_flight,
                server.shutdown_timeout_s,
            )
    finally:
        for listener in listeners:
            listener.close()
        await runner.cleanup()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
    log.info("stopped")
    return shutdown.exit_code


async def _listen(
    factory: Callable[[], asyncio.Protocol], host: str, port: int
) -> asyncio.Server | None:
    try:
        return await asyncio.get_running_loop().create_server(factory, host, port, backlog=1024)
    except OSError as exc:  # port taken, address not local, no permission
        log.error("cannot listen on %s:%d: %s", host, port, exc.strerror)
        return None


def _urls(listener: asyncio.Server) -> list[str]:
    return [f"http://{s.getsockname()[0]}:{s.getsockname()[1]}" for s in listener.sockets]


def run(settings: Settings, *, reread_settings: Callable[[], Settings] | None = None) -> int:
    """Run :func:`serve` on uvloop when it is installed, else on asyncio's loop."""
    # numpy's BLAS only multiplies small matrices here (the hit verifier's token
    # alignment, ~15x15 tokens); above ~27x27 OpenBLAS goes multi-threaded, and its
    # threads spin against the event loop, index searches and torch on the same cores
    # (measured on 2 cores: a 40x40 product 0.17 ms best, 0.57 ms median). One thread.
    threadpoolctl.threadpool_limits(limits=1, user_api="blas")
    main = serve(settings, reread_settings=reread_settings)
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)
