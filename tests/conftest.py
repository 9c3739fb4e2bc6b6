"""Fixtures shared by every suite."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from semcached.index.lmdb_env import LmdbEnvironment
from tests.daemon import DaemonProcess
from tests.redis_servers import RedisCluster, RedisServer

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


@pytest.fixture
def small_filesystem(tmp_path: Path) -> Iterator[Callable[[int], Path]]:
    """``mount(size_bytes)``: a fresh tmpfs of that size under ``tmp_path``, unmounted
    after the test. Skips where mounting is not permitted (not root, no CAP_SYS_ADMIN):
    a full filesystem cannot be made without one."""
    mounted: list[Path] = []

    def mount(size_bytes: int) -> Path:
        where = tmp_path / f"fs{len(mounted)}"
        where.mkdir()
        result = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size_bytes},mode=0700", "tmpfs", str(where)],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            pytest.skip(f"cannot mount a small tmpfs here: {result.stderr.strip()}")
        mounted.append(where)
        return where

    yield mount
    for where in reversed(mounted):
        subprocess.run(["umount", "-l", str(where)], check=False)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A real standalone ``redis-server`` on a loopback port, stopped after the test."""
    server = RedisServer(tmp_path / "redis")
    yield server
    server.stop()


@pytest.fixture
def redis_cluster(tmp_path: Path) -> Iterator[RedisCluster]:
    """A real 3-master Redis Cluster on loopback ports, stopped after the test."""
    cluster = RedisCluster(tmp_path / "cluster")
    yield cluster
    cluster.stop()
