"""Storage tiers of the chunk KV cache: a byte budget, a placement, a way to read, a handle.

The disk tier (LMDB) is the system of record: every acknowledged put is written
through to it, so it bounds what the cache holds. The host tier keeps the hot
subset in a shared-memory arena, from which a same-host client reads without a
copy. A device tier per GPU keeps the hottest chunks in device memory
(:class:`~semcached.index.device_arena.DeviceArena`), which a same-host engine opens
through CUDA IPC, again without a copy. Host and device tiers are both an
:class:`ArenaTier`: extents reserved, filled, published, pinned by readers.

Tiers know variants by the engine's integer ids and keep their own eviction policy
(:class:`~semcached.index.eviction.EvictionPolicy`): a tier over budget asks
its policy for victims and the engine demotes (host: drop, the bytes stay on disk)
or evicts (disk: gone). None of these classes lock: the engine calls them under its
own lock and copies bytes outside it (see :meth:`HostTier.reserve`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from semcached.index.device_arena import CudaHandle, DeviceArena, DeviceInfo
from semcached.index.eviction import EvictionPolicy
from semcached.index.shm_arena import ShmArena

__all__ = [
    "Arena",
    "ArenaTier",
    "CudaHandle",
    "DeviceTier",
    "DiskTier",
    "HostTier",
    "KvTier",
    "ShmHandle",
    "TierStats",
]


@dataclass(slots=True)
class TierStats:
    """Counters of one tier (monotone, except ``bytes`` and ``entries``)."""

    bytes: int = 0
    entries: int = 0
    hits: int = 0
    misses: int = 0
    promotions: int = 0
    demotions: int = 0
    evictions: int = 0
    # The shared tier only: bytes shipped to Redis, and reads that failed (unreachable,
    # corrupt or unusable records).
    written_bytes: int = 0
    errors: int = 0


@dataclass(frozen=True, slots=True)
class ShmHandle:
    """Where a blob lies in shared memory: a client maps ``segment`` read-only and
    reads ``length`` bytes at ``offset``."""

    segment: str
    offset: int
    length: int

    @property
    def extent(self) -> int:
        """The blob's offset in the arena (what the daemon's pin names)."""
        return self.offset


class KvTier(Protocol):
    """What every tier offers the engine."""

    name: str
    budget_bytes: int
    stats: TierStats

    def holds(self, vid: int) -> bool:
        """Whether the variant's bytes are readable from this tier now."""

    def remove(self, vid: int) -> None:
        """Drop the variant from this tier (demotion, eviction, delete); no-op if absent."""


class DiskTier:
    """Budget and eviction order of the LMDB store (the bytes live in
    :class:`~semcached.index.kv_disk.KvDiskStore`; reading them is the store's job)."""

    name = "disk"

    def __init__(self, budget_bytes: int, policy: EvictionPolicy) -> None:
        self.budget_bytes = budget_bytes
        self.stats = TierStats()
        self._policy = policy
        self._sizes: dict[int, int] = {}
        self.pending: set[int] = set()  # admitted puts whose commit has not returned

    def holds(self, vid: int) -> bool:
        return vid in self._sizes

    def admit(self, vid: int, nbytes: int, *, pending: bool = False) -> None:
        """Count a variant (``pending``: a put not yet committed; see :meth:`settle`)."""
        if pending:
            self.pending.add(vid)
        self._sizes[vid] = nbytes
        self._policy.admit(vid, nbytes)
        self.stats.bytes += nbytes
        self.stats.entries += 1

    def touch(self, vid: int) -> None:
        self._policy.record_access(vid)

    def set_cost(self, vid: int, saved_tokens: float) -> None:
        if vid in self._sizes:
            self._policy.set_cost(vid, saved_tokens)

    def settle(self, vid: int) -> None:
        """The put of ``vid`` committed: it may be evicted like any other from now on."""
        self.pending.discard(vid)

    def remove(self, vid: int) -> None:
        self.pending.discard(vid)
        nbytes = self._sizes.pop(vid, None)
        if nbytes is not None:
            self._policy.forget(vid)
            self.stats.bytes -= nbytes
            self.stats.entries -= 1

    def make_room(self) -> list[int]:
        """Evict until the tier is within its budget; the victims in policy order.

        They are removed from the tier; the caller deletes their bytes. A put admits its
        variant first and then makes room, so the policy never names the newcomer while
        it tracks anything else (the protocol of
        :class:`~semcached.index.eviction.EvictionPolicy`).
        """
        chosen: list[int] = []
        while self.stats.bytes > self.budget_bytes and len(self._sizes) > 1:
            vid = self._policy.choose_victim()
            if vid is None or vid in self.pending:
                # A put still being written cannot go yet: the tier stays over budget
                # until that put settles and makes room again.
                break
            self.remove(vid)
            self.stats.evictions += 1
            chosen.append(vid)
        return chosen

    def evict_for(self, nbytes: int) -> list[int]:
        """Evict about ``nbytes`` in policy order, within budget or not (the store is
        full before the budget is reached); the victims, as for :meth:`make_room`.
        Never a pending put: an empty list when nothing else is left."""
        chosen: list[int] = []
        skipped: list[int] = []  # puts still being written: set aside, then back
        freed = 0
        while freed < nbytes or not chosen:
            vid = self._policy.choose_victim()
            if vid is None:
                break
            if vid in self.pending:
                self._policy.forget(vid)
                skipped.append(vid)
                continue
            freed += self._sizes[vid]
            self.remove(vid)
            self.stats.evictions += 1
            chosen.append(vid)
        for vid in skipped:  # they are the newest anyway
            self._policy.admit(vid, self._sizes[vid])
        return chosen


