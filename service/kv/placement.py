"""Placing variants in the host and device tiers: copies in, promotions, pins, views.

Copies of megabytes run outside the engine's lock: a variant being copied in is
marked *filling*, so a second reader waits for the first copy instead of making its
own, and the copy is published (made readable) only if the variant is still live.
Every method takes the engine's lock itself unless it says "lock held".

:class:`Promoter` is that protocol for any :class:`ArenaTier`; :class:`HostPlacement`
fills the host tier from disk, :class:`DevicePlacement` fills a GPU's tier from the
host tier (else disk) once the promotion policy calls the chunk hot, and copies a
demoted chunk down into the host tier when that tier no longer holds it.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

import numpy as np

from semcached.cachepolicy.promotion import PromotionPolicy
from semcached.index.device_arena import DeviceMemoryError
from semcached.index.kv_disk import KvDiskStore
from semcached.index.kv_tiers import CudaHandle, DeviceTier, HostTier, ShmHandle
from semcached.service.kv.types import Lease, Variant

__all__ = ["DevicePlacement", "HostPlacement", "Promoter"]

_Tier = TypeVar("_Tier", HostTier, DeviceTier)
_Handle = TypeVar("_Handle", ShmHandle, CudaHandle)

log = logging.getLogger(__name__)

_FILL_WAIT_S = 1.0  # how long a reader waits at most for another's promotion, per round


class Promoter(Generic[_Tier, _Handle]):
    """Gets variants into one arena tier and pins them under leases (see the module)."""

    def __init__(
        self,
        tier: _Tier,
        store: KvDiskStore,
        lock: threading.Lock,
        is_live: Callable[[Variant], bool],
    ) -> None:
        self.tier: _Tier = tier
        self._store = store
        self._lock = lock
        self._is_live = is_live
        self._filling: dict[int, threading.Event] = {}  # variants being copied in

    def _pin(self, vid: int) -> _Handle:
        raise NotImplementedError

    def _fill(self, v: Variant) -> bool:
        """Copy the variant's bytes into its reserved extent (no lock held); False if
        they are gone."""
        raise NotImplementedError

    def pin_into(self, lease: Lease, v: Variant) -> _Handle:
        """Pin the variant's extent under ``lease`` (lock held)."""
        handle = self._pin(v.vid)
        lease.pins.append((self.tier, v.vid, handle.extent))
        return handle

    def ensure(self, v: Variant, lease: Lease) -> _Handle | None:
        """The variant in this tier (copied in if needed) and pinned under ``lease`` in
        the same step, so no put can demote it in between; None if it cannot be
        placed. Two readers promoting one variant at once: the second waits for the
        first's copy.
        """
        tier = self.tier
        while True:
            with self._lock:
                if tier.holds(v.vid):
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
        copied = False
        try:
            copied = self._fill(v)
            with self._lock:
                if not copied or not self._is_live(v):
                    return None
                tier.publish(v.vid, v.saved_tokens)
                tier.stats.promotions += 1
                return self.pin_into(lease, v)
        finally:
            with self._lock:
                tier.release(v.vid)  # unless published: give the extent back
                del self._filling[v.vid]
            done.set()

    def _reserve(self, v: Variant) -> bool:
        """An invisible extent for ``v`` (demoting others); False if none (lock held)."""
        if not self._is_live(v):
            return False  # deleted or evicted meanwhile
        try:
            return self.tier.reserve(v.vid, v.meta.nbytes) is not None
        except Exception:
            log.exception("could not place a chunk in the %s tier", self.tier.name)
            return False

    def _copy_from_disk(self, v: Variant) -> bool:
        nbytes = v.meta.nbytes

        def copy(blob: memoryview) -> bool:
            if len(blob) != nbytes:  # cannot happen short of a corrupt store
                raise ValueError(f"stored blob has {len(blob)} bytes, expected {nbytes}")
            self.tier.write(v.vid, blob)
            return True

        return self._store.read_with(v.meta.key, copy) is True


