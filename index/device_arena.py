"""A device arena: chunk KV blobs in GPU memory, carved out of a few large slabs.

The device tier (:class:`~semcached.index.kv_tiers.DeviceTier`) keeps its blobs here.
Memory comes from a :class:`DeviceMemory` one slab at a time, as blobs need room, up
to the tier's budget: one large allocation per ``slab_bytes`` instead of one per
chunk, so the device's allocator sees a handful of requests and a same-host client
opens one CUDA IPC mapping per slab, not per chunk. Slabs are kept until
:meth:`DeviceArena.close` (a cache that filled its slabs once will fill them again).

Inside each slab an :class:`~semcached.index.extents.ExtentAllocator` places blobs
(best fit); a blob never straddles two slabs. An offset in the arena is
``slab_number * slab_bytes + offset_in_slab``.

The memory itself is behind the :class:`DeviceMemory` protocol: the CUDA
implementation (:mod:`semcached.index.cuda_memory`, torch) in the daemon, a
host-memory stand-in in the tests, so that the tier's logic (budgets, slabs,
promotion, demotion, pins) is tested on machines without a GPU.

Not thread-safe: the engine serialises allocation on its lock; ``write`` and ``read``
of an extent nobody else frees may run outside it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Protocol

from semcached.errors import SemcachedError
from semcached.index.extents import ExtentAllocator

__all__ = [
    "DEVICE_ALIGNMENT",
    "CudaHandle",
    "DeviceArena",
    "DeviceInfo",
    "DeviceMemory",
    "DeviceMemoryError",
    "IpcExport",
    "Slab",
]

#: Blobs start at multiples of this in a slab (CUDA allocations are 256-byte aligned;
#: a page keeps each blob's start aligned for any dtype and vectorised copies).
DEVICE_ALIGNMENT: Final[int] = 4096


class DeviceMemoryError(SemcachedError):
    """The device cannot give or use memory (out of memory, no IPC, a CUDA error)."""


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    """One GPU as the daemon sees it."""

    index: int  # the CUDA device index in the daemon's process
    uuid: str  # "GPU-..." (as nvidia-smi prints it): the same GPU in every process
    name: str
    total_bytes: int


@dataclass(frozen=True, slots=True)
class IpcExport:
    """How another process maps a slab: a CUDA IPC memory handle of the allocation
    holding it, and where the slab starts in that allocation."""

    handle: bytes  # the 64 bytes of a cudaIpcMemHandle_t / CUipcMemHandle
    offset: int


@dataclass(frozen=True, slots=True)
class CudaHandle:
    """Where a blob lies in device memory, for a client on the same host: open
    ``ipc_handle`` (CUDA IPC) on the GPU ``device`` and read ``length`` bytes at
    ``offset`` from the mapping's start."""

    device: str  # the GPU's UUID
    device_index: int  # the daemon's CUDA index of it (a client may number GPUs otherwise)
    ipc_handle: bytes
    offset: int
    length: int
    extent: int  # the blob's offset in the arena (the daemon's pin; not sent)


