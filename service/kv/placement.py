"""Placing variants in the host tier: copies in, promotions, pins and zero-copy views.

Copies of megabytes run outside the engine's lock: a variant being copied in is
marked *filling*, so a second reader waits for the first copy instead of making its
own, and the copy is published (made readable) only if the variant is still live.
Every method takes the engine's lock itself unless it says "lock held".
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections import deque
from collections.abc import Callable

import numpy as np

from semcached.index.kv_disk import KvDiskStore
from semcached.index.kv_tiers import HostTier, ShmHandle
from semcached.service.kv.types import Lease, Variant

__all__ = ["HostPlacement"]

log = logging.getLogger(__name__)

_FILL_WAIT_S = 1.0  # how long a reader waits at most for another's promotion, per round


class HostPlacement:
    """The host tier's side of the engine: see the module docstring."""

    def __init__(
        self,
        host: HostTier,
        store: KvDiskStore,
        lock: threading.Lock,
        is_live: Callable[[Variant], bool],
    ) -> None:
        self.host = host
        self._store = store
        self._lock = lock
        self._is_live = is_live
        self._filling: dict[int, threading.Event] = {}  # variants being copied in
        self._unpins: deque[tuple[int, int]] = deque()  # pins of views no longer referenced

    def pinned_view(self, vid: int, offset: int) -> memoryview:
        """A read-only view of a pinned blob that unpins it once its last reference goes."""
        # A numpy array owns the view so that a finaliser can see the last reference go
        # (memoryviews take no weak references); every memoryview of it keeps it alive.
        owner = np.frombuffer(self.host.read(vid), dtype=np.uint8)
        # The finaliser may run on any thread, even one holding the lock: it only queues.
        weakref.finalize(owner, self._unpins.append, (vid, offset))
        return owner.data.toreadonly()

    def drain_unpins(self) -> None:
        """Drop the pins of views whose last reference went (lock held)."""
        while self._unpins:
            vid, offset = self._unpins.popleft()
            self.host.unpin(vid, offset)

    def pin(self, v: Variant) -> ShmHandle | None:
        if not self.host.holds(v.vid):
            return None
        return self.host.pin(v.vid)

    def pin_into(self, lease: Lease, v: Variant) -> ShmHandle:
        handle = self.host.pin(v.vid)
        lease.pins.append((v.vid, handle.offset))
        return handle

    def place(
        self, v: Variant, data: bytes | bytearray | memoryview, *, promotion: bool = False
    ) -> bool:
        """Copy ``data`` into the host tier (best effort: False when it does not fit or
        someone else is copying it in)."""
        with self._lock:
            if v.vid in self._filling:
                return False
            if not self._reserve(v):
                return False
            done = self._filling[v.vid] = threading.Event()
        try:
            self.host.write(v.vid, data)
            return self._publish(v, promotion)
        finally:
            with self._lock:
                del self._filling[v.vid]
            done.set()

    def ensure(self, v: Variant, lease: Lease) -> ShmHandle | None:
        """The variant in the host tier (copied from disk if needed) and pinned under
        ``lease`` in the same step, so no put can demote it in between; None if it
        cannot be placed. Two readers promoting one variant at once: the second waits
        for the first's copy.
        """
        host = self.host
        while True:
            with self._lock:
                if host.holds(v.vid):
                    return self.pin_into(lease, v)
                if not self._is_live(v):
                    return None
                pending = self._filling.get(v.vid)
                if pending is None:
                    if not self._reserve(v):
                        return None
                    done = self._filling[v.vid] = threading.Event()
                    break
            pending.wait(_FILL_WAIT_S)
        try:
            nbytes = v.meta.nbytes

            def copy(blob: memoryview) -> bool:
                if len(blob) != nbytes:  # cannot happen short of a corrupt store
                    raise ValueError(f"stored blob has {len(blob)} bytes, expected {nbytes}")
                host.write(v.vid, blob)
                return True

            copied = self._store.read_with(v.meta.key, copy)
            with self._lock:
                if not copied or not self._is_live(v):
                    host.remove(v.vid)
                    return None
                host.publish(v.vid, v.saved_tokens)
                host.stats.promotions += 1
                return self.pin_into(lease, v)
        finally:
            with self._lock:
                del self._filling[v.vid]
            done.set()

    def _reserve(self, v: Variant) -> bool:
        """An invisible host extent for ``v`` (demoting others); False if none (lock held)."""
        self.drain_unpins()
        if not self._is_live(v):
            return False  # deleted or evicted meanwhile
        try:
            return self.host.reserve(v.vid, v.meta.nbytes) is not None
        except Exception:
            log.exception("could not place a chunk in the host tier")
            return False

    def _publish(self, v: Variant, promotion: bool) -> bool:
        with self._lock:
            if not self._is_live(v):
                self.host.remove(v.vid)
                return False
            self.host.publish(v.vid, v.saved_tokens)
            if promotion:
                self.host.stats.promotions += 1
            return True
