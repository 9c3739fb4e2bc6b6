"""Both clients against the real daemon, and their retry/timeout behaviour."""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from semcached.clients import AsyncSemcachedClient, Request, RetryPolicy, SemcachedClient
from semcached.errors import (
    AuthenticationError,
    BadRequestError,
    SemcachedConnectionError,
    SemcachedError,
    SemcachedTimeoutError,
    ServiceUnavailableError,
)
from tests.daemon import DaemonProcess

FAST_RETRY = RetryPolicy(retries=3, base_s=0.001, cap_s=0.01)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def retry_logs(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("retrying")]


# --- against the real daemon ------------------------------------------------------------


def test_sync_client_commands(daemon_url: str) -> None:
    with SemcachedClient(daemon_url) as client:
        assert client.health() is True
        readiness = client.ready()
        assert readiness.ready
        assert readiness.status == "ready"
        assert "semcached_build_info" in client.metrics()
        assert client.get_config()["server"]["host"] == "127.0.0.1"
        assert client.set_log_level("warning") == "warning"
        with pytest.raises(BadRequestError) as info:
            client.set_log_level("loud")
        assert (info.value.status, info.value.code, info.value.field) == (
            400,
            "invalid_field",
            "level",
        )


async def test_async_client_commands(daemon_url: str) -> None:
    async with AsyncSemcachedClient(daemon_url) as client:
        assert await client.health() is True
        assert (await client.ready()).ready
        assert "semcached_http_requests_total" in await client.metrics()
        assert (await client.get_config())["index"]["backend"] == "hnswlib"
        assert await client.set_log_level("info") == "info"
        with pytest.raises(BadRequestError, match="invalid_field"):
            await client.set_log_level("loud")


def test_unknown_route_maps_to_not_found(daemon_url: str) -> None:
    from semcached.errors import NotFoundError

    with SemcachedClient(daemon_url) as client:
        with pytest.raises(NotFoundError) as info:
            client.execute(Request("GET", "/v1/nope", lambda r: r, idempotent=True))
        assert info.value.code == "not_found"


def test_token_is_sent_and_checked(tmp_path: Path) -> None:
    process = DaemonProcess(tmp_path / "data", ["--server.auth_token", "t0ken"])
    try:
        url = process.wait_ready()
        with SemcachedClient(url) as anonymous, pytest.raises(AuthenticationError):
            anonymous.get_config()
        with SemcachedClient(url, token="t0ken") as client:
            assert client.get_config()["server"]["auth_token"] == "***"
    finally:
        process.terminate()


# --- transport failures ---------------------------------------------------------------


def test_sync_retries_idempotent_calls_then_raises_connection_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, "semcached.clients")
    url = f"http://127.0.0.1:{free_port()}"
    with (
        SemcachedClient(url, retry=FAST_RETRY) as client,
        pytest.raises(SemcachedConnectionError) as info,
    ):
        client.health()
    assert isinstance(info.value, ConnectionError)
    assert isinstance(info.value, SemcachedError)
    assert len(retry_logs(caplog)) == 3  # 4 attempts in all


async def test_async_retries_idempotent_calls_then_raises_connection_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, "semcached.clients")
    url = f"http://127.0.0.1:{free_port()}"
    async with AsyncSemcachedClient(url, retry=FAST_RETRY) as client:
        with pytest.raises(SemcachedConnectionError) as info:
            await client.ready()
    assert isinstance(info.value, ConnectionError)
    assert len(retry_logs(caplog)) == 3


def test_non_idempotent_calls_are_not_retried(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, "semcached.clients")
    url = f"http://127.0.0.1:{free_port()}"
    once = Request("POST", "/v1/anything", lambda r: r, idempotent=False, json={})
    with SemcachedClient(url, retry=FAST_RETRY) as client, pytest.raises(SemcachedConnectionError):
        client.execute(once)
    assert retry_logs(caplog) == []


def test_retry_delays_are_capped_exponential_with_jitter() -> None:
    import random

    policy = RetryPolicy(retries=6, base_s=0.1, cap_s=0.5, rng=random.Random(7))
    delays = list(policy.delays())
    assert len(delays) == 6
    for attempt, delay in enumerate(delays):
        assert 0.0 <= delay <= min(0.5, 0.1 * 2**attempt)
    assert len(set(delays)) == 6  # jittered, not fixed steps


@pytest.fixture
def silent_server() -> Iterator[str]:
    """Accepts connections (the kernel's backlog) but never answers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        yield f"http://127.0.0.1:{s.getsockname()[1]}"


def test_sync_timeout(silent_server: str) -> None:
    client = SemcachedClient(silent_server, timeout_s=0.2, retry=RetryPolicy(retries=0))
    with client, pytest.raises(SemcachedTimeoutError) as info:
        client.health()
    assert isinstance(info.value, TimeoutError)


async def test_async_timeout(silent_server: str) -> None:
    async with AsyncSemcachedClient(
        silent_server, timeout_s=0.2, retry=RetryPolicy(retries=0)
    ) as client:
        with pytest.raises(SemcachedTimeoutError) as info:
            await client.health()
    assert isinstance(info.value, TimeoutError)


# --- retryable statuses ---------------------------------------------------------------


class FlakyServer:
    """Answers 503 (in the daemon's error format) ``failures`` times, then 200."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.hits = 0
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                owner.hits += 1
                if owner.hits <= owner.failures:
                    status, body = 503, b'{"error":{"code":"starting","message":"not yet"}}'
                else:
                    status, body = 200, b'{"status":"alive"}'
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _answer

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def flaky() -> Iterator[FlakyServer]:
    server = FlakyServer(failures=2)
    yield server
    server.close()


def test_sync_retries_503_for_idempotent_calls(flaky: FlakyServer) -> None:
    with SemcachedClient(flaky.url, retry=FAST_RETRY) as client:
        assert client.health() is True
    assert flaky.hits == 3


async def test_async_retries_503_for_idempotent_calls(flaky: FlakyServer) -> None:
    async with AsyncSemcachedClient(flaky.url, retry=FAST_RETRY) as client:
        assert await client.health() is True
    assert flaky.hits == 3


def test_503_is_raised_at_once_for_non_idempotent_calls(flaky: FlakyServer) -> None:
    once = Request("POST", "/livez", lambda r: r, idempotent=False, json={})
    with (
        SemcachedClient(flaky.url, retry=FAST_RETRY) as client,
        pytest.raises(ServiceUnavailableError) as info,
    ):
        client.execute(once)
    assert info.value.code == "starting"
    assert flaky.hits == 1


def test_retries_give_up_with_the_last_error(flaky: FlakyServer) -> None:
    flaky.failures = 100
    client = SemcachedClient(flaky.url, retry=RetryPolicy(retries=2, base_s=0.001))
    with client, pytest.raises(ServiceUnavailableError):
        client.health()
    assert flaky.hits == 3


def test_options_are_validated() -> None:
    with pytest.raises(ValueError, match="base_url"):
        SemcachedClient("localhost:8080")
    with pytest.raises(ValueError, match="timeouts"):
        SemcachedClient(timeout_s=0)
    with pytest.raises(ValueError, match="negative"):
        RetryPolicy(retries=-1)
