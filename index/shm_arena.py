"""A shared-memory arena: one tmpfs file, mapped once, holding blobs at page-aligned extents.

The host-memory tier of the chunk KV cache keeps its blobs here so that a client
process on the same host can map the same file read-only and read a blob without a
copy (see :mod:`semcached.clients.shm`). The daemon tells the client the segment
name, an offset and a length.

Space management is :class:`~semcached.index.extents.ExtentAllocator` over whole
pages (best fit, O(log n) per call).

Memory is reserved when an extent is handed out (``posix_fallocate``) and given back
to the tmpfs when it is freed (``MADV_REMOVE`` punches a hole). Writing into a sparse
shared map on a full tmpfs (Docker's default 64 MB ``/dev/shm``) raises SIGBUS and
kills the process; reserving first turns that into a clean :class:`ArenaError`.

Not thread-safe: the engine serialises every call on one lock. The arena also knows
nothing about readers in other processes: a client that still reads an extent after
it was freed sees zeros or the next blob stored there, so the engine must only free
what no client may still be reading.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import mmap
import os
import re
import secrets
import weakref
from pathlib import Path
from types import TracebackType
from typing import Final, Self

from semcached.errors import SemcachedError
from semcached.index.extents import MAX_UNITS, ExtentAllocator

__all__ = ["PAGE_SIZE", "ArenaError", "ShmArena"]

log = logging.getLogger(__name__)

#: Extent granularity: offsets and sizes are multiples of it (4096, or the OS page if larger).
PAGE_SIZE: Final[int] = max(4096, mmap.PAGESIZE)


class ArenaError(SemcachedError):
    """The arena cannot do what was asked: the shm filesystem is full, or it is closed."""


def _release(fd: int, path: Path, owner: int) -> None:
    """Close the descriptor and unlink the file; runs once, from close() or at GC/exit.

    A forked child that exits normally must not unlink its parent's segment.
    """
    try:
        os.close(fd)
    finally:
        if os.getpid() == owner:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


class ShmArena:
    """One shared-memory segment (a file in a tmpfs such as /dev/shm) holding blobs at
    page-aligned extents.

    The file is created ``O_CREAT | O_EXCL`` with ``mode`` (default ``0o600``, set
    exactly, whatever the umask): a client running as the same user can map it, other
    users cannot read the cached KV. Where the client runs as another uid (a sidecar),
    pass e.g. ``0o640`` and share a group. The capacity is rounded down to whole pages;
    the file is sparse until extents are allocated. The segment is unlinked by
    :meth:`close`, at garbage collection or at interpreter exit; after ``kill -9``
    :meth:`remove_stale` cleans it up at the next start.

    Not thread-safe (the caller holds a lock around every call).
    """

    def __init__(
        self,
        capacity: int,
        *,
        directory: Path = Path("/dev/shm"),
        prefix: str = "semcached",
        mode: int = 0o600,
    ) -> None:
        pages = capacity // PAGE_SIZE
        if pages < 1:
            raise ValueError(f"capacity {capacity} is below one page ({PAGE_SIZE} bytes)")
        if pages > MAX_UNITS:
            raise ValueError(f"capacity {capacity} exceeds {MAX_UNITS} pages")
        if "/" in prefix or not prefix:
            raise ValueError(f"bad segment prefix {prefix!r}")
        self.capacity = pages * PAGE_SIZE
        self.name = f"{prefix}-{os.getpid()}-{secrets.token_hex(4)}"
        self.path = directory / self.name
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
        except OSError as e:
            raise ArenaError(f"cannot create shared-memory segment {self.path}: {e}") from e
        self._finalizer = weakref.finalize(self, _release, fd, self.path, os.getpid())
        try:
            os.fchmod(fd, mode)
            os.ftruncate(fd, self.capacity)
            self._map: mmap.mmap | None = mmap.mmap(fd, self.capacity)  # MAP_SHARED, RW
        except OSError as e:
            self._finalizer()
            raise ArenaError(f"cannot map shared-memory segment {self.path}: {e}") from e
        self._fd = fd
        self._extents = ExtentAllocator(self.capacity, PAGE_SIZE)

    # -- accounting ----------------------------------------------------------------

    @property
    def used_bytes(self) -> int:
        """Bytes in allocated extents (each rounded up to whole pages)."""
        return self._extents.used_bytes

    @property
    def free_bytes(self) -> int:
        """Bytes not allocated, whether contiguous or not."""
        return self._extents.free_bytes

    @property
    def closed(self) -> bool:
        return self._map is None

    def largest_free(self) -> int:
        """Bytes in the largest free extent (the largest allocation that can succeed). O(log n)."""
        return self._extents.largest_free()

    def extent_size(self, offset: int) -> int:
        """Size in bytes of the allocated extent at ``offset``; KeyError if there is none. O(1)."""
        size = self._extents.size_of(offset)
        if size is None:
            raise KeyError(f"no allocated extent at offset {offset}")
        return size

    # -- allocation ----------------------------------------------------------------

    def allocate(self, nbytes: int) -> int | None:
        """Reserve ``nbytes`` (rounded up to pages) and return the extent's offset.

        Best fit: the smallest free extent that is large enough, the lowest offset
        among equals; its remainder stays free. Returns None when no contiguous free
        extent is large enough (the caller evicts and retries). Raises
        :class:`ArenaError` when the tmpfs cannot back the extent. O(log n).
        """
        mapped = self._require_open()
        offset = self._extents.allocate(nbytes)
        if offset is None:
            return None
        size = self._extents.size_of(offset)
        assert size is not None
        try:
            os.posix_fallocate(self._fd, offset, size)
        except OSError as e:
            self._free(mapped, offset)
            if e.errno == errno.ENOSPC:
                raise ArenaError(
                    f"the shared-memory filesystem holding {self.path} is out of space "
                    f"({size} bytes requested, arena capacity {self.capacity}): enlarge it "
                    "(docker run --shm-size, a larger tmpfs or emptyDir sizeLimit) "
                    "or lower the host-memory tier budget"
                ) from e
            raise ArenaError(f"cannot reserve {size} bytes in {self.path}: {e}") from e
        return offset

    def free(self, offset: int) -> None:
        """Return the extent at ``offset``, merged with free neighbours; its memory goes back
        to the tmpfs. KeyError for an offset that is not an allocated extent. O(log n)."""
        self._free(self._require_open(), offset)

    def _free(self, mapped: mmap.mmap, offset: int) -> None:
        size = self._extents.free(offset)
        # Punch a hole so the tmpfs pages are released; a file system without hole
        # punching merely keeps them (the next allocate reuses them).
        with contextlib.suppress(OSError):
            mapped.madvise(mmap.MADV_REMOVE, offset, size)

    # -- access --------------------------------------------------------------------

    def view(self, offset: int, nbytes: int) -> memoryview:
        """A writable view of the first ``nbytes`` of the extent at ``offset``. O(1), no copy.

        KeyError if ``offset`` is not an allocated extent, ValueError if ``nbytes`` is
        negative or larger than the extent. Release views before :meth:`close`.
        """
        mapped = self._require_open()
        size = self._extents.size_of(offset)
        if size is None:
            raise KeyError(f"no allocated extent at offset {offset}")
        if not 0 <= nbytes <= size:
            raise ValueError(f"{nbytes} bytes do not fit the {size}-byte extent at {offset}")
        return memoryview(mapped)[offset : offset + nbytes]

    def write(self, offset: int, data: bytes | bytearray | memoryview, at: int = 0) -> None:
        """Copy ``data`` into the extent at ``offset``, ``at`` bytes from its start, with
        ``pwrite``.

        Faster than a copy through :meth:`view` into fresh pages: the kernel fills the
        page cache directly, where a copy through the map first takes a page fault per
        page; and nothing is mapped into this process until it is read. KeyError /
        ValueError as for :meth:`view`. O(len(data)).
        """
        self._require_open()
        size = self._extents.size_of(offset)
        if size is None:
            raise KeyError(f"no allocated extent at offset {offset}")
        source = memoryview(data).cast("B")
        if at < 0 or at + len(source) > size:
            raise ValueError(
                f"{len(source)} bytes at {at} do not fit the {size}-byte extent at {offset}"
            )
        written = 0
        while written < len(source):
            written += os.pwrite(self._fd, source[written:], offset + at + written)

    def _require_open(self) -> mmap.mmap:
        if self._map is None:
            raise ArenaError(f"shared-memory arena {self.name} is closed")
        return self._map

    # -- life cycle ----------------------------------------------------------------

    def close(self) -> None:
        """Unmap and unlink the segment. Idempotent.

        Views still exported keep the mapping alive: it is then left to the garbage
        collector (unmapped when the last view goes) and the file is unlinked anyway,
        so its memory is freed once the last mapping, here or in a client, is gone.
        """
        mapped, self._map = self._map, None
        if mapped is not None:
            try:
                mapped.close()
            except BufferError:
                log.warning(
                    "shm arena %s closed while views are still exported; "
                    "the mapping is released when they are",
                    self.name,
                )
        self._finalizer()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @staticmethod
    def remove_stale(directory: Path, prefix: str) -> list[str]:
        """Unlink segments ``{prefix}-{pid}-{hex}`` in ``directory`` whose process is gone.

        The daemon calls this at start: a ``kill -9`` leaves its segment behind. A
        process that exists but belongs to another user counts as alive. A recycled
        pid keeps a stale segment until that process ends too. Segments in a directory
        shared across pid namespaces (containers) must use distinct prefixes. Returns
        the names removed. O(files in directory).
        """
        pattern = re.compile(re.escape(prefix) + r"-(\d+)-[0-9a-f]{8}")
        removed: list[str] = []
        try:
            entries = list(directory.iterdir())
        except FileNotFoundError:
            return removed
        for entry in entries:
            match = pattern.fullmatch(entry.name)
            if match is None or _alive(int(match.group(1))):
                continue
            try:
                entry.unlink()
            except FileNotFoundError:
                continue
            log.info("removed stale shared-memory segment %s", entry)
            removed.append(entry.name)
        return sorted(removed)

    # -- checking ------------------------------------------------------------------

    def _check(self) -> None:
        """Invariants of the allocator (extents tile the segment exactly). O(n)."""
        self._extents._check()


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
