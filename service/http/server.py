"""Running the daemon: listen, serve until a signal, then shut down in order.

SIGHUP rereads the tokens file (``auth.tokens_file``).

Shutdown sequence on SIGTERM or SIGINT (or a component failing to open):
1. ``/readyz`` turns 503 at once, and stays so for ``server.drain_delay_s`` while
   the listener still accepts (a load balancer sees it and stops routing here);
2. the listener closes; in-flight requests get ``server.shutdown_timeout_s`` to finish;
3. components close newest first (stores flush and close);
4. the process exits 0 (1 if a component failed to open).
"""

from __future__ import annotations

import asyncio
import logging
import signal

from aiohttp import web

from semcached._version import __version__
from semcached.service.config import Settings
from semcached.service.http.app import create_app, reload_tokens
from semcached.service.http.appkeys import LISTEN_URLS, READINESS, SHUTDOWN
from semcached.service.logs import AccessLogger, access_logger

__all__ = ["handler_options", "run", "serve"]

log = logging.getLogger(__name__)


def handler_options(settings: Settings) -> dict[str, int]:
    """Options of aiohttp's request handler that follow from the settings."""
    return {
        # A KV put carries its metadata (per-token scores) in one header.
        "max_field_size": max(8190, settings.kv.max_meta_bytes),
        # KV blobs are megabytes: read the socket in large pieces.
        "read_bufsize": 1 << 20,
    }


async def serve(settings: Settings, app: web.Application | None = None) -> int:
    """Serve ``app`` (by default the daemon's) until asked to stop; return the exit code."""
    if app is None:
        app = create_app(settings)
    server = settings.server
    runner = web.AppRunner(
        app,
        handle_signals=False,
        access_log_class=AccessLogger,
        access_log=access_logger() if server.access_log else None,
        shutdown_timeout=server.shutdown_timeout_s,
        **handler_options(settings),
    )
    await runner.setup()
    shutdown = app[SHUTDOWN]
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, shutdown.request, signal.Signals(sig).name)
    loop.add_signal_handler(signal.SIGHUP, reload_tokens, app)
    try:
        site = web.TCPSite(runner, server.host, server.port)
        try:
            await site.start()
        except OSError as exc:  # port taken, address not local, no permission
            log.error("cannot listen on %s:%d: %s", server.host, server.port, exc.strerror)
            return 1
        listening = [f"http://{a[0]}:{a[1]}" for a in runner.addresses]
        app[LISTEN_URLS][:] = listening
        for url in listening:
            log.info("semcached %s listening on %s", __version__, url)
        await shutdown.wait()
        log.info("shutting down (%s)", shutdown.reason)
        app[READINESS].begin_shutdown()
        if server.drain_delay_s > 0:
            await asyncio.sleep(server.drain_delay_s)
    finally:
        await runner.cleanup()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
    log.info("stopped")
    return shutdown.exit_code


def run(settings: Settings) -> int:
    """Run :func:`serve` on uvloop when it is installed, else on asyncio's loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(serve(settings))
    return uvloop.run(serve(settings))