class Arena(Protocol):
    """The space an :class:`ArenaTier` keeps blobs in (shared memory, device slabs)."""

    name: str
    capacity: int

    def allocate(self, nbytes: int) -> int | None: ...

    def free(self, offset: int) -> None: ...

    def write(self, offset: int, data: bytes | bytearray | memoryview) -> None: ...

    def close(self) -> None: ...

    def _check(self) -> None: ...


@dataclass(slots=True)
class _Extent:
    offset: int
    length: int
    pins: int = 0
    live: bool = False  # published: readable and handed out; False while being filled
    saved_tokens: float = 0.0  # the eviction policy's cost, to re-admit it


class ArenaTier:
    """Hot blobs in an arena; its budget is the arena's capacity.

    A blob is *reserved* (an extent allocated, invisible), filled by the engine
    outside its lock, then *published*. Handles pin their extent: a pinned extent
    that is demoted or deleted stays allocated (a *zombie*, invisible to new readers)
    until its last pin goes, so a client reading it never sees other bytes.
    """

    def __init__(self, name: str, arena: Arena, policy: EvictionPolicy) -> None:
        self.name = name
        self.arena = arena
        self.budget_bytes = arena.capacity
        self.stats = TierStats()
        self._policy = policy
        self._extents: dict[int, _Extent] = {}
        self._zombies: dict[int, list[_Extent]] = {}

    def holds(self, vid: int) -> bool:
        extent = self._extents.get(vid)
        return extent is not None and extent.live

    def reserve(
        self, vid: int, nbytes: int, on_demote: Callable[[int], None] | None = None
    ) -> list[int] | None:
        """Allocate an invisible extent for ``vid``, demoting victims to make room
        (``on_demote`` sees each victim while its bytes are still readable).

        Returns the demoted ids, or None when the blob cannot fit (bigger than the
        arena, or not enough unpinned victims). Pinned blobs are passed over: demoting
        one would free nothing until its readers are done. Fill the extent with
        :meth:`write`, then :meth:`publish` it. O(victims · log n).
        """
        if vid in self._extents or nbytes > self.budget_bytes or nbytes == 0:
            return None
        demoted: list[int] = []
        passed: list[int] = []  # pinned: set aside, then back (as the newest: in use)
        try:
            while (offset := self.arena.allocate(nbytes)) is None:
                victim = self._policy.choose_victim()
                if victim is None:
                    return None
                if self._extents[victim].pins:
                    self._policy.forget(victim)
                    passed.append(victim)
                    continue
                if on_demote is not None:
                    on_demote(victim)
                self.remove(victim)
                self.stats.demotions += 1
                demoted.append(victim)
        finally:
            for pinned in passed:
                extent = self._extents[pinned]
                self._policy.admit(pinned, extent.length)
                self._policy.set_cost(pinned, extent.saved_tokens)
        self._extents[vid] = _Extent(offset, nbytes)
        return demoted

    def write(self, vid: int, data: bytes | bytearray | memoryview) -> None:
        """Fill a reserved extent (safe outside the engine's lock: nobody else sees it)."""
        self.arena.write(self._extents[vid].offset, data)

    def publish(self, vid: int, saved_tokens: float) -> None:
        extent = self._extents[vid]
        extent.live = True
        extent.saved_tokens = saved_tokens
        self._policy.admit(vid, extent.length)
        self._policy.set_cost(vid, saved_tokens)
        self.stats.bytes += extent.length
        self.stats.entries += 1

    def touch(self, vid: int) -> None:
        self._policy.record_access(vid)

    def set_cost(self, vid: int, saved_tokens: float) -> None:
        if self.holds(vid):
            self._extents[vid].saved_tokens = saved_tokens
            self._policy.set_cost(vid, saved_tokens)

    def pin_extent(self, vid: int) -> int:
        """Pin the variant's extent; its offset, which :meth:`unpin` takes back."""
        extent = self._extents[vid]
        extent.pins += 1
        return extent.offset

    def unpin(self, vid: int, offset: int) -> None:
        """Drop one pin of the extent at ``offset`` (the live one or a zombie)."""
        extent = self._extents.get(vid)
        if extent is not None and extent.offset == offset:
            extent.pins -= 1
            return
        zombies = self._zombies.get(vid, [])
        for zombie in zombies:
            if zombie.offset == offset:
                zombie.pins -= 1
                if zombie.pins == 0:
                    zombies.remove(zombie)
                    self.arena.free(zombie.offset)
                break
        if not zombies:
            self._zombies.pop(vid, None)

    def remove(self, vid: int) -> None:
        """Drop ``vid`` from the tier (demotion, eviction or delete); no-op if absent.

        An extent still being filled (reserved, not published) stays with its filler,
        which writes into it outside the lock: freeing it here would let its bytes land
        in another variant's room. The filler gives it back (:meth:`release`) once it
        sees the variant gone."""
        extent = self._extents.get(vid)
        if extent is None or not extent.live:
            return
        self._drop(vid)

    def release(self, vid: int) -> None:
        """Give back ``vid``'s reserved extent if it was never published (its filler's
        last step, whatever happened meanwhile); no-op if published or absent."""
        extent = self._extents.get(vid)
        if extent is not None and not extent.live:
            self._drop(vid)

    def _drop(self, vid: int) -> None:
        extent = self._extents.pop(vid)
        if extent.live:
            self._policy.forget(vid)
            self.stats.bytes -= extent.length
            self.stats.entries -= 1
        if extent.pins:
            self._zombies.setdefault(vid, []).append(extent)
        else:
            self.arena.free(extent.offset)

    def _extent(self, vid: int) -> _Extent:
        return self._extents[vid]

    def _check(self, live: set[int]) -> None:
        """Invariants, given the engine's live variant ids."""
        published = {vid: e for vid, e in self._extents.items() if e.live}
        assert set(published) <= live
        assert self.stats.entries == len(published) == len(self._policy)
        assert self.stats.bytes == sum(e.length for e in published.values())
        assert self.stats.bytes <= self.budget_bytes
        for zombies in self._zombies.values():
            assert zombies
            assert all(z.pins > 0 for z in zombies)
        assert all(e.pins >= 0 for e in self._extents.values())
        self.arena._check()

    def close(self) -> None:
        self._extents.clear()
        self._zombies.clear()
        self.arena.close()


