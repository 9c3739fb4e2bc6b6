"""The engine's GPU tiers: one per device, found by UUID or index, read and promoted into.

:class:`GpuTiers` gathers what the engine does with its device tiers so that the
engine itself only says *when* (a plan or read names a device) and never *how*: which
tier a client's device name means (400 otherwise), a handle on that GPU for a hot
chunk (:class:`~semcached.service.kv.placement.DevicePlacement`), a copy from a GPU
for a plain read, and the bookkeeping every tier takes part in (removal, accesses,
costs, invariants). Every method takes the engine's lock itself unless it says
"lock held".
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Sequence

from semcached.cachepolicy.promotion import PromotionPolicy
from semcached.errors import BadRequestError
from semcached.index.kv_disk import KvDiskStore
from semcached.index.kv_tiers import CudaHandle, DeviceTier
from semcached.protocol.codes import ErrorCode
from semcached.service.kv.placement import DevicePlacement, HostPlacement
from semcached.service.kv.types import Lease, Variant

__all__ = ["GpuTiers"]

log = logging.getLogger(__name__)


class GpuTiers:
    """The device tiers of one engine (none: the GPU tier is off, for ``off_reason``)."""

    def __init__(
        self,
        tiers: Sequence[DeviceTier],
        store: KvDiskStore,
        lock: threading.Lock,
        variant_of: Callable[[int], Variant | None],
        *,
        host: HostPlacement | None,
        promotion: PromotionPolicy,
        off_reason: str | None,
    ) -> None:
        self.tiers = list(tiers)
        self.off_reason = None if self.tiers else off_reason or "no GPU tier"
        self._lock = lock
        self._placements = [
            DevicePlacement(
                tier,
                store,
                lock,
                lambda v: variant_of(v.vid) is v,
                host=host,
                promotion=promotion,
                variant_of=variant_of,
            )
            for tier in self.tiers
        ]

    def __iter__(self) -> Iterator[DeviceTier]:
        return iter(self.tiers)

    def resolve(self, device: str) -> DevicePlacement:
        """The tier named by ``device``: the GPU's UUID, or the daemon's CUDA index of it.
        400 when the GPU tier is off or has no such device. Never blocks."""
        if not self._placements:
            raise BadRequestError(
                ErrorCode.GPU_TIER_OFF,
                f"device handles need the GPU tier, which is off: {self.off_reason}",
                field="device",
            )
        for placement in self._placements:
            info = placement.device.device
            if device in (info.uuid, str(info.index)):
                return placement
        known = ", ".join(f"{t.device.index} ({t.device.uuid})" for t in self.tiers)
        raise BadRequestError(
            ErrorCode.UNKNOWN_DEVICE,
            f"device {device!r} is not in the GPU tier; it has {known}",
            field="device",
        )

    def ensure(self, gpu: DevicePlacement, v: Variant, lease: Lease) -> CudaHandle | None:
        """``v`` on ``gpu`` pinned under ``lease`` if it is hot (promoted first); None
        otherwise, and after a CUDA error (logged: the host tier serves instead)."""
        try:
            handle = gpu.ensure(v, lease)
        except Exception:
            log.exception("could not place a chunk on %s", gpu.device.name)
            handle = None
        with self._lock:
            if handle is None:
                gpu.device.stats.misses += 1
            else:
                gpu.device.stats.hits += 1
        return handle

    def read(self, v: Variant) -> bytes | None:
        """A copy of ``v`` from a GPU holding it (pinned meanwhile), else None."""
        for device in self.tiers:
            with self._lock:
                if not device.holds(v.vid):
                    continue
                offset = device.pin_extent(v.vid)
                device.stats.hits += 1
            try:  # a pinned extent stays allocated even if the tier drops it meanwhile
                return device.arena.read(offset, v.meta.nbytes)
            finally:
                with self._lock:
                    device.unpin(v.vid, offset)
        return None

    def holder(self, vid: int, asked: DevicePlacement | None = None) -> str | None:
        """The name of a GPU tier holding ``vid``, the asked one first (lock not needed:
        a hint for replies)."""
        if asked is not None and asked.device.holds(vid):
            return asked.device.name
        return next((t.name for t in self.tiers if t.holds(vid)), None)

    # -- bookkeeping every tier takes part in (lock held) ----------------------------------

    def remove(self, vid: int) -> None:
        for tier in self.tiers:
            tier.remove(vid)

    def touch(self, vid: int) -> None:
        for tier in self.tiers:
            if tier.holds(vid):
                tier.touch(vid)

    def set_cost(self, vid: int, saved_tokens: float) -> None:
        for tier in self.tiers:
            tier.set_cost(vid, saved_tokens)

    def check(self, live: set[int]) -> None:
        for tier in self.tiers:
            tier._check(live)

    def close(self) -> None:
        for tier in self.tiers:
            tier.close()
