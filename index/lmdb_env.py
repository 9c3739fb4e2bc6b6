"""An LMDB environment with named databases, durable commits and a growing map.

LMDB fixes the size of its memory map when the environment opens. Starting small
and doubling on ``MapFullError`` keeps a fresh daemon's footprint small while
still allowing large stores, up to ``max_map_bytes``; at the cap the write fails
with :class:`StoreFullError` and the caller (a cache engine) evicts instead.

``mdb_env_set_mapsize`` may only run while this process has no open transaction,
so every transaction passes a shared gate and a resize takes it exclusively.
Writes are serialised by LMDB itself; taking a Python lock first keeps waiting
writers off LMDB's mutex, where a resize could not reach them.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import lmdb

from semcached.errors import SemcachedError
from semcached.index.rwlock import SharedExclusiveLock

__all__ = ["LmdbEnvironment", "StoreFullError"]

log = logging.getLogger(__name__)

T = TypeVar("T")


class StoreFullError(SemcachedError):
    """A write needs more space than the configured map-size cap allows."""


class LmdbEnvironment:
    """One LMDB environment (a directory) and its named databases.

    Commits are durable (``sync=True``): when :meth:`write` returns, the data is
    on disk and survives ``kill -9`` and power loss as far as the disk honours fsync.
    All methods are safe to call from several threads.
    """

    def __init__(
        self,
        path: Path,
        *,
        initial_map_bytes: int,
        max_map_bytes: int,
        max_dbs: int = 32,
        max_readers: int = 256,
    ) -> None:
        if initial_map_bytes > max_map_bytes:
            raise ValueError("initial_map_bytes exceeds max_map_bytes")
        path.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.max_map_bytes = max_map_bytes
        self._env = lmdb.open(
            str(path),
            map_size=initial_map_bytes,
            max_dbs=max_dbs,
            max_readers=max_readers,
            sync=True,
            metasync=True,
            readahead=False,  # random access from an index; readahead only evicts page cache
            meminit=False,
        )
        # Re-opening an environment that grew earlier: adopt its persisted size.
        self._env.set_mapsize(0)
        self._gate = SharedExclusiveLock()
        self._write_lock = threading.Lock()
        self._dbs: dict[bytes, Any] = {}
        self._closed = False

    # -- databases -----------------------------------------------------------------

    def database(self, name: bytes, *, integer_keys: bool = False) -> Any:
        """Open (creating if needed) the named database; the handle is cached."""
        db = self._dbs.get(name)
        if db is None:
            with self._write_lock, self._gate.shared():
                db = self._dbs.get(name)
                if db is None:
                    db = self._env.open_db(name, create=True, integerkey=integer_keys)
                    self._dbs[name] = db
        return db

    # -- transactions --------------------------------------------------------------

    def read(self, fn: Callable[[lmdb.Transaction], T], *, buffers: bool = False) -> T:
        """Run ``fn`` in a read-only transaction (a consistent snapshot).

        With ``buffers`` values come as memoryviews into the map, valid only inside ``fn``
        (no copy: for large values that ``fn`` copies once to where they belong).
        """
        with self._gate.shared():
            if buffers:
                with self._env.begin(buffers=True) as view_txn:
                    return fn(view_txn)
            with self._env.begin() as txn:
                return fn(txn)

    def write(self, fn: Callable[[lmdb.Transaction], T]) -> T:
        """Run ``fn`` in a write transaction and commit it durably.

        On ``MapFullError`` the transaction is aborted, the map doubles (up to the
        cap) and ``fn`` runs again, so ``fn`` must not have side effects outside
        the transaction. Raises :class:`StoreFullError` at the cap.
        """
        with self._write_lock:
            while True:
                try:
                    with self._gate.shared(), self._env.begin(write=True) as txn:
                        return fn(txn)
                except lmdb.MapFullError:
                    self._grow()

    def _grow(self) -> None:
        current = self.map_bytes
        if current >= self.max_map_bytes:
            raise StoreFullError(
                f"LMDB map at {self.path} is full at its cap of {self.max_map_bytes} bytes"
            )
        new = min(current * 2, self.max_map_bytes)
        with self._gate.exclusive():
            self._env.set_mapsize(new)
        log.info("grew LMDB map at %s from %d to %d bytes", self.path, current, new)

    # -- housekeeping --------------------------------------------------------------

    @property
    def map_bytes(self) -> int:
        return int(self._env.info()["map_size"])

    def used_bytes(self) -> int:
        """Bytes of the map in use (last used page times the page size)."""
        info = self._env.info()
        return int((info["last_pgno"] + 1) * self._env.stat()["psize"])

    def sync(self) -> None:
        """Flush to disk (commits already do; this covers non-durable modes)."""
        self._env.sync(True)

    def close(self) -> None:
        """Flush and close; idempotent. No transaction may be running."""
        if self._closed:
            return
        with self._write_lock, self._gate.exclusive():
            self._env.sync(True)
            self._env.close()
            self._closed = True
