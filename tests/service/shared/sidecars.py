"""Daemons sharing one Redis, for the shared tier's tests."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from semcached.clients.sync import SemcachedClient
from tests.daemon import DaemonProcess

__all__ = ["DIM", "Sidecar", "eventually", "stop_all", "unit"]

DIM = 16


def unit(seed: int) -> list[float]:
    """A random unit vector, the same for the same seed."""
    v = np.random.default_rng(seed).normal(size=DIM)
    return (v / np.linalg.norm(v)).astype(np.float32).tolist()


def eventually(check: Callable[[], bool], timeout: float = 20.0, what: str = "") -> None:
    """Wait for ``check()`` to hold (replication is asynchronous)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"not within {timeout} s: {what}")


class _Stoppable(Protocol):
    def stop(self) -> None: ...


def stop_all(*things: _Stoppable) -> None:
    """Stop each of ``things``, all of them even if one fails; then raise the first error."""
    errors: list[BaseException] = []
    for thing in things:
        try:
            thing.stop()
        except BaseException as exc:  # re-raised below, after the others are stopped
            errors.append(exc)
    if errors:
        raise errors[0]


class Sidecar:
    """A daemon on its own data dir with the shared tier at ``redis_url``."""

    def __init__(self, data_dir: Path, redis_url: str, args: Sequence[str] = ()) -> None:
        self.data_dir = data_dir
        self.redis_url = redis_url
        self.args = list(args)
        self.process: DaemonProcess | None = None
        self.client: SemcachedClient | None = None
        self.start()

    def start(self) -> None:
        self.process = DaemonProcess(
            self.data_dir,
            [
                "--embedding.dim",
                str(DIM),
                "--shared.redis_url",
                self.redis_url,
                "--shared.poll_interval_s",
                "0.01",
                "--shared.timeout_s",
                "0.5",
                *self.args,
            ],
        )
        url = self.process.wait_ready()
        self.client = SemcachedClient(url, timeout_s=10)

    def stop(self, sig: int | None = None) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None
        if self.process is not None:
            if sig is None:
                self.process.terminate()
            else:
                self.process.terminate(sig)
            self.process = None

    @property
    def api(self) -> SemcachedClient:
        assert self.client is not None
        return self.client

    def hit(self, namespace: str, seed: int) -> int | None:
        """The entry id a lookup of seed's vector hits, or None."""
        result = self.api.lookup(namespace, vector=unit(seed), threshold=0.999)
        return result.entry_id if result.hit else None
