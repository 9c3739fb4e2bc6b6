"""Fixtures of the in-process engine tests: a worker pool, an LMDB environment, a clock."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.service.semantic.kit import Clock


@pytest.fixture
def executor() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(2) as pool:
        yield pool


@pytest.fixture
def clock() -> Clock:
    return Clock()
