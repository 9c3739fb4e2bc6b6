"""SearchBatcher: concurrent searches of one index share index calls, answers stay exact."""

from __future__ import annotations

import asyncio
import gc
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import numpy as np
import pytest
from numpy.typing import ArrayLike

from semcached.index.exact import ExactIndex
from semcached.index.vector_index import SearchResult
from semcached.service.semantic.search_batch import SearchBatcher, SearchStats

DIM = 16


class GatedIndex(ExactIndex):
    """The exact index, recording each search call's row count; ``gate`` holds calls."""

    def __init__(self) -> None:
        super().__init__(DIM)
        self.gate = threading.Event()
        self.gate.set()
        self.calls: list[int] = []
        self.fail = False

    def search(self, queries: ArrayLike, k: int) -> list[SearchResult]:
        self.gate.wait(10)
        rows = np.asarray(queries)
        self.calls.append(rows.shape[0])
        if self.fail:
            raise RuntimeError("index broke")
        return super().search(rows, k)


def idle(batcher: SearchBatcher) -> bool:
    """No query queued or running for any index."""
    return all(not lane.queued and lane.running == 0 for lane in batcher._lanes.values())


def filled(n: int = 200, seed: int = 0) -> tuple[GatedIndex, np.ndarray]:
    return stocked(GatedIndex(), n, seed)


IndexT = TypeVar("IndexT", bound=ExactIndex)


def stocked(index: IndexT, n: int, seed: int) -> tuple[IndexT, np.ndarray]:
    """``index`` holding ``n`` random vectors under ids 1..n, and the vectors."""
    vectors = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    index.add(np.arange(1, n + 1), vectors)
    return index, vectors


async def test_a_lone_query_leaves_at_once_and_matches_a_direct_search(
    executor: ThreadPoolExecutor,
) -> None:
    index, vectors = filled()
    batcher = SearchBatcher(executor, inline_below_s=0)
    ids, sims = await batcher.search(index, vectors[3], 5)
    want_ids, want_sims = index.search(vectors[3][None, :], 5)[0]
    assert ids.tolist() == want_ids.tolist()
    assert ids[0] == 4
    np.testing.assert_allclose(sims, want_sims, rtol=1e-6)
    assert index.calls[0] == 1
    assert idle(batcher)


async def test_queries_arriving_during_a_search_share_the_next_call(
    executor: ThreadPoolExecutor,
) -> None:
    index, vectors = filled()
    batcher = SearchBatcher(executor, max_batch=8, inline_below_s=0)
    index.gate.clear()
    first = asyncio.ensure_future(batcher.search(index, vectors[0], 3))
    await asyncio.sleep(0.01)  # the first call is now blocked in the index
    rest = [
        asyncio.ensure_future(batcher.search(index, vectors[i], 1 + i % 4)) for i in range(1, 20)
    ]
    await asyncio.sleep(0.01)
    index.gate.set()
    results = await asyncio.gather(first, *rest)
    assert index.calls == [1, 8, 8, 3]  # one alone, then the backlog in max_batch slices
    for i, (ids, sims) in enumerate(results):
        k = 3 if i == 0 else 1 + i % 4
        want_ids, want_sims = index.search(vectors[i][None, :], k)[0]
        assert ids.tolist() == want_ids.tolist()  # each caller gets its own k
        np.testing.assert_allclose(sims, want_sims, rtol=1e-6)
    assert batcher.stats.batches == 4
    assert batcher.stats.queries == 20
    assert idle(batcher)


async def test_up_to_max_in_flight_batches_of_one_index_run_at_once(
    executor: ThreadPoolExecutor,
) -> None:
    index, vectors = filled()
    batcher = SearchBatcher(executor, max_in_flight=2, inline_below_s=0)
    index.gate.clear()
    first = asyncio.ensure_future(batcher.search(index, vectors[0], 1))
    second = asyncio.ensure_future(batcher.search(index, vectors[1], 1))
    await asyncio.sleep(0.01)  # both are in the index now, on the two workers
    rest = [asyncio.ensure_future(batcher.search(index, vectors[i], 1)) for i in range(2, 7)]
    await asyncio.sleep(0.01)
    assert batcher.stats.batches == 2  # the others wait for a free slot
    index.gate.set()
    results = await asyncio.gather(first, second, *rest)
    assert [ids.tolist() for ids, _ in results] == [[i + 1] for i in range(7)]
    assert sorted(index.calls) == [1, 1, 5]  # the backlog left as one batch
    assert idle(batcher)


async def test_an_index_error_reaches_every_caller_of_the_batch(
    executor: ThreadPoolExecutor,
) -> None:
    index, vectors = filled()
    batcher = SearchBatcher(executor, inline_below_s=0)
    index.fail = True
    outcomes = await asyncio.gather(
        *(batcher.search(index, vectors[i], 2) for i in range(5)), return_exceptions=True
    )
    assert all(isinstance(o, RuntimeError) and "index broke" in str(o) for o in outcomes)
    index.fail = False
    ids, _ = await batcher.search(index, vectors[7], 1)  # the lane recovers
    assert ids.tolist() == [8]


