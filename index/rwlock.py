"""A shared/exclusive (reader/writer) lock that does not starve its writers.

Many holders may share it; an exclusive holder has it alone. A waiting exclusive
request blocks new shared holders, so a steady stream of readers (index searches,
LMDB reads) cannot postpone a writer (an index mutation, a map resize) forever.

Not reentrant: a thread that holds it in either mode must not ask for it again,
or it deadlocks as soon as an exclusive request is waiting.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["SharedExclusiveLock"]


class SharedExclusiveLock:
    """Acquire with ``with lock.shared():`` or ``with lock.exclusive():``.

    Acquire and release are O(1) apart from waiting; safe from any number of threads.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._shared = 0
        self._exclusive_waiting = 0
        self._exclusive = False

    @contextmanager
    def shared(self) -> Iterator[None]:
        with self._cond:
            # A waiting exclusive request goes first so that steady readers cannot starve it.
            while self._exclusive or self._exclusive_waiting:
                self._cond.wait()
            self._shared += 1
        try:
            yield
        finally:
            self._release_shared()

    @contextmanager
    def shared_nowait(self) -> Iterator[bool]:
        """Shared, if that needs no waiting: yields True holding it, else False at
        once (an exclusive holder or waiter). For an event loop that must not block."""
        with self._cond:
            acquired = not (self._exclusive or self._exclusive_waiting)
            if acquired:
                self._shared += 1
        try:
            yield acquired
        finally:
            if acquired:
                self._release_shared()

    def _release_shared(self) -> None:
        with self._cond:
            self._shared -= 1
            if self._shared == 0:
                self._cond.notify_all()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cond:
            self._exclusive_waiting += 1
            while self._exclusive or self._shared:
                self._cond.wait()
            self._exclusive_waiting -= 1
            self._exclusive = True
        try:
            yield
        finally:
            with self._cond:
                self._exclusive = False
                self._cond.notify_all()
