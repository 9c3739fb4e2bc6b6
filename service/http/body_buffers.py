"""Buffers for chunk put bodies, kept for reuse once a put is done with them.

A body is read into one anonymous mapping of its declared length (see
:func:`~semcached.service.http.bodies.read_exactly`). The kernel commits a fresh
mapping's pages as they are first written, zeroing each: on a small VM that first
touch, not the copy, is most of the cost of receiving a body (about 1 GB/s into a
fresh mapping against 5 GB/s into one already touched). So a buffer whose put is done
goes back here, and the next put of a similar size is read into it: at most
``idle_bytes`` of buffers wait, the least recently returned dropped first.

A buffer is reused only when nothing refers to it any more (no view, slice or array
made from the body survives): :meth:`BodyBuffers.give_back` checks that and drops a
buffer that is still referred to, so reuse never changes bytes under a reader.
Loop-only: take and give back on the event loop thread.
"""

from __future__ import annotations

import mmap
from collections import OrderedDict

__all__ = ["BodyBuffers"]

# A buffer serves a body of at least this fraction of its size, so that a small put
# does not pin a large buffer while large ones allocate anew.
_MIN_FILL = 2


class BodyBuffers:
    """Idle body buffers, at most ``idle_bytes`` of them (0: none are kept)."""

    def __init__(self, idle_bytes: int) -> None:
        if idle_bytes < 0:
            raise ValueError("idle_bytes must not be negative")
        self.idle_bytes = idle_bytes
        self._idle: OrderedDict[int, mmap.mmap] = OrderedDict()  # by id, oldest first
        self._held = 0
        self.reused = 0  # buffers handed out again (read for statistics and tests)

    @property
    def held_bytes(self) -> int:
        """The bytes of the buffers waiting for reuse."""
        return self._held

    def take(self, length: int) -> mmap.mmap:
        """A buffer of at least ``length`` bytes (``length`` > 0): an idle one of at most
        twice that size when there is one, else a fresh mapping."""
        best: mmap.mmap | None = None
        for buffer in self._idle.values():
            size = len(buffer)
            if length <= size <= length * _MIN_FILL and (best is None or size < len(best)):
                best = buffer
        if best is None:
            return mmap.mmap(-1, length)  # anonymous: pages are committed as written
        del self._idle[id(best)]
        self._held -= len(best)
        self.reused += 1
        return best

    def give_back(self, view: memoryview) -> None:
        """Release ``view`` (a body from :meth:`take`'s buffer) and keep its buffer for
        reuse, unless something else still refers to the buffer or it does not fit."""
        buffer = view.obj
        try:
            view.release()
        except BufferError:  # an array or view made from the body is alive
            return
        if not isinstance(buffer, mmap.mmap) or buffer.closed:
            return
        size = len(buffer)
        try:
            buffer.resize(size)  # refused while any export (a slice too) is alive
        except (BufferError, OSError, ValueError, SystemError):
            return
        if size > self.idle_bytes:
            buffer.close()
            return
        while self._held + size > self.idle_bytes:
            _, oldest = self._idle.popitem(last=False)
            self._held -= len(oldest)
            oldest.close()
        self._idle[id(buffer)] = buffer
        self._held += size

    def close(self) -> None:
        """Unmap every idle buffer."""
        for buffer in self._idle.values():
            buffer.close()
        self._idle.clear()
        self._held = 0
