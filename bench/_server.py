"""Child server processes of the benchmarks and the reading of their ``/metrics``.

- :class:`Server` — a child process (``semcached serve`` or the bare baseline server,
  bench/_bare_server.py) on 127.0.0.1 with an OS-chosen port, whose URL is read from its
  log; :func:`running` stops it on leaving a block;
- :func:`histogram` and :func:`histogram_quantile` — Prometheus histogram parsing and
  quantile estimation between two scrapes of the daemon's ``/metrics``.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import urllib3

BENCH_DIR = Path(__file__).resolve().parent

_LISTENING = re.compile(r"listening on (http://[\d.]+:\d+)")


# -- child servers -------------------------------------------------------------------------


class Server:
    """A server child process on 127.0.0.1:0; its stderr is collected line by line."""

    def __init__(self, name: str, argv: Sequence[str], env: dict[str, str] | None = None):
        self.name = name
        child_env = {k: v for k, v in os.environ.items() if not k.startswith("SEMCACHED_")}
        child_env.update(env or {})
        self.started = time.perf_counter()
        self.proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=child_env,
            text=True,
        )
        self.lines: list[str] = []
        self.url: str | None = None
        self._listening = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.http = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(30.0))

    @classmethod
    def semcached(cls, data_dir: Path, config: Path, settings: dict[str, object]) -> Server:
        argv = [
            *(sys.executable, "-m", "semcached.service.cli", "serve", "--config", str(config)),
            *("--server.port", "0", "--storage.data_dir", str(data_dir)),
        ]
        for key, value in settings.items():
            argv += [f"--{key}", str(value).lower() if isinstance(value, bool) else str(value)]
        return cls("semcached", argv)

    @classmethod
    def bare(
        cls, index: Path, *, dim: int, ef: int, k: int, threshold: float, minilm: bool
    ) -> Server:
        argv = [
            *(sys.executable, str(BENCH_DIR / "_bare_server.py"), "--index", str(index)),
            *("--dim", str(dim), "--ef", str(ef), "--k", str(k), "--threshold", str(threshold)),
        ]
        return cls("bare", [*argv, "--minilm"] if minilm else argv)

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))
            match = _LISTENING.search(line)
            if match and self.url is None:
                self.url = match.group(1)
                self._listening.set()
        self._listening.set()

    @property
    def log(self) -> str:
        return "\n".join(self.lines[-40:])

    def wait_ready(self, timeout: float = 3600.0, poll_s: float = 0.01) -> float:
        """Block until ``/readyz`` is 200; returns seconds since the process was started."""
        deadline = time.monotonic() + timeout
        if not self._listening.wait(timeout) or self.url is None:
            raise RuntimeError(f"{self.name} did not start listening; log:\n{self.log}")
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log}")
            if self.http.request("GET", self.url + "/readyz").status == 200:
                return time.perf_counter() - self.started
            time.sleep(poll_s)
        raise RuntimeError(f"{self.name} not ready within {timeout} s; log:\n{self.log}")

    def get(self, path: str) -> bytes:
        assert self.url is not None
        response = self.http.request("GET", self.url + path)
        if response.status != 200:
            raise RuntimeError(f"GET {path} on {self.name}: {response.status}")
        return bytes(response.data)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 600.0) -> float:
        """Signal and wait; returns the seconds until exit. Kills after ``timeout``."""
        started = time.perf_counter()
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(5)
        return time.perf_counter() - started


@contextlib.contextmanager
def running(server: Server) -> Iterator[Server]:
    """Stop ``server`` on leaving, also on an exception or Ctrl-C."""
    try:
        yield server
    finally:
        server.stop()


# -- Prometheus histograms ----------------------------------------------------------------

_BUCKET = re.compile(r"^(\w+)_bucket\{([^}]*)\} (\S+)$")
_LABEL = re.compile(r'(\w+)="([^"]*)"')


def histogram(text: str, name: str, **labels: str) -> dict[float, float]:
    """Cumulative bucket counts ``{le: count}`` of one histogram series in /metrics text."""
    out: dict[float, float] = {}
    for line in text.splitlines():
        match = _BUCKET.match(line)
        if not match or match.group(1) != name:
            continue
        found = dict(_LABEL.findall(match.group(2)))
        if all(found.get(k) == v for k, v in labels.items()):
            out[float(found["le"])] = float(match.group(3))
    return out


def histogram_quantile(q: float, before: dict[float, float], after: dict[float, float]) -> float:
    """Prometheus' ``histogram_quantile`` over the observations between two scrapes:
    linear interpolation inside the bucket the quantile falls in (NaN if none)."""
    bounds = sorted(after)
    counts = [after[b] - before.get(b, 0.0) for b in bounds]
    total = counts[-1] if counts else 0.0
    if total <= 0:
        return math.nan
    rank = q * total
    lower, below = 0.0, 0.0
    for bound, count in zip(bounds, counts, strict=True):
        if count >= rank:
            if math.isinf(bound):
                return lower
            return lower + (bound - lower) * (rank - below) / max(count - below, 1e-12)
        lower, below = bound, count
    return lower
