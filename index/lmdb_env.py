"""An LMDB environment with named databases, durable commits and a growing map.

LMDB fixes the size of its memory map when the environment opens. Starting small
and doubling on ``MapFullError`` keeps a fresh daemon's footprint small while
still allowing large stores, up to ``max_map_bytes``; at the cap the write fails
with :class:`StoreFullError` and the caller (a cache engine) evicts instead.

Deleting needs free pages too: LMDB copies every page it changes, and reuses a freed
page only once a later transaction has committed (the previous snapshot still
references it). So a map filled to the last page could not even delete, and a cache
at its cap could neither evict nor purge. Ordinary writes therefore must leave
``reserve_bytes`` of the map free (counted from the pages the databases occupy, which
is exact and does not drift); writes that *reclaim* space (deletes) may use the
reserve. The reserve holds as long as no single transaction frees or allocates more
than a fraction of it, so stores size their batches by :attr:`reserve_bytes`.

A full filesystem (``ENOSPC``, a quota) is reported as :class:`StoreFullError` too,
with ``disk=True``: the failed commit is rolled back whole, nothing committed is
lost, and reads go on from the map. Deletes need new file blocks as well when the
free pages inside the file run out, so the environment keeps a *ballast* file
(``reserve.ballast``, the reserve up to 2 MiB) allocated beside the data: when a delete
finds the filesystem full, the ballast is released and the delete tried again, and
once the deletes' freed pages are reused the store works within its own file. Before
each ordinary write a short ballast takes back what the filesystem has free, up to its
size, so deletes come before inserts.

``mdb_env_set_mapsize`` may only run while this process has no open transaction,
so every transaction passes a shared gate and a resize takes it exclusively.
Writes are serialised by LMDB itself; taking a Python lock first keeps waiting
writers off LMDB's mutex, where a resize could not reach them.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import lmdb

from semcached.errors import SemcachedError
from semcached.index.rwlock import SharedExclusiveLock

__all__ = ["LmdbEnvironment", "StoreFullError", "default_reserve_bytes"]

log = logging.getLogger(__name__)

T = TypeVar("T")


_KiB = 1 << 10
_MiB = 1 << 20

# How a full filesystem shows in LMDB's messages: its own errno, or EIO for a short
# write ("short write, filesystem full?" in mdb_page_flush), told apart by statvfs.
_DISK_FULL_ERRORS = tuple(os.strerror(e) for e in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG))
_SHORT_WRITE = os.strerror(errno.EIO)
_NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
_BALLAST = "reserve.ballast"


class StoreFullError(SemcachedError):
    """A write needs more space than the store has: the map is at its cap (or the write
    would leave less than the reserve that deletes need), or, with ``disk``, the
    filesystem is full. Nothing of the failed transaction was written."""

    def __init__(self, message: str, *, disk: bool = False) -> None:
        super().__init__(message)
        self.disk = disk


def default_reserve_bytes(max_map_bytes: int) -> int:
    """The reserve of a map capped at ``max_map_bytes``: a sixteenth, 256 KiB to 64 MiB.

    The floor covers what every transaction copies whatever its size (the root pages
    of each database, the main database, the free list: some ten pages) several times
    over, and the pages that concurrent readers keep from reuse for a moment.
    """
    return min(max(max_map_bytes // 16, 256 * _KiB), 64 * _MiB)


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
        reserve_bytes: int | None = None,
    ) -> None:
        """``reserve_bytes``: what ordinary writes leave free for deletes (default
        :func:`default_reserve_bytes`); under half the cap."""
        if initial_map_bytes > max_map_bytes:
            raise ValueError("initial_map_bytes exceeds max_map_bytes")
        reserve = default_reserve_bytes(max_map_bytes) if reserve_bytes is None else reserve_bytes
        if not 0 <= reserve <= max_map_bytes // 2:
            raise ValueError("reserve_bytes must be between 0 and half of max_map_bytes")
        path.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.max_map_bytes = max_map_bytes
        self.reserve_bytes = reserve
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
        self._psize = int(self._env.stat()["psize"])
        self._ballast = path / _BALLAST
        self._ballast_bytes = min(reserve, 2 * _MiB)
        self._ballast_held = 0  # bytes allocated to it now
        self._fill_ballast()
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

    def write(self, fn: Callable[[lmdb.Transaction], T], *, reclaim: bool = False) -> T:
        """Run ``fn`` in a write transaction and commit it durably.

        On ``MapFullError`` the transaction is aborted, the map doubles (up to the
        cap) and ``fn`` runs again, so ``fn`` must not have side effects outside
        the transaction. Raises :class:`StoreFullError` at the cap, when an ordinary
        write would leave less than :attr:`reserve_bytes` free, and when the
        filesystem is full. ``reclaim``: the write frees space (it deletes), so it
        may use the reserve.
        """
        with self._write_lock:
            if not reclaim:
                self._fill_ballast()
            while True:
                try:
                    with self._gate.shared(), self._env.begin(write=True) as txn:
                        result = fn(txn)
                        if not reclaim:
                            self._keep_reserve(txn)
                except lmdb.MapFullError:
                    self._grow()
                    continue
                except lmdb.Error as exc:
                    if not self._disk_full(exc):
                        raise
                    if reclaim and self._release_ballast():
                        continue
                    raise StoreFullError(
                        f"the filesystem holding {self.path} is full ({exc})", disk=True
                    ) from exc
                return result

    def _fill_ballast(self) -> None:
        """Grow the ballast file back to its size, or to what the filesystem has left:
        on a full filesystem, room for deletes comes before room for inserts."""
        if self._ballast_held >= self._ballast_bytes:
            return
        want = self._ballast_bytes
        try:
            fd = os.open(self._ballast, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                try:
                    os.posix_fallocate(fd, 0, want)
                except OSError as exc:
                    if exc.errno not in _NO_SPACE:
                        raise
                    fs = os.fstatvfs(fd)
                    held = os.fstat(fd).st_blocks * 512  # what an earlier run left
                    room = fs.f_bavail * fs.f_frsize // self._psize * self._psize
                    want = min(want, held + room)
                    if want <= held:
                        self._ballast_held = held
                        return
                    os.posix_fallocate(fd, 0, want)
            finally:
                os.close(fd)
        except OSError as exc:
            if exc.errno not in _NO_SPACE:
                log.warning("cannot keep a ballast file at %s: %s", self._ballast, exc)
                self._ballast_bytes = 0  # the filesystem cannot do it: stop trying
            return
        self._ballast_held = want

    def _release_ballast(self) -> bool:
        """Give the ballast's blocks back to the filesystem; False if there were none."""
        if not self._ballast_held:
            return False
        os.truncate(self._ballast, 0)
        log.warning(
            "the filesystem holding %s is full: released %d bytes of ballast for deletes",
            self.path,
            self._ballast_held,
        )
        self._ballast_held = 0
        return True

    def _keep_reserve(self, txn: lmdb.Transaction) -> None:
        """Refuse (abort) an ordinary write that leaves less than the reserve free."""
        limit = self.max_map_bytes - self.reserve_bytes
        if self.map_bytes <= limit:  # the pages in use cannot exceed the map
            return
        used = self._live_pages(txn) * self._psize
        if used > limit:
            raise StoreFullError(
                f"LMDB map at {self.path} is full: {used} bytes in use, and "
                f"{self.reserve_bytes} of its cap of {self.max_map_bytes} are kept for deletes"
            )

    def _live_pages(self, txn: lmdb.Transaction) -> int:
        """Pages the databases occupy as ``txn`` sees them (the main database as committed)."""
        pages = _pages(self._env.stat())
        for db in list(self._dbs.values()):
            pages += _pages(txn.stat(db))
        return pages

    def _disk_full(self, exc: lmdb.Error) -> bool:
        message = str(exc)
        if any(text in message for text in _DISK_FULL_ERRORS):
            return True
        if _SHORT_WRITE in message:
            try:
                fs = os.statvfs(self.path)
            except OSError:
                return False
            return fs.f_bavail * fs.f_frsize < self.reserve_bytes
        return False

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
    def page_bytes(self) -> int:
        """LMDB's page size."""
        return self._psize

    @property
    def map_bytes(self) -> int:
        return int(self._env.info()["map_size"])

    def used_bytes(self) -> int:
        """Bytes of the map in use (last used page times the page size)."""
        info = self._env.info()
        return int((info["last_pgno"] + 1) * self._psize)

    def capacity_bytes(self) -> int:
        """The most the databases can hold: the cap less the reserve, or, when the
        filesystem has less room, the data file plus the filesystem's free space (a
        write bigger than this cannot succeed, however much is evicted)."""
        capacity = self.max_map_bytes - self.reserve_bytes
        try:
            fs = os.statvfs(self.path)
            on_disk = (self.path / "data.mdb").stat().st_size + fs.f_bavail * fs.f_frsize
        except OSError:
            return capacity
        return min(capacity, on_disk)

    def live_bytes(self) -> int:
        """Bytes the databases occupy (pages in their trees): what the reserve is
        measured against; freed pages waiting for reuse are not counted."""
        return self.read(self._live_pages) * self._psize

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


def _pages(stat: Any) -> int:  # lmdb's stat dict
    return int(stat["branch_pages"] + stat["leaf_pages"] + stat["overflow_pages"])
