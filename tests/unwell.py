"""Servers that misbehave the ways a cache daemon can, for fail-open tests: one that
accepts connections and never answers, and one that answers 500s (or, when told to
recover, forwards to a real daemon). Both bind 127.0.0.1 on an OS-chosen port, run in
a thread of their own (so blocking and asyncio clients alike can call them) and stop
when their ``with`` block ends."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from types import TracebackType

import aiohttp
from aiohttp import web

__all__ = ["AppThread", "FlakyServer", "StalledServer"]


class StalledServer:
    """Accepts every connection and never sends a byte; ``accepted`` counts them."""

    def __init__(self) -> None:
        self._sock = socket.create_server(("127.0.0.1", 0))
        self._sock.settimeout(0.05)
        host, port = self._sock.getsockname()[:2]
        self.url = f"http://{host}:{port}"
        self.accepted = 0
        self.accepted_event = threading.Event()
        self._held: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self._held.append(conn)  # held open, never answered
            self.accepted += 1
            self.accepted_event.set()

    def __enter__(self) -> StalledServer:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join(5)
        for conn in self._held:
            with contextlib.suppress(OSError):
                conn.close()
        self._sock.close()


class AppThread:
    """An aiohttp application served on 127.0.0.1 from a thread and loop of its own
    while the ``with`` block lasts; ``url`` is where."""

    def __init__(self, app: web.Application) -> None:
        self.app = app
        self.url = ""
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        runner = web.AppRunner(self.app)
        loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", 0)
        loop.run_until_complete(site.start())
        host, port = runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"
        self._ready.set()
        loop.run_forever()
        loop.run_until_complete(runner.cleanup())
        loop.close()

    def __enter__(self) -> AppThread:
        self._thread.start()
        if not self._ready.wait(10):
            raise AssertionError("the server did not start")
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


class FlakyServer(AppThread):
    """Answers every request with ``status`` (500) and an error body while ``failing``;
    otherwise forwards it to ``upstream`` (a real daemon). ``requests`` counts what
    arrived, failing or not."""

    def __init__(self, upstream: str | None = None, status: int = 500) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        super().__init__(app)
        self.upstream = upstream
        self.status = status
        self.failing = True
        self.requests = 0

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        if self.failing or self.upstream is None:
            error = {"error": {"code": "internal", "message": "scripted failure"}}
            return web.json_response(error, status=self.status)
        async with (
            aiohttp.ClientSession() as session,
            session.request(
                request.method,
                self.upstream + request.path_qs,
                data=await request.read(),
                headers={"Content-Type": request.headers.get("Content-Type", "")},
            ) as answer,
        ):
            body = await answer.read()
            return web.Response(status=answer.status, body=body, content_type=answer.content_type)
