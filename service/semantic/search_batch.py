"""Coalescing of concurrent k-NN searches of one index into shared index calls.

Handing a search to a worker thread and its answer back to the event loop costs two
thread wake-ups, which on a small or virtualised machine cost as much as the HNSW
search itself. :class:`SearchBatcher` pays that price once per *batch*: while a
search of an index runs on a worker, new queries for that index queue, and when it
returns they all leave together as one multi-row ``search`` call. A query that finds
its index idle leaves at once, so a lone client never waits for company; under load
the batch size grows with the backlog by itself. Up to ``max_in_flight`` batches of
one index run at once, each on one worker thread, the backlog split evenly between
the free ones.

A lone query of an index whose searches are cheap skips the worker altogether: when
the index is idle after one turn of the event loop (so queries that arrived with it
would have joined it) and its searches have recently taken at most ``inline_below_s``
per query, it is searched on the event loop itself, as a bare aiohttp + hnswlib server
would. That blocks the loop for the search (hnswlib's, at a million entries, a few
hundred microseconds) and saves the two hand-offs, which on a small machine cost more.
An index that answers slowly (a remote Milvus, a large exact index) stays on workers:
its first searches run there and measure it.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
import weakref
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from typing import cast

import numpy as np

from semcached.index.vector_index import (
    NonBlockingSearch,
    SearchResult,
    VectorArray,
    VectorIndex,
)

__all__ = ["SearchBatcher", "SearchStats"]


@dataclass(frozen=True, slots=True)
class SearchStats:
    """Index search calls made and query vectors sent (their ratio: the mean batch);
    ``inline``: the calls made on the event loop (lone queries of a fast index)."""

    batches: int
    queries: int
    inline: int = 0


@dataclass(slots=True)
class _Query:
    vector: VectorArray
    k: int
    future: asyncio.Future[SearchResult]


@dataclass(slots=True)
class _Lane:
    """The searches of one index: up to ``max_in_flight`` batches running, the rest queued."""

    nonblocking: bool
    """The index has ``search_nowait``: only such an index is searched on the loop."""
    queued: list[_Query] = field(default_factory=list)
    running: int = 0
    seconds_per_query: float = math.inf
    """Recent search time per query (an exponential average), inf until measured."""

    def measured(self, seconds: float, queries: int) -> None:
        per_query = seconds / queries
        if math.isinf(self.seconds_per_query):
            self.seconds_per_query = per_query
        else:
            self.seconds_per_query += _SMOOTHING * (per_query - self.seconds_per_query)


_SMOOTHING = 0.1


class SearchBatcher:
    """Runs ``index.search`` on ``executor``, up to ``max_in_flight`` batches per index.

    Different indexes search in parallel (as many as the executor has threads). A
    lone query of an idle, fast index runs on the loop (``inline_below_s``; 0 turns
    that off). A batch holds at most ``max_batch`` queries; ``k`` of a batch is the
    largest asked for and each caller gets its own first ``k`` results. An exception from the index
    reaches every caller of that batch. A cancelled caller's query is dropped if it
    has not left yet. Per query on the event loop: O(1) to queue, O(k) to answer.
    """

    def __init__(
        self,
        executor: Executor,
        *,
        max_batch: int = 64,
        max_in_flight: int = 1,
        inline_below_s: float = 0.001,
    ) -> None:
        if max_batch < 1 or max_in_flight < 1:
            raise ValueError("max_batch and max_in_flight must be at least 1")
        if not inline_below_s >= 0:
            raise ValueError("inline_below_s must not be negative")
        self._executor = executor
        self.max_batch = max_batch
        self.max_in_flight = max_in_flight
        self.inline_below_s = inline_below_s
        # Weak: an index dropped with its namespace takes its lane (and timing) along.
        self._lanes: weakref.WeakKeyDictionary[VectorIndex, _Lane] = weakref.WeakKeyDictionary()
        self.batches = 0
        self.queries = 0
        self.inline = 0

    @property
    def stats(self) -> SearchStats:
        return SearchStats(self.batches, self.queries, self.inline)

    async def search(self, index: VectorIndex, vector: VectorArray, k: int) -> SearchResult:
        """The ``k`` best (ids, similarities) for one query vector of shape (dim,)."""
        loop = asyncio.get_running_loop()
        lane = self._lanes.get(index)
        if lane is None:
            lane = self._lanes[index] = _Lane(isinstance(index, NonBlockingSearch))
        query = _Query(vector, k, loop.create_future())
        lane.queued.append(query)
        if lane.nonblocking and lane.running == 0 and lane.seconds_per_query <= self.inline_below_s:
            try:
                await asyncio.sleep(0)  # one turn: queries that arrived with this one queue
            except asyncio.CancelledError:
                with contextlib.suppress(ValueError):  # unless a batch took it along
                    lane.queued.remove(query)
                raise
            if lane.running == 0 and len(lane.queued) == 1 and lane.queued[0] is query:
                result = self._search_inline(cast(NonBlockingSearch, index), lane, query)
                if result is not None:
                    lane.queued.clear()
                    return result
        if lane.running < self.max_in_flight and lane.queued:
            self._dispatch(loop, index, lane)
        return await query.future

    def _search_inline(
        self, index: NonBlockingSearch, lane: _Lane, query: _Query
    ) -> SearchResult | None:
        """The query searched on the loop, or None if the index is being written."""
        started = time.perf_counter()
        results = index.search_nowait(query.vector[np.newaxis, :], query.k)
        if results is None:
            return None
        lane.measured(time.perf_counter() - started, 1)
        self.batches += 1
        self.queries += 1
        self.inline += 1
        return results[0]

    def _dispatch(self, loop: asyncio.AbstractEventLoop, index: VectorIndex, lane: _Lane) -> None:
        """Send the lane's queued queries to a worker: an even share of them over the
        free batch slots, at most ``max_batch``."""
        free = self.max_in_flight - lane.running
        size = min(self.max_batch, -(-len(lane.queued) // free))
        batch = [q for q in lane.queued[:size] if not q.future.done()]
        del lane.queued[:size]
        if not batch:
            if lane.queued:
                self._dispatch(loop, index, lane)
            return
        lane.running += 1
        self.batches += 1
        self.queries += len(batch)
        vectors = np.stack([q.vector for q in batch])
        k = max(q.k for q in batch)

        def search() -> tuple[list[SearchResult], float]:
            started = time.perf_counter()
            results = index.search(vectors, k)
            return results, time.perf_counter() - started

        try:
            running = self._executor.submit(search)
        except RuntimeError as exc:  # the executor is shut down
            self._finish(loop, index, lane, batch, exc)
            return

        def done(f: Future[tuple[list[SearchResult], float]]) -> None:
            exc = f.exception()
            outcome = f.result() if exc is None else exc
            loop.call_soon_threadsafe(self._finish, loop, index, lane, batch, outcome)

        running.add_done_callback(done)

    def _finish(
        self,
        loop: asyncio.AbstractEventLoop,
        index: VectorIndex,
        lane: _Lane,
        batch: list[_Query],
        outcome: tuple[list[SearchResult], float] | BaseException,
    ) -> None:
        lane.running -= 1
        if not isinstance(outcome, BaseException):
            lane.measured(outcome[1], len(batch))
        for i, query in enumerate(batch):
            if query.future.done():
                continue
            if isinstance(outcome, BaseException):
                query.future.set_exception(outcome)
            else:
                ids, sims = outcome[0][i]
                query.future.set_result((ids[: query.k], sims[: query.k]))
        if lane.queued:
            self._dispatch(loop, index, lane)
