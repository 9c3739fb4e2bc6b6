"""The daemon's data directory: an exclusive lock, the LMDB environment, a format version.

Layout::

    <data_dir>/LOCK        flock()ed by the one daemon using the directory
    <data_dir>/lmdb/       the LMDB environment (documents, vectors, chunk blobs)

Two daemons on one directory would each hold their own in-memory index over the
same LMDB and diverge silently, so the second one is refused at start.
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

import lmdb

from semcached.errors import SemcachedError
from semcached.index.lmdb_env import LmdbEnvironment

__all__ = ["FORMAT_VERSION", "DataDirLockedError", "DataDirectory", "DataFormatError"]

FORMAT_VERSION = 1
_META_DB = b"meta"


class DataDirLockedError(SemcachedError):
    """Another process holds the data directory."""


class DataFormatError(SemcachedError):
    """The data directory was written by an incompatible version."""


class DataDirectory:
    """Open with :meth:`open`, close with :meth:`close`; ``env`` is valid in between."""

    def __init__(self, path: Path, *, initial_map_bytes: int, max_map_bytes: int) -> None:
        self.path = path
        self._initial_map_bytes = initial_map_bytes
        self._max_map_bytes = max_map_bytes
        self._lock_fd: int | None = None
        self._env: LmdbEnvironment | None = None

    @property
    def env(self) -> LmdbEnvironment:
        if self._env is None:
            raise RuntimeError(f"data directory {self.path} is not open")
        return self._env

    def open(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        self._lock()
        try:
            self._env = LmdbEnvironment(
                self.path / "lmdb",
                initial_map_bytes=self._initial_map_bytes,
                max_map_bytes=self._max_map_bytes,
            )
            self._check_format()
        except BaseException:
            self.close()
            raise

    def _lock(self) -> None:
        fd = os.open(self.path / "LOCK", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise DataDirLockedError(
                f"data directory {self.path} is in use by another semcached process"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd

    def _check_format(self) -> None:
        env = self.env
        meta = env.database(_META_DB)

        def check(txn: lmdb.Transaction) -> int:
            stored = txn.get(b"format_version", db=meta)
            if stored is None:
                txn.put(b"format_version", str(FORMAT_VERSION).encode(), db=meta)
                txn.put(b"created_at", str(time.time()).encode(), db=meta)
                return FORMAT_VERSION
            return int(stored)

        version = env.write(check)
        if version != FORMAT_VERSION:
            raise DataFormatError(
                f"data directory {self.path} has format version {version}; "
                f"this semcached reads version {FORMAT_VERSION}"
            )

    def close(self) -> None:
        """Flush and close LMDB, then release the lock; idempotent."""
        if self._env is not None:
            self._env.close()
            self._env = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor releases the flock
            self._lock_fd = None