class Slab(Protocol):
    """One device allocation."""

    @property
    def nbytes(self) -> int: ...

    def write(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        """Copy host bytes to ``offset``; complete (visible to other processes) on return."""

    def read(self, offset: int, nbytes: int) -> bytes:
        """Copy ``nbytes`` at ``offset`` back to the host."""

    def export(self) -> IpcExport:
        """The IPC handle other processes open (cached: the same for the slab's life)."""

    def release(self) -> None:
        """Give the memory back (no client may still map it)."""


class DeviceMemory(Protocol):
    """Slabs of one device."""

    @property
    def info(self) -> DeviceInfo: ...

    def allocate_slab(self, nbytes: int) -> Slab:
        """A new slab of ``nbytes``; DeviceMemoryError when the device has no room."""


@dataclass(slots=True)
class _SlabRoom:
    slab: Slab
    extents: ExtentAllocator


class DeviceArena:
    """Blobs in slabs of one device, up to ``capacity`` bytes (whole slabs).

    ``capacity`` is rounded down to a multiple of ``slab_bytes`` (at least one slab).
    """

    def __init__(self, memory: DeviceMemory, capacity: int, slab_bytes: int) -> None:
        if slab_bytes < DEVICE_ALIGNMENT or slab_bytes % DEVICE_ALIGNMENT:
            raise ValueError(f"slab size {slab_bytes} is not a multiple of {DEVICE_ALIGNMENT}")
        if capacity < slab_bytes:
            raise ValueError(f"capacity {capacity} is below one slab ({slab_bytes} bytes)")
        self.memory = memory
        self.device = memory.info
        self.name = f"gpu{self.device.index}"
        self.slab_bytes = slab_bytes
        self.max_slabs = capacity // slab_bytes
        self.capacity = self.max_slabs * slab_bytes
        self._slabs: list[_SlabRoom] = []
        self._closed = False

    @property
    def used_bytes(self) -> int:
        return sum(room.extents.used_bytes for room in self._slabs)

    @property
    def allocated_bytes(self) -> int:
        """Device memory held in slabs (used or not)."""
        return len(self._slabs) * self.slab_bytes

    @property
    def slabs(self) -> int:
        return len(self._slabs)

    def allocate(self, nbytes: int) -> int | None:
        """An extent of ``nbytes``: in the first slab where it fits best, else in a new
        slab while the capacity allows. None when it does not fit (the caller demotes
        and retries); DeviceMemoryError when the device refuses a new slab.
        O(slabs · log n)."""
        self._require_open()
        if nbytes <= 0:
            raise ValueError(f"allocation size must be positive, not {nbytes}")
        if nbytes > self.slab_bytes:
            return None
        for number, room in enumerate(self._slabs):
            offset = room.extents.allocate(nbytes)
            if offset is not None:
                return number * self.slab_bytes + offset
        if len(self._slabs) >= self.max_slabs:
            return None
        slab = self.memory.allocate_slab(self.slab_bytes)
        room = _SlabRoom(slab, ExtentAllocator(self.slab_bytes, DEVICE_ALIGNMENT))
        self._slabs.append(room)
        offset = room.extents.allocate(nbytes)
        assert offset is not None
        return (len(self._slabs) - 1) * self.slab_bytes + offset

    def free(self, offset: int) -> None:
        """Return the extent at ``offset``; KeyError if there is none. O(log n)."""
        room, local = self._locate(offset)
        room.extents.free(local)

    def write(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        """Copy ``data`` into the extent at ``offset`` (host to device)."""
        room, local = self._locate(offset)
        size = room.extents.size_of(local)
        if size is None:
            raise KeyError(f"no allocated extent at offset {offset}")
        if len(memoryview(data).cast("B")) > size:
            raise ValueError(f"{len(data)} bytes do not fit the {size}-byte extent at {offset}")
        room.slab.write(local, data)

    def read(self, offset: int, nbytes: int) -> bytes:
        """The first ``nbytes`` of the extent at ``offset``, copied to the host."""
        room, local = self._locate(offset)
        size = room.extents.size_of(local)
        if size is None:
            raise KeyError(f"no allocated extent at offset {offset}")
        if not 0 <= nbytes <= size:
            raise ValueError(f"{nbytes} bytes do not fit the {size}-byte extent at {offset}")
        return room.slab.read(local, nbytes)

    def handle(self, offset: int, length: int) -> CudaHandle:
        """What a same-host client opens to read ``length`` bytes at ``offset``."""
        room, local = self._locate(offset)
        export = room.slab.export()
        return CudaHandle(
            device=self.device.uuid,
            device_index=self.device.index,
            ipc_handle=export.handle,
            offset=export.offset + local,
            length=length,
            extent=offset,
        )

    def close(self) -> None:
        """Release every slab. Idempotent."""
        slabs, self._slabs = self._slabs, []
        self._closed = True
        for room in slabs:
            room.slab.release()

    def _locate(self, offset: int) -> tuple[_SlabRoom, int]:
        self._require_open()
        number, local = divmod(offset, self.slab_bytes)
        if not 0 <= number < len(self._slabs):
            raise KeyError(f"no allocated extent at offset {offset}")
        return self._slabs[number], local

    def _require_open(self) -> None:
        if self._closed:
            raise DeviceMemoryError(f"device arena {self.name} is closed")

    def _check(self) -> None:
        """Invariants: at most ``max_slabs`` slabs, each tiled exactly by its extents."""
        assert len(self._slabs) <= self.max_slabs
        for room in self._slabs:
            assert room.slab.nbytes == self.slab_bytes
            room.extents._check()