class HostTier(ArenaTier):
    """Hot blobs in a shared-memory arena that same-host clients map read-only."""

    arena: ShmArena

    def __init__(self, arena: ShmArena, policy: EvictionPolicy) -> None:
        super().__init__("host", arena, policy)

    def read(self, vid: int) -> memoryview:
        """The published blob (valid while pinned or until the next removal)."""
        extent = self._extent(vid)
        return self.arena.view(extent.offset, extent.length)

    def write_at(self, vid: int, at: int, data: bytes | bytearray | memoryview) -> None:
        """Fill part of a reserved extent, ``at`` bytes from its start (a put's body as
        it arrives; safe outside the engine's lock, like :meth:`write`)."""
        self.arena.write(self._extent(vid).offset, data, at)

    def filling_view(self, vid: int) -> memoryview:
        """A view of a reserved, unpublished extent (a put's bytes, written with
        :meth:`write_at`, are stored from it before it is published)."""
        extent = self._extent(vid)
        return self.arena.view(extent.offset, extent.length)

    def pin(self, vid: int) -> ShmHandle:
        offset = self.pin_extent(vid)
        return ShmHandle(self.arena.name, offset, self._extent(vid).length)


class DeviceTier(ArenaTier):
    """The hottest blobs in one GPU's memory, handed out as CUDA IPC handles.

    Its name is the arena's (``gpu0``, ``gpu1``...): one tier per device, each with
    its own budget and eviction policy.
    """

    arena: DeviceArena

    def __init__(self, arena: DeviceArena, policy: EvictionPolicy) -> None:
        super().__init__(arena.name, arena, policy)

    @property
    def device(self) -> DeviceInfo:
        return self.arena.device

    def read(self, vid: int) -> bytes:
        """A copy of the published blob on the host (device to host)."""
        extent = self._extent(vid)
        return self.arena.read(extent.offset, extent.length)

    def extent_of(self, vid: int) -> tuple[int, int]:
        """(offset, length) of the variant's extent, to read it while pinned."""
        extent = self._extent(vid)
        return extent.offset, extent.length

    def pin(self, vid: int) -> CudaHandle:
        offset = self.pin_extent(vid)
        return self.arena.handle(offset, self._extent(vid).length)
