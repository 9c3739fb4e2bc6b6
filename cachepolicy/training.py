"""The one background thread per process in which learned eviction policies label
and fit: their request paths only hand it work and swap in its results."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

__all__ = ["training_worker"]

_worker: ThreadPoolExecutor | None = None
_worker_lock = threading.Lock()


def training_worker() -> ThreadPoolExecutor:
    """The shared worker, started on first use."""
    global _worker  # noqa: PLW0603  (one lazily started worker per process)
    with _worker_lock:
        if _worker is None:
            _worker = ThreadPoolExecutor(1, thread_name_prefix="semcached-onebit")
        return _worker
