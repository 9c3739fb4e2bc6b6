"""The device arena on the host stand-in: slabs taken lazily, extents, copies, handles."""

from __future__ import annotations

import random

import pytest

from semcached.index.device_arena import DEVICE_ALIGNMENT, DeviceArena, DeviceMemoryError
from tests.index.device_standin import HostDeviceMemory

SLAB = 4 * DEVICE_ALIGNMENT


def arena(slabs: int = 3, **kwargs: int | None) -> tuple[DeviceArena, HostDeviceMemory]:
    memory = HostDeviceMemory(**kwargs)  # type: ignore[arg-type]
    return DeviceArena(memory, slabs * SLAB + 100, SLAB), memory


def test_capacity_is_whole_slabs_and_slabs_are_taken_only_when_needed() -> None:
    made, memory = arena(3)
    assert made.capacity == 3 * SLAB
    assert made.slabs == 0
    first = made.allocate(DEVICE_ALIGNMENT)
    assert first == 0
    assert made.slabs == len(memory.slabs) == 1
    made.allocate(3 * DEVICE_ALIGNMENT)  # fills slab 0
    assert made.slabs == 1
    second = made.allocate(1)
    assert second == SLAB  # slab 1 starts at SLAB
    assert made.slabs == 2
    assert made.allocated_bytes == 2 * SLAB
    made._check()


def test_a_blob_larger_than_a_slab_or_the_capacity_does_not_fit() -> None:
    made, _ = arena(2)
    assert made.allocate(SLAB + 1) is None
    for _ in range(8):
        assert made.allocate(DEVICE_ALIGNMENT) is not None
    assert made.allocate(1) is None  # full: the caller demotes and retries
    made._check()


def test_free_space_is_reused_before_a_new_slab() -> None:
    made, _ = arena(2)
    offsets = [made.allocate(DEVICE_ALIGNMENT) for _ in range(4)]
    made.free(offsets[1])  # type: ignore[arg-type]
    assert made.allocate(DEVICE_ALIGNMENT) == offsets[1]
    assert made.slabs == 1
    with pytest.raises(KeyError):
        made.free(123)
    made._check()


def test_bytes_round_trip_and_handles_point_at_them() -> None:
    made, memory = arena(2)
    made.allocate(SLAB)
    offset = made.allocate(100)
    assert offset is not None
    data = bytes(range(100))
    made.write(offset, data)
    assert made.read(offset, 100) == data
    handle = made.handle(offset, 100)
    assert handle.device == memory.info.uuid
    assert handle.device_index == 0
    assert len(handle.ipc_handle) == 64
    assert handle.extent == offset
    slab_number = int.from_bytes(handle.ipc_handle[:8], "little")
    assert memory.bytes_at(slab_number, handle.offset, 100) == data
    with pytest.raises(ValueError, match="do not fit"):
        made.write(offset, bytes(DEVICE_ALIGNMENT + 1))
    with pytest.raises(ValueError, match="do not fit"):
        made.read(offset, DEVICE_ALIGNMENT + 1)


def test_a_device_out_of_memory_is_a_clear_error_and_close_releases_slabs() -> None:
    made, memory = arena(3, max_slabs=1)
    made.allocate(SLAB)
    with pytest.raises(DeviceMemoryError, match="out of memory"):
        made.allocate(1)
    made._check()
    made.close()
    assert all(slab.released for slab in memory.slabs)
    with pytest.raises(DeviceMemoryError, match="closed"):
        made.allocate(1)


def test_bad_geometry_is_refused() -> None:
    with pytest.raises(ValueError, match="multiple"):
        DeviceArena(HostDeviceMemory(), 10 * SLAB, SLAB + 1)
    with pytest.raises(ValueError, match="below one slab"):
        DeviceArena(HostDeviceMemory(), SLAB - 1, SLAB)


@pytest.mark.parametrize("seed", range(5))
def test_random_allocations_against_a_model(seed: int) -> None:
    rng = random.Random(seed)
    made, _ = arena(4)
    live: dict[int, bytes] = {}
    for step in range(400):
        if live and rng.random() < 0.45:
            offset = rng.choice(list(live))
            assert made.read(offset, len(live[offset])) == live[offset]
            made.free(offset)
            del live[offset]
        else:
            size = rng.randint(1, SLAB)
            offset = made.allocate(size)
            if offset is None:
                assert size > made.slab_bytes or made.slabs == made.max_slabs
                continue
            # No two live extents overlap, and none crosses a slab boundary.
            assert offset // SLAB == (offset + size - 1) // SLAB
            for other, data in live.items():
                assert offset + size <= other or other + len(data) <= offset
            data = rng.randbytes(size)
            made.write(offset, data)
            live[offset] = data
        if step % 20 == 0:
            made._check()
    made._check()
    assert made.used_bytes == sum(
        -(-len(d) // DEVICE_ALIGNMENT) * DEVICE_ALIGNMENT for d in live.values()
    )
