"""A host-memory stand-in for GPU memory, so the device tier's logic runs without a GPU.

It implements :class:`~semcached.index.device_arena.DeviceMemory` with bytearrays:
slabs, copies in and out, an export per slab (a fake 64-byte handle naming the slab),
release, and a device that runs out of memory after ``max_slabs`` slabs. Only CUDA
itself (torch's allocator, the IPC driver calls) is not exercised; tests marked
``gpu`` cover that on a CUDA machine.
"""

from __future__ import annotations

import itertools

from semcached.index.device_arena import DeviceInfo, DeviceMemoryError, IpcExport

__all__ = ["HostDeviceMemory", "HostSlab"]

_numbers = itertools.count(1)


class HostSlab:
    def __init__(self, nbytes: int, owner: HostDeviceMemory | None = None) -> None:
        self.owner = owner
        self.memory = bytearray(nbytes)
        self.number = next(_numbers)
        self.released = False
        self.writes = 0
        self.reads = 0

    @property
    def nbytes(self) -> int:
        return len(self.memory)

    def write(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        assert not self.released
        if self.owner is not None and self.owner.broken:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        source = memoryview(data).cast("B")
        assert offset + len(source) <= len(self.memory)
        self.memory[offset : offset + len(source)] = source
        self.writes += 1

    def read(self, offset: int, nbytes: int) -> bytes:
        assert not self.released
        self.reads += 1
        return bytes(self.memory[offset : offset + nbytes])

    def export(self) -> IpcExport:
        # Where a real allocator may place the slab inside a larger allocation, the
        # offset is not zero: 512 keeps callers honest about adding it.
        return IpcExport(self.number.to_bytes(8, "little") * 8, 512)

    def release(self) -> None:
        self.released = True


class HostDeviceMemory:
    """One fake GPU: ``index``, a UUID, ``total_bytes``; at most ``max_slabs`` slabs."""

    def __init__(
        self, index: int = 0, *, total_bytes: int = 1 << 30, max_slabs: int | None = None
    ) -> None:
        self._info = DeviceInfo(
            index, f"GPU-00000000-0000-0000-0000-{index:012x}", "stand-in", total_bytes
        )
        self.max_slabs = max_slabs
        self.broken = False  # True: copies fail as after a CUDA error
        self.slabs: list[HostSlab] = []

    @property
    def info(self) -> DeviceInfo:
        return self._info

    def allocate_slab(self, nbytes: int) -> HostSlab:
        if self.max_slabs is not None and len(self.slabs) >= self.max_slabs:
            raise DeviceMemoryError(f"stand-in GPU {self._info.index} is out of memory")
        slab = HostSlab(nbytes, self)
        self.slabs.append(slab)
        return slab

    def bytes_at(self, slab_number: int, offset: int, nbytes: int) -> bytes:
        """What a client opening the export would read (offset from the export's base)."""
        slab = next(s for s in self.slabs if s.number == slab_number)
        return bytes(slab.memory[offset - 512 : offset - 512 + nbytes])
