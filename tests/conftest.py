"""Fixtures shared by every suite."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from semcached.index.lmdb_env import LmdbEnvironment
from tests.daemon import DaemonProcess

MiB = 1 << 20


@pytest.fixture
def env(tmp_path: Path) -> Iterator[LmdbEnvironment]:
    """A fresh LMDB environment: a 1 MiB map that may grow to 64 MiB."""
    environment = LmdbEnvironment(tmp_path / "lmdb", initial_map_bytes=MiB, max_map_bytes=64 * MiB)
    yield environment
    environment.close()


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[DaemonProcess]:
    """A real daemon on an OS-chosen port with a fresh data directory, ready to serve."""
    process = DaemonProcess(tmp_path / "data")
    try:
        process.wait_ready()
        yield process
    finally:
        process.terminate()


@pytest.fixture
def daemon_url(daemon: DaemonProcess) -> str:
    return daemon.wait_listening()
