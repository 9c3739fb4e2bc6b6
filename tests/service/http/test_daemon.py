"""The daemon as a real process: start, serve, fail cleanly, stop on signals."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import aiohttp
import orjson
import pytest
import urllib3
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from semcached.service.config import load_settings
from semcached.service.http.app import create_app
from semcached.service.http.appkeys import LISTEN_URLS, SHUTDOWN
from semcached.service.http.routes import DEFAULT_GROUPS
from semcached.service.http.routing import RouteGroup
from semcached.service.http.server import serve
from tests.daemon import DaemonProcess

http = urllib3.PoolManager(retries=False)


def test_ready_metrics_errors_and_sigterm(daemon: DaemonProcess) -> None:
    url = daemon.wait_listening()
    assert http.request("GET", url + "/readyz").status == 200
    assert http.request("GET", url + "/livez").json() == {"status": "alive"}

    metrics = http.request("GET", url + "/metrics")
    names = {f.name for f in text_string_to_metric_families(metrics.data.decode())}
    assert {"semcached_build_info", "semcached_http_requests", "semcached_ready"} <= names

    missing = http.request("GET", url + "/definitely/not/here")
    assert missing.status == 404
    assert missing.headers["Content-Type"].startswith("application/json")
    assert orjson.loads(missing.data)["error"]["code"] == "not_found"

    malformed = http.request("PUT", url + "/v1/admin/log-level", body=b'{"level": ')
    assert malformed.status == 400
    assert orjson.loads(malformed.data)["error"]["code"] == "invalid_json"

    started = time.monotonic()
    assert daemon.terminate(signal.SIGTERM) == 0
    # Bounded by server.shutdown_timeout_s (10 s by default) plus start-up slack.
    assert time.monotonic() - started < 15
    assert "shutting down (SIGTERM)" in daemon.log
    assert "closed data directory" in daemon.log


def test_sigint_also_exits_zero(daemon: DaemonProcess) -> None:
    assert daemon.terminate(signal.SIGINT) == 0
    assert "shutting down (SIGINT)" in daemon.log


def test_json_logs_and_no_access_log(tmp_path: Path) -> None:
    process = DaemonProcess(
        tmp_path / "data", ["--log.format", "json", "--server.access_log", "false"]
    )
    try:
        url = process.wait_ready()
        http.request("GET", url + "/livez")
    finally:
        assert process.terminate() == 0
    records = [orjson.loads(line) for line in process.lines]
    assert all({"ts", "level", "logger", "msg"} <= set(r) for r in records)
    assert not any(r["logger"] == "semcached.access" for r in records)
    assert any("listening on" in r["msg"] for r in records)


def test_access_log_has_request_fields(daemon: DaemonProcess) -> None:
    http.request("GET", daemon.wait_listening() + "/livez")
    daemon.terminate()
    access = [line for line in daemon.lines if "semcached.access" in line]
    assert any("GET /livez 200" in line and "duration_ms=" in line for line in access)


def test_bad_config_exits_2_with_message(tmp_path: Path) -> None:
    process = DaemonProcess(tmp_path / "data", ["--server.worker_threads", "zero"])
    assert process.proc.wait(30) == 2
    process.terminate()
    assert "server.worker_threads" in process.log


def test_port_in_use_exits_1_with_a_message(tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        process = DaemonProcess(tmp_path / "data", ["--server.port", str(port)])
        assert process.proc.wait(30) == 1
        process.terminate()
    assert f"cannot listen on 127.0.0.1:{port}" in process.log
    assert "Traceback" not in process.log


def test_second_daemon_on_same_data_dir_fails_and_first_keeps_serving(
    daemon: DaemonProcess,
) -> None:
    second = DaemonProcess(daemon.data_dir)
    assert second.proc.wait(30) == 1
    second.terminate()
    assert "in use by another semcached process" in second.log
    url = daemon.wait_listening()
    assert http.request("GET", url + "/readyz").status == 200


async def test_graceful_shutdown_finishes_in_flight_requests(tmp_path: Path) -> None:
    """Readiness fails first, the in-flight request completes, then the server exits 0."""
    settings = load_settings(
        environ={
            "SEMCACHED_STORAGE_DATA_DIR": str(tmp_path / "data"),
            "SEMCACHED_SERVER_PORT": "0",
            "SEMCACHED_SERVER_DRAIN_DELAY_S": "0.3",
            "SEMCACHED_EMBEDDING_BACKEND": "none",
        }
    )
    slow = RouteGroup("slow", "test only")
    entered = asyncio.Event()

    @slow.route("GET", "/slow", summary="slow", responses={200: {"description": "ok"}})
    async def slow_handler(request: web.Request) -> web.Response:
        entered.set()
        await asyncio.sleep(0.6)
        return web.json_response({"done": True})

    app = create_app(settings, groups=(*DEFAULT_GROUPS, slow))
    server = asyncio.create_task(serve(settings, app))
    for _ in range(500):
        if app[LISTEN_URLS]:
            break
        await asyncio.sleep(0.01)
    url = app[LISTEN_URLS][0]
    async with aiohttp.ClientSession() as session:
        for _ in range(500):
            async with session.get(url + "/readyz") as r:
                if r.status == 200:
                    break
            await asyncio.sleep(0.01)
        in_flight = asyncio.create_task(session.get(url + "/slow"))
        await entered.wait()
        app[SHUTDOWN].request("test")
        await asyncio.sleep(0.1)
        async with session.get(url + "/readyz") as r:  # still listening during the drain
            assert r.status == 503
        response = await in_flight
        assert response.status == 200
        assert await response.json() == {"done": True}
        response.release()
    assert await asyncio.wait_for(server, 15) == 0


@pytest.mark.parametrize("sig", [signal.SIGTERM])
def test_shutdown_with_request_in_flight_over_real_process(
    tmp_path: Path, sig: signal.Signals
) -> None:
    # A keep-alive client connected while SIGTERM arrives must not stop the exit.
    process = DaemonProcess(tmp_path / "data", ["--server.shutdown_timeout_s", "1"])
    url = process.wait_ready()
    pool = urllib3.PoolManager(retries=False)
    assert pool.request("GET", url + "/livez").status == 200  # leaves an idle connection
    started = time.monotonic()
    assert process.terminate(sig) == 0
    assert time.monotonic() - started < 10
