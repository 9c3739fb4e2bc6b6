"""Durable-write baselines and concurrent chunk puts, for bench/kv_store.py.

The baselines write the same blob sizes to the filesystem of the daemon's data
directory, each blob durable before the next starts:

- **write+fdatasync**: a plain Python loop, ``os.write`` of a blob to a file then
  ``os.fdatasync`` (the page cache, then the disk);
- **dd direct**: ``dd oflag=direct,dsync`` of the same sizes (no page cache, each
  block on disk before the next).

Throughput is the blob bytes over the wall time of the whole run (not a median per
blob), so that concurrent puts, whose commits overlap, compare with it directly.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

__all__ = ["dd_direct", "fdatasync_loop", "parallel_puts"]


def fdatasync_loop(directory: Path, blobs: Sequence[np.ndarray]) -> float:
    """MB/s of writing ``blobs`` one after another to a new file, each fdatasync'd."""
    path = directory / "durable-write.bin"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        start = time.perf_counter()
        for blob in blobs:
            view = memoryview(blob).cast("B")
            while view:
                view = view[os.write(fd, view) :]
            os.fdatasync(fd)
        elapsed = time.perf_counter() - start
    finally:
        os.close(fd)
        path.unlink()
    return sum(b.nbytes for b in blobs) / elapsed / 1e6


def dd_direct(directory: Path, nbytes: int, count: int) -> float | None:
    """MB/s of ``dd`` writing ``count`` blocks of ``nbytes`` with O_DIRECT and O_DSYNC;
    None when dd is missing or the filesystem refuses O_DIRECT (tmpfs)."""
    if shutil.which("dd") is None:
        return None
    path = directory / "durable-dd.bin"
    argv = ["dd", "if=/dev/zero", f"of={path}", f"bs={nbytes}", f"count={count}",
            "oflag=direct,dsync"]  # fmt: skip
    try:
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
    finally:
        path.unlink(missing_ok=True)
    found = re.search(r"(\d+) bytes .* copied, ([0-9.,e-]+) s", done.stderr)
    if done.returncode != 0 or found is None:
        return None
    return int(found[1]) / float(found[2].replace(",", ".")) / 1e6


def parallel_puts(put: Callable[[int], object], count: int, concurrency: int) -> float:
    """Seconds to run ``put(i)`` for ``i`` in ``range(count)`` from ``concurrency`` threads
    (each taking the next index as it is free)."""
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        start = time.perf_counter()
        list(pool.map(put, range(count)))
        return time.perf_counter() - start
