"""Micro-batching of concurrent embedding calls into shared backend calls.

A model embeds a batch of 32 texts several times faster per text than 32 single
calls, and an embedding service answers one request of 32 about as fast as one of 1.
Requests arrive one text at a time from many HTTP handlers, so :class:`MicroBatcher`
holds each text for at most ``max_wait_s`` to let others join it.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from semcached.service.semantic.embedding.base import (
    BatchFn,
    EmbeddingError,
    EmbeddingUnavailableError,
    Matrix,
)

__all__ = ["MicroBatcher"]

log = logging.getLogger(__name__)


class _Request:
    """One caller's texts, its rows as they arrive and the future it waits on."""

    __slots__ = ("fed", "future", "out", "queued", "remaining", "texts")

    def __init__(self, texts: list[str], future: asyncio.Future[dict[int, Matrix]]) -> None:
        self.texts = texts
        self.future = future
        self.out: dict[int, Matrix] = {}  # slice start -> its rows
        self.remaining = 0  # slices queued or running, not yet answered
        self.fed = 0  # texts[:fed] are in slices; the rest wait for room in the queue
        self.queued = 0  # of those, texts still in the queue

    @property
    def complete(self) -> bool:
        return self.remaining == 0 and self.fed == len(self.texts)

    def fail(self, exc: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(exc)


@dataclass(slots=True)
class _Slice:
    """Up to ``max_batch`` consecutive texts of one request; batches hold whole slices."""

    request: _Request
    start: int
    stop: int
    enqueued: float

    @property
    def size(self) -> int:
        return self.stop - self.start


class MicroBatcher:
    """Merges concurrent :meth:`submit` calls into batches for one ``batch_fn``.

    A batch leaves when it holds ``max_batch`` texts, or ``max_wait_s`` after its oldest
    text arrived, whichever is first; at most ``max_concurrency`` batches run at once
    (while they do, new texts queue up and leave together), and a backlog is split
    evenly over the free ones so that every core of a thread-safe backend gets a share.
    Each caller gets its own rows in order; an exception from ``batch_fn`` reaches every
    caller of that batch; a cancelled caller's texts are dropped if not yet sent, its
    rows discarded if they were. At most ``max_queued`` texts wait. A submission that
    fits in the free room is queued whole; a larger one (an in-process ``insert_many``
    of thousands) is fed in slices as room frees up, holding at most half the queue so
    that other callers still get in. :meth:`submit` fails fast (503) only when the queue
    has no room for the caller's first slice.
    """

    def __init__(
        self,
        batch_fn: BatchFn,
        *,
        max_batch: int,
        max_wait_s: float,
        max_concurrency: int = 1,
        max_queued: int | None = None,
    ) -> None:
        if max_batch < 1 or max_concurrency < 1 or max_wait_s < 0:
            raise ValueError("max_batch and max_concurrency must be >= 1, max_wait_s >= 0")
        self._batch_fn = batch_fn
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.max_queued = max_queued if max_queued is not None else max(1024, 64 * max_batch)
        self.max_concurrency = max_concurrency
        self._slots = asyncio.Semaphore(max_concurrency)
        self._in_flight = 0  # batches collecting or running, each holding a slot
        self._queue: deque[_Slice] = deque()
        self._queued_texts = 0
        self._feeding: deque[_Request] = deque()  # admitted, texts still to queue
        self._wakeup = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None
        self._running: set[asyncio.Task[None]] = set()
        self._closed = False

    @property
    def queued(self) -> int:
        """Texts waiting for a batch (a cancelled caller's count until pruned)."""
        return self._queued_texts

    async def submit(self, texts: Sequence[str]) -> Matrix:
        """Rows for ``texts`` in order, computed in batches shared with other callers."""
        if self._closed:
            raise EmbeddingUnavailableError("the embedder is closed")
        if not texts:
            raise ValueError("submit() needs at least one text")
        room = self.max_queued - self._queued_texts
        if room < min(len(texts), self.max_batch):
            raise EmbeddingUnavailableError(
                f"embedding queue is full ({self._queued_texts} of {self.max_queued} texts "
                "waiting); retry later",
                code="embedding_overloaded",
            )
        loop = asyncio.get_running_loop()
        request = _Request(list(texts), loop.create_future())
        if len(texts) <= room:
            self._feed(request, limit=len(texts))
        else:
            self._feeding.append(request)
            self._refill()
        self._wakeup.set()
        if self._worker is None:
            self._worker = loop.create_task(self._work(), name="semcached-embed-batcher")
        # Cancelling this await cancels the future; the worker then skips our slices.
        parts = await request.future
        if len(parts) == 1:
            return parts[0]
        return np.concatenate([parts[start] for start in sorted(parts)])

    async def _work(self) -> None:
        while True:
            await self._slots.acquire()
            self._in_flight += 1
            try:
                batch = await self._collect()
            except asyncio.CancelledError:
                self._release()
                raise
            except Exception:  # a bug here must not leave callers waiting forever
                self._release()
                log.exception("embedding batcher failed; failing the queued texts")
                self._fail_queued(EmbeddingError("internal error in the embedding batcher"))
                self._worker = None  # the next submit starts a new one
                return
            task = asyncio.create_task(self._run(batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    def _feed(self, request: _Request, limit: int) -> None:
        """Queue slices of ``request``'s next texts while it holds fewer than ``limit``."""
        now = asyncio.get_running_loop().time()
        total = len(request.texts)
        while request.fed < total:
            stop = min(request.fed + self.max_batch, total)
            size = stop - request.fed
            if request.queued + size > limit or self._queued_texts + size > self.max_queued:
                return
            self._queue.append(_Slice(request, request.fed, stop, now))
            request.remaining += 1
            request.queued += size
            request.fed = stop
            self._queued_texts += size

    def _refill(self) -> None:
        """Top up the submissions fed in pieces, oldest first, as far as room allows."""
        share = max(self.max_batch, self.max_queued // 2)
        while self._feeding:
            request = self._feeding[0]
            if not request.future.done():
                self._feed(request, limit=share)
                if request.fed < len(request.texts):
                    return  # no room yet: it waits, and so do the ones behind it
            self._feeding.popleft()

    def _prune(self) -> None:
        """Drop queued slices whose caller has gone (cancelled)."""
        if any(s.request.future.done() for s in self._queue):
            self._queue = deque(s for s in self._queue if not s.request.future.done())
            self._queued_texts = sum(s.size for s in self._queue)
        self._refill()

    async def _collect(self) -> list[_Slice]:
        loop = asyncio.get_running_loop()
        while True:
            self._prune()
            if self._queue:
                break
            self._wakeup.clear()
            await self._wakeup.wait()
        # The wait counts from the oldest text's arrival, so texts that queued while
        # the backend was busy leave at once.
        deadline = self._queue[0].enqueued + self.max_wait_s
        while self._queued_texts < self.max_batch:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            self._wakeup.clear()
            try:
                async with asyncio.timeout(remaining):
                    await self._wakeup.wait()
            except TimeoutError:
                break
            self._prune()
        # An even share of the backlog for each free slot, this one included.
        free = self.max_concurrency - self._in_flight + 1
        limit = min(self.max_batch, -(-self._queued_texts // free))
        batch: list[_Slice] = []
        size = 0
        while self._queue and (not batch or size + self._queue[0].size <= limit):
            piece = self._queue.popleft()
            self._queued_texts -= piece.size
            piece.request.queued -= piece.size
            if not piece.request.future.done():
                batch.append(piece)
                size += piece.size
        self._refill()
        return batch

    async def _run(self, batch: list[_Slice]) -> None:
        try:
            texts = [t for s in batch for t in s.request.texts[s.start : s.stop]]
            if not texts:
                return
            try:
                rows = await self._batch_fn(texts)
                if len(rows) != len(texts):
                    raise EmbeddingError(f"{len(rows)} rows came back for {len(texts)} texts")
            except Exception as exc:
                for s in batch:
                    s.request.fail(exc)
                return
            except BaseException:
                for s in batch:
                    s.request.fail(EmbeddingUnavailableError("embedding was interrupted"))
                raise
            offset = 0
            for s in batch:
                request = s.request
                part = rows[offset : offset + s.size]
                offset += s.size
                if request.future.done():
                    continue  # cancelled, or failed in another batch: drop its rows
                request.out[s.start] = part
                request.remaining -= 1
                if request.complete:
                    request.future.set_result(request.out)
        finally:
            self._release()

    def _release(self) -> None:
        self._in_flight -= 1
        self._slots.release()

    async def close(self) -> None:
        """Refuse new texts, fail the queued ones (503), let running batches finish."""
        self._closed = True
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
        self._fail_queued(
            EmbeddingUnavailableError("the embedder closed before this text was embedded")
        )
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)

    def _fail_queued(self, exc: BaseException) -> None:
        while self._queue:
            self._queue.popleft().request.fail(exc)
        while self._feeding:
            self._feeding.popleft().fail(exc)
        self._queued_texts = 0
