"""Issue 14, part A against a real daemon process: what an adversary's chunk puts cost.

The daemon's peak resident memory is read from ``/proc/<pid>/status`` (``VmHWM``,
reset through ``clear_refs`` before each attack), so an allocation that lasts a
moment still counts. Default settings and the built-in model
(SmolLM2-135M: 30 layers, 3 KV heads, head dimension 64).
"""

from __future__ import annotations

import select
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import urllib3
from prometheus_client.parser import text_string_to_metric_families

from tests.daemon import DaemonProcess

MiB = 1 << 20
MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
BYTES_PER_TOKEN = 30 * 2 * 3 * 64 * 2  # float16
GROWTH_ALLOWED = 32 * MiB  # the daemon's own churn (a few MB) and then some

http = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(total=60))


@pytest.fixture
def kv_daemon(tmp_path: Path) -> Iterator[tuple[DaemonProcess, str]]:
    process = DaemonProcess(
        tmp_path / "data", ["--kv.shm_dir", str(tmp_path), "--server.access_log", "false"]
    )
    try:
        yield process, process.wait_ready()
    finally:
        process.terminate()


def _meta(tokens: int) -> str:
    doc = {"model": MODEL, "dtype": "float16", "shape": [30, 2, 3, tokens, 64]}
    return orjson.dumps(doc).decode()


def _reset_peak(pid: int) -> int:
    """Reset the peak RSS to the current one; that, in bytes."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")
    return _status(pid, "VmHWM")


def _status(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(field)


class LivenessProbe:
    """Asks /livez over and over from a thread until stopped; keeps the statuses."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.statuses: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.statuses.append(http.request("GET", self.url + "/livez").status)
            self._stop.wait(0.01)

    def __enter__(self) -> LivenessProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@pytest.mark.parametrize("tokens", [10**9, 2**62])
def test_a_100_byte_header_declaring_a_huge_shape_costs_nothing(
    kv_daemon: tuple[DaemonProcess, str], tokens: int
) -> None:
    daemon, url = kv_daemon
    pid = daemon.proc.pid
    before = _reset_peak(pid)
    with LivenessProbe(url) as probe:
        response = http.request(
            "PUT",
            f"{url}/v1/kv/chunks/{'0' * 32}",
            body=b"",
            headers={"X-Semcached-KV-Meta": _meta(tokens)},
        )
    assert response.status == 413
    assert orjson.loads(response.data)["error"]["code"] == "blob_too_large"
    # Before: +954 MiB and every route stalled ~3 s for 10**9 tokens; a 500 for 2**62.
    assert _status(pid, "VmHWM") - before < GROWTH_ALLOWED
    assert probe.statuses
    assert set(probe.statuses) == {200}


def test_six_uploads_declaring_256_mib_and_sending_nothing_cost_nothing(
    kv_daemon: tuple[DaemonProcess, str],
) -> None:
    daemon, url = kv_daemon
    pid = daemon.proc.pid
    tokens = (256 * MiB) // BYTES_PER_TOKEN  # the largest blob under kv.max_blob_bytes
    declared = tokens * BYTES_PER_TOKEN
    host, port = url.removeprefix("http://").split(":")
    before = _reset_peak(pid)
    sockets = []
    try:
        for i in range(6):
            s = socket.create_connection((host, int(port)), timeout=30)
            s.sendall(
                (
                    f"PUT /v1/kv/chunks/{i:032x} HTTP/1.1\r\nHost: t\r\n"
                    f"X-Semcached-KV-Meta: {_meta(tokens)}\r\n"
                    f"Content-Length: {declared}\r\n\r\n"
                ).encode()
            )
            sockets.append(s)
        # kv.max_inflight_upload_bytes (1 GiB) admits four; two are refused at once.
        answered: dict[socket.socket, str] = {}
        while len(answered) < 2:
            ready, _, _ = select.select([s for s in sockets if s not in answered], [], [], 30)
            assert ready, "no refusal came"
            for s in ready:
                answered[s] = s.recv(4096).decode()
        for head in answered.values():
            assert head.startswith("HTTP/1.1 503")
            assert "Retry-After: 1" in head
            assert "uploads_busy" in head
        metrics = http.request("GET", url + "/metrics").data.decode()
        samples = {
            sample.name: sample.value
            for family in text_string_to_metric_families(metrics)
            for sample in family.samples
        }
        assert samples["semcached_kv_upload_bytes_in_flight"] == 4 * declared
        assert samples["semcached_kv_uploads_refused_total"] == 2
        assert http.request("GET", url + "/livez").status == 200
        # Before: each socket cost its declared 256 MiB at once (+1536 MiB for six).
        assert _status(pid, "VmHWM") - before < GROWTH_ALLOWED
    finally:
        for s in sockets:
            s.close()
