"""Fixtures of the in-process engine tests: a worker pool, an LMDB environment, a clock."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from semcached.index.lmdb_env import LmdbEnvironment
from tests.service.engine_kit import Clock, MiB


@pytest.fixture
def executor() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(2) as pool:
        yield pool


@pytest.fixture
def env(tmp_path: Path) -> Iterator[LmdbEnvironment]:
    environment = LmdbEnvironment(tmp_path / "lmdb", initial_map_bytes=MiB, max_map_bytes=64 * MiB)
    yield environment
    environment.close()


@pytest.fixture
def clock() -> Clock:
    return Clock()