async def test_a_cancelled_query_is_dropped_before_it_leaves(
    executor: ThreadPoolExecutor,
) -> None:
    index, vectors = filled()
    batcher = SearchBatcher(executor, inline_below_s=0)
    index.gate.clear()
    running = asyncio.ensure_future(batcher.search(index, vectors[0], 1))
    await asyncio.sleep(0.01)
    doomed = asyncio.ensure_future(batcher.search(index, vectors[1], 1))
    kept = asyncio.ensure_future(batcher.search(index, vectors[2], 1))
    await asyncio.sleep(0)
    doomed.cancel()
    index.gate.set()
    (ids0, _), (ids2, _) = await asyncio.gather(running, kept)
    assert (ids0.tolist(), ids2.tolist()) == ([1], [3])
    assert index.calls == [1, 1]  # the cancelled query never reached the index


async def test_separate_indexes_search_in_parallel(executor: ThreadPoolExecutor) -> None:
    blocked, _ = filled(seed=1)
    free, vectors = filled(seed=2)
    batcher = SearchBatcher(executor, inline_below_s=0)
    blocked.gate.clear()
    stuck = asyncio.ensure_future(batcher.search(blocked, vectors[0], 1))
    await asyncio.sleep(0.01)
    ids, _ = await asyncio.wait_for(batcher.search(free, vectors[5], 1), 5)
    assert ids.tolist() == [6]
    blocked.gate.set()
    await stuck


async def test_a_shut_down_executor_fails_the_query() -> None:
    index, vectors = filled()
    pool = ThreadPoolExecutor(1)
    pool.shutdown()
    batcher = SearchBatcher(pool, inline_below_s=0)
    with pytest.raises(RuntimeError):
        await batcher.search(index, vectors[0], 1)
    assert idle(batcher)


# -- lone queries on the event loop -------------------------------------------------------


def exact(n: int = 200, seed: int = 0) -> tuple[ExactIndex, np.ndarray]:
    return stocked(ExactIndex(DIM), n, seed)


class Opaque:
    """An index without ``search_nowait`` (a remote one, say): never searched on the loop."""

    def __init__(self, inner: ExactIndex) -> None:
        self.inner = inner

    def search(self, queries: ArrayLike, k: int) -> list[SearchResult]:
        return self.inner.search(queries, k)


async def test_a_lone_query_of_a_fast_index_is_searched_on_the_loop_once_timed(
    executor: ThreadPoolExecutor,
) -> None:
    index, vectors = exact()
    batcher = SearchBatcher(executor)
    await batcher.search(index, vectors[0], 3)  # unmeasured: on a worker, which times it
    assert batcher.stats.inline == 0
    for i in range(1, 6):
        ids, sims = await batcher.search(index, vectors[i], 3)
        want_ids, want_sims = index.search(vectors[i][None, :], 3)[0]
        assert ids.tolist() == want_ids.tolist()
        np.testing.assert_allclose(sims, want_sims, rtol=1e-6)
    assert batcher.stats == SearchStats(batches=6, queries=6, inline=5)
    assert idle(batcher)


async def test_queries_that_arrive_together_go_to_workers_split_over_the_free_slots(
    executor: ThreadPoolExecutor,
) -> None:
    index, vectors = exact()
    batcher = SearchBatcher(executor, max_in_flight=2)
    await batcher.search(index, vectors[0], 1)  # timed: the index counts as fast now
    results = await asyncio.gather(*(batcher.search(index, vectors[i], 1) for i in range(10)))
    assert [ids.tolist() for ids, _ in results] == [[i + 1] for i in range(10)]
    assert batcher.stats == SearchStats(batches=3, queries=11, inline=0)  # 1 + 5 + 5
    assert idle(batcher)


async def test_a_query_of_an_index_being_written_waits_on_a_worker_not_the_loop(
    executor: ThreadPoolExecutor,
) -> None:
    index, vectors = exact()
    batcher = SearchBatcher(executor)
    await batcher.search(index, vectors[0], 1)
    index._lock.acquire()  # as an add or remove holds it
    try:
        pending = asyncio.ensure_future(batcher.search(index, vectors[4], 1))
        await asyncio.sleep(0.05)  # the loop is free meanwhile
        assert not pending.done()
    finally:
        index._lock.release()
    ids, _ = await asyncio.wait_for(pending, 5)
    assert ids.tolist() == [5]
    assert batcher.stats.inline == 0


async def test_slow_and_opaque_indexes_stay_on_workers(executor: ThreadPoolExecutor) -> None:
    index, vectors = exact()
    slow = SearchBatcher(executor, inline_below_s=1e-12)
    opaque = SearchBatcher(executor)
    for i in range(4):
        assert (await slow.search(index, vectors[i], 1))[0].tolist() == [i + 1]
        assert (await opaque.search(Opaque(index), vectors[i], 1))[0].tolist() == [i + 1]  # type: ignore[arg-type]
    assert slow.stats.inline == opaque.stats.inline == 0


async def test_a_query_cancelled_in_its_turn_leaves_nothing_behind(
    executor: ThreadPoolExecutor,
) -> None:
    index, vectors = exact()
    batcher = SearchBatcher(executor)
    await batcher.search(index, vectors[0], 1)
    doomed = asyncio.ensure_future(batcher.search(index, vectors[1], 1))
    await asyncio.sleep(0)  # it is queued and yielding its turn
    doomed.cancel()
    with pytest.raises(asyncio.CancelledError):
        await doomed
    assert (await batcher.search(index, vectors[2], 1))[0].tolist() == [3]
    assert idle(batcher)


async def test_a_dropped_index_takes_its_lane_along(executor: ThreadPoolExecutor) -> None:
    index, vectors = exact()
    batcher = SearchBatcher(executor)
    await batcher.search(index, vectors[0], 1)
    assert len(batcher._lanes) == 1
    del index
    gc.collect()
    assert len(batcher._lanes) == 0
