"""``feedback()`` of both clients against the real daemon, and feedback surviving kill -9."""

from __future__ import annotations

import math
import signal
from pathlib import Path

import numpy as np
import pytest

from semcached.clients import AsyncSemcachedClient, SemcachedClient
from semcached.errors import NotFoundError
from tests.daemon import DaemonProcess

DIM = 384
CONFIG = """
[categories.strict]
threshold = 0.8
min_threshold = 0.5
max_false_hit_rate = 0.05
"""


def unit(seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)
    return v / np.linalg.norm(v)


def at_similarity(base: np.ndarray, similarity: float, seed: int) -> np.ndarray:
    other = unit(seed)
    other -= other.dot(base) * base
    other /= np.linalg.norm(other)
    return (similarity * base + math.sqrt(1 - similarity**2) * other).astype(np.float32)


def test_sync_feedback(daemon_url: str) -> None:
    with SemcachedClient(daemon_url) as client:
        created = client.insert("t1", "hello", {"text": "hi"}, vector=unit(1))
        hit = client.lookup("t1", vector=unit(1))
        assert hit.lookup_id is not None
        miss = client.lookup("t1", vector=unit(2))
        assert miss.lookup_id is None

        right = client.feedback(hit.lookup_id, correct=True, reason="accepted")
        assert (right.entry_id, right.category, right.counted, right.removed) == (
            created.entry_id, "default", True, False,
        )  # fmt: skip
        assert right.calibration.observations == 1
        assert client.stats()["default"].calibration == right.calibration

        wrong = client.feedback(entry_id=created.entry_id, correct=False)
        assert (wrong.counted, wrong.removed) == (False, True)
        with pytest.raises(NotFoundError):
            client.get(created.entry_id, "t1")
        with pytest.raises(NotFoundError):
            client.feedback(entry_id=created.entry_id, correct=False)


async def test_async_feedback(daemon_url: str) -> None:
    async with AsyncSemcachedClient(daemon_url) as client:
        created = await client.insert("t1", "q", [1], vector=unit(3))
        hit = await client.lookup("t1", vector=unit(3))
        assert hit.lookup_id is not None
        wrong = await client.feedback(hit.lookup_id, correct=False)
        assert (wrong.entry_id, wrong.counted, wrong.removed) == (created.entry_id, True, True)
        assert wrong.calibration.false_hits == 1
        assert not (await client.lookup("t1", vector=unit(3))).hit
        with pytest.raises(NotFoundError):
            await client.feedback("bm90LWEtbG9va3VwLWlk", correct=True)


def test_calibration_and_lookup_ids_survive_kill_9(tmp_path: Path) -> None:
    config = tmp_path / "semcached.toml"
    config.write_text(CONFIG)
    args = ["--config", str(config)]
    base = unit(4)
    near = at_similarity(base, 0.9, seed=5)
    daemon = DaemonProcess(tmp_path / "data", args)
    try:
        url = daemon.wait_ready()
        with SemcachedClient(url) as client:
            created = client.insert("t1", "q", "a", category="strict", vector=base)
            assert client.lookup("t1", vector=near, category="strict").hit
            ids = []
            for i in range(60):
                hit = client.lookup(
                    "t1", vector=at_similarity(base, 0.972, seed=10 + i), category="strict"
                )
                assert hit.lookup_id is not None
                ids.append(hit.lookup_id)
            for lookup_id in ids[:59]:
                client.feedback(lookup_id, correct=True)
            before = client.stats()["strict"].calibration
            assert before is not None
            assert (before.source, before.threshold) == ("calibrated", pytest.approx(0.97))
            assert not client.lookup("t1", vector=near, category="strict").hit
    finally:
        daemon.terminate(signal.SIGKILL)

    daemon = DaemonProcess(tmp_path / "data", args)
    try:
        url = daemon.wait_ready()
        with SemcachedClient(url) as client:
            assert client.stats()["strict"].calibration == before
            assert not client.lookup("t1", vector=near, category="strict").hit
            late = client.feedback(ids[59], correct=False)  # issued before the kill
            assert (late.entry_id, late.counted, late.removed) == (created.entry_id, True, True)
            assert late.calibration.observations == before.observations + 1
    finally:
        daemon.terminate()
