"""Zero-copy reads of KV blobs from the daemon's shared-memory arena (same host only).

The daemon keeps hot KV blobs in a tmpfs file (a *segment*, see
``semcached.index.shm_arena``) and, for a client on the same host, answers with the
segment name, an offset and a length instead of the bytes. :class:`ShmMapper` maps
each segment once, read-only, and hands out memoryviews into it: no copy, no syscall
per read once a segment is mapped. When the segment is not there (another host,
another container without the shared mount, another uid) the caller falls back to
HTTP.

A view is only as stable as the daemon's promise: once the daemon frees or reuses the
extent, the view shows zeros or another blob. This module imports nothing of the
daemon.

:class:`ShmPath` is a client's side of the same-host path: it decides whether to try
it, stages puts in a file the daemon reads, and learns whether the daemon is on this
host at all. It also holds the client's :class:`~semcached.clients.cuda.CudaMapper`
(the same-host path on the GPU: CUDA IPC handles), closed with it.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import secrets
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

from semcached.clients.cuda import CudaMapper
from semcached.clients.kv import ChunkMeta, KvChunk, LeaseInfo, ShmRef, Transfer
from semcached.errors import ApiError, SemcachedError
from semcached.protocol.codes import ErrorCode
from semcached.protocol.headers import KV_STAGED_PREFIX

__all__ = ["InvalidShmRequestError", "ShmError", "ShmMapper", "ShmPath", "ShmUnavailableError"]


class ShmError(SemcachedError):
    """A shared-memory read failed."""


class ShmUnavailableError(ShmError):
    """The segment cannot be mapped here (missing, not readable, empty): read over HTTP."""


class InvalidShmRequestError(ShmError, ValueError):
    """A bad segment name (a path, not a file name) or a range outside the segment."""


class ShmMapper:
    """Maps daemon arena segments read-only and hands out zero-copy views; one mapping per
    segment, reused.

    Thread-safe: the mapping table is guarded by a lock, held while a segment is
    mapped for the first time. A mapping lives until :meth:`release` or :meth:`close`;
    it pins the segment's memory even after the daemon unlinked it, so release the
    segments a daemon no longer names (e.g. after it restarted).
    """

    def __init__(self, directory: Path = Path("/dev/shm")) -> None:
        self.directory = directory
        self._maps: dict[str, mmap.mmap] = {}
        self._lock = threading.Lock()

    def available(self, segment: str) -> bool:
        """Whether the segment file exists here and is readable (one syscall)."""
        return os.access(self._path(segment), os.R_OK)

    def view(self, segment: str, offset: int, length: int) -> memoryview:
        """A read-only view of ``length`` bytes at ``offset`` in ``segment``. No copy.

        The first view of a segment maps the whole file (``O_RDONLY``, ``PROT_READ``,
        ``MAP_SHARED``), later ones reuse the mapping: O(1). Writing into the view
        raises TypeError. Raises :class:`ShmUnavailableError` when the segment cannot
        be mapped, :class:`InvalidShmRequestError` for a bad name or range.
        """
        if offset < 0 or length < 0:
            raise InvalidShmRequestError(f"negative offset {offset} or length {length}")
        mapped = self._mapping(segment)
        if offset + length > len(mapped):
            raise InvalidShmRequestError(
                f"range [{offset}, {offset + length}) lies outside segment {segment!r} "
                f"of {len(mapped)} bytes"
            )
        return memoryview(mapped)[offset : offset + length]

    def release(self, segment: str) -> None:
        """Drop the mapping of one segment, if any (views still exported keep it alive)."""
        with self._lock:
            mapped = self._maps.pop(segment, None)
        if mapped is not None:
            _close(mapped)

    def close(self) -> None:
        """Drop every mapping. A mapping with views still exported is left to the garbage
        collector, which unmaps it when the last view goes. The mapper stays usable."""
        with self._lock:
            maps, self._maps = self._maps, {}
        for mapped in maps.values():
            _close(mapped)

    def _mapping(self, segment: str) -> mmap.mmap:
        path = self._path(segment)
        with self._lock:
            mapped = self._maps.get(segment)
            if mapped is None:
                mapped = _map_read_only(path, segment)
                self._maps[segment] = mapped
            return mapped

    def _path(self, segment: str) -> Path:
        if (
            not segment
            or "/" in segment
            or "\\" in segment
            or "\0" in segment
            or ".." in segment
            or segment == "."
        ):
            raise InvalidShmRequestError(f"bad shared-memory segment name {segment!r}")
        return self.directory / segment


def _map_read_only(path: Path, segment: str) -> mmap.mmap:
    try:
        # O_NONBLOCK: a FIFO planted under the name must not hang the open.
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as e:
        raise ShmUnavailableError(f"shared-memory segment {segment!r} unavailable: {e}") from e
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size == 0:
            raise ShmUnavailableError(f"{segment!r} is not a shared-memory segment")
        size = info.st_size
        # ACCESS_READ maps PROT_READ, MAP_SHARED and makes the buffer read-only in Python,
        # so a write is a TypeError rather than a SIGSEGV.
        return mmap.mmap(fd, size, access=mmap.ACCESS_READ)
    except OSError as e:
        raise ShmUnavailableError(f"cannot map shared-memory segment {segment!r}: {e}") from e
    finally:
        os.close(fd)  # the mapping outlives the descriptor


def _close(mapped: mmap.mmap) -> None:
    with contextlib.suppress(BufferError):  # views exported: it goes with the last of them
        mapped.close()


class ShmPath:
    """The client's side of the same-host path: maps handed-out segments, and learns
    whether the daemon is on this host (its segments exist here) or not."""

    def __init__(self, enabled: bool, directory: Path) -> None:
        self.enabled = enabled
        self.mapper = ShmMapper(directory)
        self.same_host: bool | None = None  # unknown until the first handle
        self.cuda = CudaMapper()  # opens nothing (imports no torch) until a CUDA handle

    def wanted(self, transfer: Transfer) -> bool:
        if transfer == "http":
            return False
        if transfer == "shm":
            return True
        return self.enabled and self.same_host is not False

    def wanted_put(self, transfer: Transfer) -> bool:
        return transfer == "shm" or (
            transfer == "auto" and self.enabled and self.same_host is not False
        )

    @contextlib.contextmanager
    def staged(self, data: bytes | bytearray | memoryview) -> Iterator[str]:
        """Write ``data`` to a fresh file in the shm directory for the daemon to read;
        the file's name inside, removed on leaving. One copy, into page cache."""
        name = f"{KV_STAGED_PREFIX}{os.getpid()}-{secrets.token_hex(8)}"
        path = self.mapper.directory / name
        view = memoryview(data).cast("B")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            written = 0
            while written < len(view):
                written += os.write(fd, view[written:])
            os.close(fd)
            fd = -1
            yield name
        finally:
            if fd >= 0:
                os.close(fd)
            path.unlink(missing_ok=True)

    def put_failed(self, error: ApiError) -> bool:
        """Whether a staged put failed because the daemon cannot see this host's shm
        (then the caller sends the body instead, and later puts do so at once)."""
        if error.code in (ErrorCode.SHM_SOURCE_UNAVAILABLE, ErrorCode.BAD_SOURCE):
            self.same_host = False
            return True
        return False

    def view(self, meta: ChunkMeta, ref: ShmRef, lease: LeaseInfo | None) -> KvChunk | None:
        """The blob as a zero-copy view, or None when the segment is not on this host."""
        if not self.mapper.available(ref.segment):
            self.same_host = False
            return None
        self.same_host = True
        return KvChunk(meta, self.mapper.view(ref.segment, ref.offset, ref.length), lease)

    def close(self) -> None:
        self.mapper.close()
        self.cuda.close()
