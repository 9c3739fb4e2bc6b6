"""The daemon's connections as a real process sees them: shutdown drains, caps, deadlines,
probes (issue 14, defects 5 and 6)."""

from __future__ import annotations

import contextlib
import re
import resource
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import urllib3

from tests.daemon import DaemonProcess

http = urllib3.PoolManager(retries=False)
DIM = 4


def _address(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


def _connect(url: str) -> socket.socket:
    return socket.create_connection(_address(url), timeout=30)


def _read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response with a Content-Length body; raises on EOF or reset."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"connection closed before a response (got {data!r})")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, v in (x.split(":", 1) for x in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("connection closed inside the body")
        body += chunk
    return status, headers, body


def _get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode()


def _wait_for(process: DaemonProcess, text: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while text not in process.log:
        if time.monotonic() > deadline:
            raise AssertionError(f"{text!r} not in the log:\n{process.log}")
        time.sleep(0.01)


@contextlib.contextmanager
def daemon(tmp_path: Path, *args: str) -> Iterator[DaemonProcess]:
    process = DaemonProcess(tmp_path / "data", ["--embedding.dim", str(DIM), *args])
    try:
        process.wait_ready()
        yield process
    finally:
        process.terminate(signal.SIGKILL)


# --- shutdown ---------------------------------------------------------------------------


def test_sigterm_finishes_an_upload_in_flight_and_answers_keep_alive_requests(
    tmp_path: Path,
) -> None:
    # Issue 14 (5): aiohttp's cleanup marked every connection closing, which dropped the
    # rest of an upload's body (the handler waited out the grace and was reset) and left
    # a request sent on a keep-alive connection unanswered.
    process = DaemonProcess(
        tmp_path / "data", ["--embedding.dim", str(DIM), "--server.shutdown_timeout_s", "8"]
    )
    url = process.wait_ready()
    body = orjson.dumps(
        {"namespace": "n", "prompt": "p", "vector": [1, 0, 0, 0], "response": "x" * 4000}
    )
    upload = _connect(url)
    upload.sendall(
        b"POST /v1/semantic/entries HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body) + body[:100]
    )
    keep_alive = _connect(url)
    keep_alive.sendall(_get("/livez"))
    assert _read_response(keep_alive)[0] == 200
    time.sleep(0.2)  # the upload's handler is waiting for the rest of its body

    started = time.monotonic()
    process.proc.send_signal(signal.SIGTERM)
    _wait_for(process, "shutting down (SIGTERM)")
    keep_alive.sendall(_get("/v1/semantic/stats"))
    status, headers, error = _read_response(keep_alive)
    assert (status, headers["connection"]) == (503, "close")
    assert orjson.loads(error)["error"]["code"] == "not_ready"
    with pytest.raises(ConnectionRefusedError):  # the listener is closed
        socket.create_connection(_address(url), timeout=5).close()
    for i in range(100, len(body), 1000):  # the rest of the body, slowly
        upload.sendall(body[i : i + 1000])
        time.sleep(0.1)
    status, headers, created = _read_response(upload)
    assert status == 201, created
    assert headers["connection"] == "close"
    assert process.proc.wait(30) == 0
    process.terminate()
    assert time.monotonic() - started < 8 + 5  # the grace, plus closing the stores
    assert "still running" not in process.log


def test_requests_past_the_grace_are_cancelled_and_the_daemon_exits_0(tmp_path: Path) -> None:
    process = DaemonProcess(
        tmp_path / "data", ["--embedding.dim", str(DIM), "--server.shutdown_timeout_s", "0.5"]
    )
    url = process.wait_ready()
    stalled = _connect(url)
    stalled.sendall(b"POST /v1/semantic/lookup HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
    time.sleep(0.2)
    started = time.monotonic()
    assert process.terminate(signal.SIGTERM) == 0
    assert time.monotonic() - started < 10
    assert "1 requests still running after 0.5 s" in process.log
    stalled.close()


# --- caps, deadlines, probes ------------------------------------------------------------


def test_past_the_cap_connections_get_a_clean_503_and_probes_their_own_listener(
    tmp_path: Path,
) -> None:
    with daemon(tmp_path, "--server.max_connections", "8", "--server.probe_port", "0") as process:
        url = process.wait_listening()
        match = re.search(r"probes \(.*\) served on (http://[\d.]+:\d+)", process.log)
        assert match, process.log
        probe_url = match.group(1)
        held = [_connect(url) for _ in range(8)]
        for sock in held:  # each busy with a request whose body is still to come
            sock.sendall(
                b"POST /v1/semantic/lookup HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{"
            )
        try:
            time.sleep(0.2)
            for _ in range(3):
                refused = _connect(url)
                status, headers, body = _read_response(refused)
                assert (status, headers["connection"], headers["retry-after"]) == (
                    503,
                    "close",
                    "1",
                )
                assert orjson.loads(body)["error"]["code"] == "too_many_connections"
                assert refused.recv(1) == b""  # then closed, cleanly
                refused.close()
            for path in ("/livez", "/readyz", "/metrics"):
                assert http.request("GET", probe_url + path).status == 200, path
            missing = http.request("GET", probe_url + "/v1/semantic/stats")
            assert missing.status == 404
            metrics = http.request("GET", probe_url + "/metrics").data.decode()
            assert 'semcached_http_connections_refused_total{listener="main"} 3.0' in metrics
            assert 'semcached_http_connections{listener="main"} 8.0' in metrics
        finally:
            for sock in held:
                sock.close()
        for _ in range(200):  # the held ones are gone: room again
            with contextlib.suppress(ConnectionError):
                if http.request("GET", url + "/livez").status == 200:
                    break
            time.sleep(0.01)
        assert http.request("GET", url + "/livez").status == 200


def test_at_the_cap_the_longest_idle_connection_makes_room(tmp_path: Path) -> None:
    with daemon(tmp_path, "--server.max_connections", "4") as process:
        url = process.wait_listening()
        idle = [_connect(url) for _ in range(3)]
        busy = _connect(url)
        busy.sendall(_get("/livez"))
        assert _read_response(busy)[0] == 200
        time.sleep(1.5)  # all four now waited over a second
        served = []
        for _ in range(3):  # each new client gets in; an idle one goes, oldest first
            fresh = _connect(url)
            fresh.sendall(_get("/livez"))
            assert _read_response(fresh)[0] == 200
            served.append(fresh)
        # Oldest waits first: the idle ones (and wait_ready's pooled connection, if its
        # pool still holds it), never the one that was used since.
        evicted = [sock for sock in idle if sock.recv(1) == b""]
        assert len(evicted) >= 2
        busy.sendall(_get("/livez"))
        assert _read_response(busy)[0] == 200
        served[0].sendall(_get("/metrics"))
        metrics = _read_response(served[0])[2].decode()
        assert 'semcached_http_connections_evicted_total{listener="main"}' in metrics
        for sock in [*idle, busy, *served]:
            sock.close()


def test_headers_trickled_past_the_deadline_close_the_connection(tmp_path: Path) -> None:
    with daemon(tmp_path, "--server.header_timeout_s", "0.5") as process:
        url = process.wait_listening()
        slow = _connect(url)
        started = time.monotonic()
        slow.sendall(b"GET /livez HTTP/1.1\r\n")
        closed = False
        while time.monotonic() - started < 20:
            try:
                slow.sendall(b"X-Slow: 1\r\n")
            except OSError:
                closed = True
                break
            time.sleep(0.1)
        assert closed, "a connection trickling its headers stayed open"
        # An honest keep-alive connection idle between requests is not cut by it.
        honest = _connect(url)
        for _ in range(3):
            honest.sendall(_get("/livez"))
            assert _read_response(honest)[0] == 200
            time.sleep(0.7)
        metrics = http.request("GET", url + "/metrics").data.decode()
        assert "semcached_http_header_timeouts_total 1.0" in metrics


def test_a_flood_of_idle_connections_past_the_soft_file_limit_leaves_probes_working(
    tmp_path: Path,
) -> None:
    # Issue 14 (6): 3,000 idle connections against the default soft limit of 1,024
    # files made /livez fail 96% of the time: accept() ran out of descriptors. The
    # daemon raises its soft limit to the hard one (when the hard one allows).
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 4096:
        pytest.skip(f"the hard open-file limit ({hard}) leaves no room above 1024")
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))
    try:
        process = DaemonProcess(tmp_path / "data", ["--embedding.dim", str(DIM)])
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    flood: list[socket.socket] = []
    try:
        url = process.wait_ready()
        assert re.search(r"open-file limit (\d+)", process.log)
        for _ in range(1500):
            flood.append(_connect(url))
        ok = sum(http.request("GET", url + "/livez").status == 200 for _ in range(20))
        assert ok == 20
    finally:
        for sock in flood:
            sock.close()
        process.terminate()
