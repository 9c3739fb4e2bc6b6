"""Coalescing of concurrent k-NN searches of one index into shared index calls.

Handing a search to a worker thread and its answer back to the event loop costs two
thread wake-ups, which on a small or virtualised machine cost as much as the HNSW
search itself. :class:`SearchBatcher` pays that price once per *batch*: while a
search of an index runs on a worker, new queries for that index queue, and when it
returns they all leave together as one multi-row ``search`` call. A query that finds
its index idle leaves at once, so a lone client never waits for company; under load
the batch size grows with the backlog by itself. Up to ``max_in_flight`` batches of
one index run at once, each on one worker thread.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field

import numpy as np

from semcached.index.vector_index import SearchResult, VectorArray, VectorIndex

__all__ = ["SearchBatcher", "SearchStats"]


@dataclass(frozen=True, slots=True)
class SearchStats:
    """Index search calls made and query vectors sent (their ratio: the mean batch)."""

    batches: int
    queries: int


@dataclass(slots=True)
class _Query:
    vector: VectorArray
    k: int
    future: asyncio.Future[SearchResult]


@dataclass(slots=True)
class _Lane:
    """The searches of one index: up to ``max_in_flight`` batches running, the rest queued."""

    index: VectorIndex
    queued: list[_Query] = field(default_factory=list)
    running: int = 0


class SearchBatcher:
    """Runs ``index.search`` on ``executor``, up to ``max_in_flight`` batches per index.

    Different indexes search in parallel (as many as the executor has threads). A
    batch holds at most ``max_batch`` queries; ``k`` of a batch is the largest asked
    for and each caller gets its own first ``k`` results. An exception from the index
    reaches every caller of that batch. A cancelled caller's query is dropped if it
    has not left yet. Per query on the event loop: O(1) to queue, O(k) to answer.
    """

    def __init__(self, executor: Executor, *, max_batch: int = 64, max_in_flight: int = 1) -> None:
        if max_batch < 1 or max_in_flight < 1:
            raise ValueError("max_batch and max_in_flight must be at least 1")
        self._executor = executor
        self.max_batch = max_batch
        self.max_in_flight = max_in_flight
        self._lanes: dict[int, _Lane] = {}  # id(index) -> lane, only while it has work
        self.batches = 0
        self.queries = 0

    @property
    def stats(self) -> SearchStats:
        return SearchStats(self.batches, self.queries)

    async def search(self, index: VectorIndex, vector: VectorArray, k: int) -> SearchResult:
        """The ``k`` best (ids, similarities) for one query vector of shape (dim,)."""
        loop = asyncio.get_running_loop()
        lane = self._lanes.get(id(index))
        if lane is None:
            lane = self._lanes[id(index)] = _Lane(index)
        query = _Query(vector, k, loop.create_future())
        lane.queued.append(query)
        if lane.running < self.max_in_flight:
            self._dispatch(loop, lane)
        return await query.future

    def _dispatch(self, loop: asyncio.AbstractEventLoop, lane: _Lane) -> None:
        """Send the lane's queued queries (up to ``max_batch``) to a worker."""
        batch = [q for q in lane.queued[: self.max_batch] if not q.future.done()]
        del lane.queued[: self.max_batch]
        if not batch:
            if lane.queued:
                self._dispatch(loop, lane)
            elif lane.running == 0:
                del self._lanes[id(lane.index)]
            return
        lane.running += 1
        self.batches += 1
        self.queries += len(batch)
        vectors = np.stack([q.vector for q in batch])
        k = max(q.k for q in batch)
        try:
            running = self._executor.submit(lane.index.search, vectors, k)
        except RuntimeError as exc:  # the executor is shut down
            self._finish(loop, lane, batch, None, exc)
            return

        def done(f: Future[list[SearchResult]]) -> None:
            exc = f.exception()
            results = f.result() if exc is None else None
            loop.call_soon_threadsafe(self._finish, loop, lane, batch, results, exc)

        running.add_done_callback(done)

    def _finish(
        self,
        loop: asyncio.AbstractEventLoop,
        lane: _Lane,
        batch: list[_Query],
        results: list[SearchResult] | None,
        exc: BaseException | None,
    ) -> None:
        lane.running -= 1
        for i, query in enumerate(batch):
            if query.future.done():
                continue
            if results is None:
                query.future.set_exception(exc or RuntimeError("the search returned nothing"))
            else:
                ids, sims = results[i]
                query.future.set_result((ids[: query.k], sims[: query.k]))
        if lane.queued:
            self._dispatch(loop, lane)
        elif lane.running == 0:
            del self._lanes[id(lane.index)]
