"""``report_load()`` of both clients against the real daemon, and ``model`` on lookups."""

from __future__ import annotations

import numpy as np
import pytest

from semcached.clients import AsyncSemcachedClient, SemcachedClient
from semcached.errors import BadRequestError

DIM = 384


def unit(seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)
    return v / np.linalg.norm(v)


def test_sync_report_load(daemon_url: str) -> None:
    with SemcachedClient(daemon_url) as client:
        calm = client.report_load("t1", "small", queue_depth=1)
        assert (calm.namespace, calm.model, calm.engaged, calm.level) == (
            "t1", "small", False, 0.0,
        )  # fmt: skip
        # A model's first report is taken as it is; later ones are smoothed.
        busy = client.report_load("t1", "gpt-4o", queue_depth=1000, latency_ms=10)
        assert busy.engaged
        assert 0.0 < busy.level <= 1.0
        assert client.lookup("t1", vector=unit(1), model="gpt-4o").load_level == busy.level
        assert client.lookup("t1", vector=unit(1)).load_level == 0.0  # no model named
        with pytest.raises(BadRequestError) as info:
            client.report_load("t1", "gpt-4o")
        assert info.value.field == "queue_depth"


async def test_async_report_load(daemon_url: str) -> None:
    async with AsyncSemcachedClient(daemon_url) as client:
        state = await client.report_load("t1", "llama", latency_ms=10_000)
        assert state.engaged
        result = await client.lookup("t1", vector=unit(2), model="llama")
        assert result.load_level == state.level
        with pytest.raises(BadRequestError) as info:
            await client.report_load("t1", "llama", queue_depth=-1)
        assert info.value.field == "queue_depth"
