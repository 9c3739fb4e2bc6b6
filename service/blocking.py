"""The one way the daemon runs blocking work off its event loop.

The threading contract every engine and route follows:

- The event loop never blocks for more than tens of microseconds. Anything longer (an
  LMDB commit, an index search or insert, an embedding, a blob copy) runs on a worker
  thread through :func:`run_blocking`, and nothing else calls ``run_in_executor``.
- An engine's docstring sorts its public methods into *loop-only* (coroutines, and
  plain methods that touch state owned by the loop: call them on the loop thread) and
  *thread-safe* (plain methods that may block: call them from any thread, e.g. through
  :func:`run_blocking`, or directly from in-process code such as a benchmark).
- hnswlib, faiss, LMDB and the B-skiplist release the GIL, so the worker threads use
  every core.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import Executor
from typing import TypeVar

__all__ = ["run_blocking"]

T = TypeVar("T")


async def run_blocking(executor: Executor | None, fn: Callable[..., T], *args: object) -> T:
    """``fn(*args)`` on one of ``executor``'s threads (the loop's default if None), awaited.

    Two thread wake-ups (about 20-50 us on a small VM): worth it only for work that
    takes longer than that.
    """
    return await asyncio.get_running_loop().run_in_executor(executor, fn, *args)
