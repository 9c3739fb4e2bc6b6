"""Group commit: merge concurrent writers' batches into one durable transaction.

A durable LMDB commit costs an fsync (a millisecond or more on real disks), and LMDB
runs one write transaction at a time, so writers that each commit alone queue behind
each other's fsyncs. Here the first writer to arrive becomes the *leader*: it takes
the queued requests (its own and those that arrive while the previous commit ran),
up to ``max_items`` items or ``max_bytes`` bytes, commits them in one transaction
and wakes their owners. Any waiting writer whose request is not yet committed leads
the next group as soon as no commit is running, so no thread is dedicated to it.

Guarantees: ``submit`` returns only after the transaction holding its items has
committed; if that transaction fails, every request in it raises the same exception
(the transaction is all or nothing, so none of that group's items were written).
Requests commit in arrival order. Latency is at most about two commits plus queueing.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

__all__ = ["GroupCommitter"]

T = TypeVar("T")


class _Request(Generic[T]):
    __slots__ = ("done", "error", "items", "nbytes")

    def __init__(self, items: Sequence[T], nbytes: int) -> None:
        self.items = items
        self.nbytes = nbytes
        self.done = False
        self.error: BaseException | None = None


class GroupCommitter(Generic[T]):
    """Run ``commit(items)`` for merged groups of submitted items; thread-safe.

    ``commit`` must apply all of its items in one atomic, durable transaction.
    A single request larger than the bounds is committed alone, never split.
    """

    def __init__(
        self,
        commit: Callable[[list[T]], None],
        *,
        max_items: int = 256,
        max_bytes: int = 16 << 20,
    ) -> None:
        if max_items < 1 or max_bytes < 1:
            raise ValueError("max_items and max_bytes must be positive")
        self._commit = commit
        self._max_items = max_items
        self._max_bytes = max_bytes
        self._cond = threading.Condition(threading.Lock())
        self._queue: deque[_Request[T]] = deque()
        self._leading = False
        self.commits = 0  # transactions run (each one fsync); read for statistics
        self.requests = 0  # requests committed or failed

    def submit(self, items: Sequence[T], nbytes: int = 0) -> None:
        """Commit ``items`` (about ``nbytes`` large) durably, batched with other callers."""
        request = _Request(items, nbytes)
        with self._cond:
            self._queue.append(request)
            while not request.done:
                if self._leading:
                    self._cond.wait()
                    continue
                self._leading = True
                group = self._take_group()
                self._cond.release()
                error: BaseException | None = None
                try:
                    self._commit([item for r in group for item in r.items])
                except BaseException as exc:
                    error = exc
                finally:
                    self._cond.acquire()
                for r in group:
                    r.error = error
                    r.done = True
                self.commits += 1
                self.requests += len(group)
                self._leading = False
                self._cond.notify_all()
        if request.error is not None:
            raise request.error

    def _take_group(self) -> list[_Request[T]]:
        """Pop the head request and as many followers as fit the bounds. Lock held."""
        first = self._queue.popleft()
        group = [first]
        count, size = len(first.items), first.nbytes
        while self._queue:
            nxt = self._queue[0]
            if count + len(nxt.items) > self._max_items or size + nxt.nbytes > self._max_bytes:
                break
            group.append(self._queue.popleft())
            count += len(nxt.items)
            size += nxt.nbytes
        return group