class HostPlacement(Promoter[HostTier, ShmHandle]):
    """The host tier's side of the engine: see the module docstring."""

    def __init__(
        self,
        host: HostTier,
        store: KvDiskStore,
        lock: threading.Lock,
        is_live: Callable[[Variant], bool],
    ) -> None:
        super().__init__(host, store, lock, is_live)
        self.host = host
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

    def reserve_put(self, vid: int, nbytes: int) -> memoryview | None:
        """A view of a fresh, invisible extent for the put that will be ``vid`` (demoting
        others to make room), or None when there is none; fill it with
        :meth:`HostTier.write_at`."""
        with self._lock:
            self.drain_unpins()
            try:
                if self.host.reserve(vid, nbytes) is None:
                    return None
            except Exception:
                log.exception("could not reserve room in the host tier for a put")
                return None
            return self.host.filling_view(vid)

    def publish_put(self, v: Variant) -> None:
        """Publish the extent that ``v``'s put was read into (lock held)."""
        self.host.publish(v.vid, v.saved_tokens)

    def discard(self, vid: int) -> None:
        """Give back a put's extent unless it was published (a no-op then)."""
        with self._lock:
            self.host.release(vid)

    def pin(self, v: Variant) -> ShmHandle | None:
        if not self.host.holds(v.vid):
            return None
        return self.host.pin(v.vid)

    def _pin(self, vid: int) -> ShmHandle:
        return self.host.pin(vid)

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
                self.host.release(v.vid)
                del self._filling[v.vid]
            done.set()

    def place_locked(self, v: Variant, data: bytes | bytearray | memoryview) -> bool:
        """:meth:`place` with the lock held (a demotion from a device tier copies down
        in the step that frees its extent)."""
        if v.vid in self._filling or self.host.holds(v.vid) or not self._reserve(v):
            return False
        try:
            self.host.write(v.vid, data)
        except Exception:
            self.host.release(v.vid)
            raise
        self.host.publish(v.vid, v.saved_tokens)
        return True

    def _fill(self, v: Variant) -> bool:
        return self._copy_from_disk(v)

    def _reserve(self, v: Variant) -> bool:
        self.drain_unpins()
        return super()._reserve(v)

    def _publish(self, v: Variant, promotion: bool) -> bool:
        with self._lock:
            if not self._is_live(v):
                return False
            self.host.publish(v.vid, v.saved_tokens)
            if promotion:
                self.host.stats.promotions += 1
            return True


class DevicePlacement(Promoter[DeviceTier, CudaHandle]):
    """One GPU's tier: promotion of hot chunks, handles, copy-down on demotion."""

    def __init__(
        self,
        device: DeviceTier,
        store: KvDiskStore,
        lock: threading.Lock,
        is_live: Callable[[Variant], bool],
        *,
        host: HostPlacement | None,
        promotion: PromotionPolicy,
        variant_of: Callable[[int], Variant | None],
    ) -> None:
        super().__init__(device, store, lock, is_live)
        self.device = device
        self._host = host
        self._promotion = promotion
        self._variant_of = variant_of

    def _pin(self, vid: int) -> CudaHandle:
        return self.device.pin(vid)

    def _reserve(self, v: Variant) -> bool:
        if not self._is_live(v) or not self._promotion.should_promote(v.meta.hits, v.meta.nbytes):
            return False
        try:
            return self.device.reserve(v.vid, v.meta.nbytes, self._copy_down) is not None
        except DeviceMemoryError as exc:  # the device refused a new slab: stay on the host
            log.warning("%s: no device memory for a chunk: %s", self.device.name, exc)
            return False
        except Exception:
            log.exception("could not reserve device memory on %s", self.device.name)
            return False

    def _copy_down(self, vid: int) -> None:
        """A demoted chunk keeps its bytes in the host tier (lock held); best effort:
        the disk tier has them anyway."""
        v = self._variant_of(vid)
        if self._host is None or v is None or self._host.host.holds(vid):
            return
        try:
            self._host.place_locked(v, self.device.read(vid))
        except Exception:
            log.exception("could not copy a chunk demoted from %s to the host", self.device.name)

    def _fill(self, v: Variant) -> bool:
        """From the host tier when it holds the chunk (pinned meanwhile), else from disk."""
        host = self._host
        pin = None
        if host is not None:
            with self._lock:
                pin = host.pin(v)
        if host is None or pin is None:
            return self._copy_from_disk(v)
        try:
            self.device.write(v.vid, host.host.read(v.vid))
            return True
        finally:
            with self._lock:
                host.host.unpin(v.vid, pin.offset)
