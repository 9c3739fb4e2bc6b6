"""Group commit: merge concurrent writers' batches into one durable transaction.

A durable LMDB commit costs an fsync (a millisecond or more on real disks), and LMDB
runs one write transaction at a time, so writers that each commit alone queue behind
each other's fsyncs. Here the first writer to arrive becomes the *leader*: it takes
the queued requests (its own and those that arrive while the previous commit ran),
up to ``max_items`` items or ``max_bytes`` bytes, commits them in one transaction
and wakes their owners. Any waiting writer whose request is not yet committed leads
the next group as soon as no commit is running, so no thread is dedicated to it.

Guarantees: ``submit`` returns only after a transaction holding its items has
committed, and raises only when its own items could not be committed. A transaction
is all or nothing, so when a merged group fails none of it was written; the leader
then commits each request of the group in a transaction of its own, in arrival
order, so one caller's unwritable items (a poisoned record) fail that caller alone
and the others are committed. A fault of the store itself (a full map) fails each of
them with its own exception. Requests commit in arrival order. Latency is at most
about two commits plus queueing, or one commit per request of a group that failed.
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
                try:
                    commits = self._commit_group(group)
                finally:
                    self._cond.acquire()
                for r in group:
                    r.done = True
                self.commits += commits
                self.requests += len(group)
                self._leading = False
                self._cond.notify_all()
        if request.error is not None:
            raise request.error

    def _commit_group(self, group: list[_Request[T]]) -> int:
        """Commit ``group`` in one transaction, or each request alone if that fails;
        set each request's error. The number of transactions run. Lock not held."""
        try:
            self._commit([item for r in group for item in r.items])
            return 1
        except Exception as exc:
            if len(group) == 1:
                group[0].error = exc
                return 1
        except BaseException as exc:  # KeyboardInterrupt and the like: no retries
            for r in group:
                r.error = exc
            return 1
        runs = 1
        for i, r in enumerate(group):  # isolate the failure: only a faulty request fails
            runs += 1
            try:
                self._commit(list(r.items))
            except Exception as exc:
                r.error = exc
            except BaseException as exc:
                for rest in group[i:]:
                    rest.error = exc
                break
        return runs

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
