"""What the fault scenarios share: a daemon with the tiny KV model, writers that count
what was acknowledged, the expected bytes of every key, and the report line."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from semcached.clients import SemcachedClient, put_meta
from semcached.errors import ApiError, SemcachedError
from semcached.protocol.keys import chunk_key
from tests.daemon import DaemonProcess
from tests.service.kv.kit import TINY

NAMESPACE = "faults"
DIM = 384


def write_config(root: Path, **kv: int | str) -> Path:
    """A config with the tiny KV model and ``[kv]`` settings (shm in ``root``)."""
    settings = {"shm_dir": str(root), "host_bytes": 0, **kv}
    lines = ["[kv]", *(f"{k} = {v!r}".replace("'", '"') for k, v in settings.items())]
    lines += [
        f'[kv_models."{TINY.name}"]',
        f"layers = {TINY.layers}",
        f"kv_heads = {TINY.kv_heads}",
        f"head_dim = {TINY.head_dim}",
    ]
    config = root / "semcached.toml"
    config.write_text("\n".join(lines) + "\n")
    return config


def start(data_dir: Path, config: Path, *args: str) -> DaemonProcess:
    daemon = DaemonProcess(data_dir, ["--config", str(config), *args])
    daemon.wait_ready(60)
    return daemon


def unit(seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)
    return v / np.linalg.norm(v)


def key(i: int) -> bytes:
    return chunk_key(TINY.name, TINY.tokenizer, "float32", [i, i + 1, i + 2])


def tensor(i: int, tokens: int) -> np.ndarray:
    shape = (TINY.layers, 2, TINY.kv_heads, tokens, TINY.head_dim)
    return np.random.default_rng(i).standard_normal(shape).astype(np.float32)


def put_chunk(client: SemcachedClient, i: int, tokens: int) -> None:
    """Store ``tensor(i, tokens)`` under ``key(i)``, over HTTP (a body on the socket)."""
    data = tensor(i, tokens)
    client.put_chunk(key(i), data, put_meta(TINY.name, "float32", data.shape), transfer="http")


@dataclass
class Writers:
    """Threads that write until told to stop, and what the daemon acknowledged.

    ``write(client, n)`` writes item ``n`` and returns its name (an entry id, a chunk
    number); an :class:`ApiError` answer is counted by status; any other
    :class:`SemcachedError` (the daemon died) ends the thread with that item unknown.
    """

    url: str
    write: Callable[[SemcachedClient, int], int]
    threads: int = 4
    first: int = 0
    acknowledged: list[int] = field(default_factory=list)
    refused: dict[int, int] = field(default_factory=dict)  # status -> count
    in_flight: list[int] = field(default_factory=list)  # unknown outcome at the end
    attempts: int = 0  # writes answered since start()
    seeds: list[int] = field(default_factory=list)  # the n of each acknowledged write
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _running: list[threading.Thread] = field(default_factory=list)

    def start(self) -> Writers:
        for t in range(self.threads):
            thread = threading.Thread(target=self._run, args=(t,), daemon=True)
            thread.start()
            self._running.append(thread)
        return self

    def _run(self, t: int) -> None:
        with SemcachedClient(self.url, timeout_s=30) as client:
            n = self.first + t
            while not self._stop.is_set():
                try:
                    name = self.write(client, n)
                except ApiError as exc:
                    with self._lock:
                        self.refused[exc.status] = self.refused.get(exc.status, 0) + 1
                        self.attempts += 1
                except SemcachedError:
                    with self._lock:
                        self.in_flight.append(n)
                    return
                else:
                    with self._lock:
                        self.acknowledged.append(name)
                        self.seeds.append(n)
                        self.attempts += 1
                n += self.threads

    def count(self) -> int:
        with self._lock:
            return len(self.acknowledged)

    def acknowledged_seeds(self) -> list[int]:
        with self._lock:
            return list(self.seeds)

    def wait_for(self, count: int, timeout: float = 120.0) -> None:
        """Until ``count`` writes in all are acknowledged."""
        self._wait(lambda: self.count() >= count, f"{count} acknowledged writes", timeout)

    def wait_for_attempts(self, count: int, timeout: float = 120.0) -> None:
        """Until ``count`` writes since :meth:`start` are answered, either way."""
        self._wait(lambda: self.attempts >= count, f"{count} answered writes", timeout)

    def _wait(self, done: Callable[[], bool], what: str, timeout: float) -> None:
        pause = threading.Event()
        for _ in range(int(timeout / 0.01)):
            if done():
                return
            pause.wait(0.01)
        raise AssertionError(f"no {what} within {timeout} s: {self}")

    def stop(self) -> None:
        self._stop.set()
        for thread in self._running:
            thread.join(60)


def report(capsys: pytest.CaptureFixture[str], name: str, **counts: object) -> None:
    """One line of the fault suite's summary, printed past pytest's capture."""
    with capsys.disabled():
        print(f"\nFAULT {name}: " + ", ".join(f"{k}={v}" for k, v in counts.items()))
