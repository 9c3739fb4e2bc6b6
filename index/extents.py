"""Best-fit allocation of extents in a range of bytes: the space manager of the arenas.

Shared by the host tier's shared-memory arena (:mod:`semcached.index.shm_arena`) and
the device tier's slabs (:mod:`semcached.index.device_arena`): both carve variable-size
blobs out of one large region and only need offsets back.

Extents are whole units of ``granularity`` bytes. Free extents live in two
B-skiplists: by offset (to find the neighbours to coalesce with on ``free``) and by
``size_units << 32 | offset_units`` (so ``successor(units << 32)`` is the smallest
extent that fits, lowest offset first among equals). Allocated extents are a dict.
Every call is O(log n) in the number of extents, independent of their sizes.

Not thread-safe: callers serialise every call.
"""

from __future__ import annotations

from typing import Final

from semcached.ext.bskiplist import BSkipList

__all__ = ["MAX_UNITS", "ExtentAllocator"]

# Sizes and offsets in units share one 64-bit key in the by-size index.
_SHIFT: Final[int] = 32
MAX_UNITS: Final[int] = (1 << _SHIFT) - 1  #: the most units one allocator manages


class ExtentAllocator:
    """Best-fit extents of ``[0, capacity)``; ``capacity`` is rounded down to whole units."""

    def __init__(self, capacity: int, granularity: int) -> None:
        if granularity < 1:
            raise ValueError(f"granularity must be positive, not {granularity}")
        units = capacity // granularity
        if units < 1:
            raise ValueError(f"capacity {capacity} is below one unit ({granularity} bytes)")
        if units > MAX_UNITS:
            raise ValueError(f"capacity {capacity} exceeds {MAX_UNITS} units of {granularity}")
        self.granularity = granularity
        self.capacity = units * granularity
        self._free_by_offset = BSkipList()  # offset_units -> size_units
        self._free_by_size = BSkipList()  # size_units << 32 | offset_units -> 0
        self._allocated: dict[int, int] = {}  # offset (bytes) -> size (bytes)
        self._used = 0
        self._insert_free(0, units)

    @property
    def used_bytes(self) -> int:
        """Bytes in allocated extents (each rounded up to whole units)."""
        return self._used

    @property
    def free_bytes(self) -> int:
        """Bytes not allocated, whether contiguous or not."""
        return self.capacity - self._used

    def __len__(self) -> int:
        """The number of allocated extents."""
        return len(self._allocated)

    def largest_free(self) -> int:
        """Bytes in the largest free extent (the largest allocation that can succeed). O(log n)."""
        if not self._free_by_size:
            return 0
        return (self._free_by_size.max() >> _SHIFT) * self.granularity

    def size_of(self, offset: int) -> int | None:
        """Size in bytes of the allocated extent at ``offset``, None if there is none. O(1)."""
        return self._allocated.get(offset)

    def allocate(self, nbytes: int) -> int | None:
        """Take ``nbytes`` (rounded up to units) and return the extent's offset.

        Best fit: the smallest free extent that is large enough, the lowest offset
        among equals; its remainder stays free. None when no contiguous free extent is
        large enough. O(log n).
        """
        if nbytes <= 0:
            raise ValueError(f"allocation size must be positive, not {nbytes}")
        units = -(-nbytes // self.granularity)
        if units > MAX_UNITS:
            return None
        key = self._free_by_size.successor(units << _SHIFT)
        if key is None:
            return None
        size_units, offset_units = key >> _SHIFT, key & MAX_UNITS
        self._remove_free(offset_units, size_units)
        if size_units > units:
            self._insert_free(offset_units + units, size_units - units)
        offset, size = offset_units * self.granularity, units * self.granularity
        self._allocated[offset] = size
        self._used += size
        return offset

    def free(self, offset: int) -> int:
        """Return the extent at ``offset``, merged with free neighbours; its size.
        KeyError for an offset that is not an allocated extent. O(log n)."""
        size = self._allocated.pop(offset, None)
        if size is None:
            raise KeyError(f"no allocated extent at offset {offset}")
        self._used -= size
        start, units = offset // self.granularity, size // self.granularity
        before = self._free_by_offset.predecessor(start - 1) if start else None
        if before is not None:
            before_units = self._free_by_offset.get(before)
            assert before_units is not None
            if before + before_units == start:
                self._remove_free(before, before_units)
                start, units = before, units + before_units
        after_units = self._free_by_offset.get(start + units)
        if after_units is not None:
            self._remove_free(start + units, after_units)
            units += after_units
        self._insert_free(start, units)
        return size

    def _insert_free(self, offset_units: int, size_units: int) -> None:
        self._free_by_offset.insert(offset_units, size_units)
        self._free_by_size.insert(size_units << _SHIFT | offset_units, 0)

    def _remove_free(self, offset_units: int, size_units: int) -> None:
        self._free_by_offset.delete(offset_units)
        self._free_by_size.delete(size_units << _SHIFT | offset_units)

    def _check(self) -> None:
        """Invariants: free and allocated extents tile [0, capacity) exactly, no two free
        extents are adjacent, the two free indexes agree, used + free == capacity. O(n)."""
        unit = self.granularity
        free = [(off * unit, size * unit) for off, size in self._free_by_offset.items()]
        self._free_by_offset._check()
        self._free_by_size._check()
        by_size = {key for key, _ in self._free_by_size.items()}
        assert len(by_size) == len(free) == len(self._free_by_size)
        assert by_size == {(size << _SHIFT | off) for off, size in self._free_by_offset.items()}
        assert all(size > 0 for _, size in free)
        assert sum(self._allocated.values()) == self._used
        assert self._used + sum(size for _, size in free) == self.capacity
        extents = sorted(
            [(off, size, True) for off, size in free]
            + [(off, size, False) for off, size in self._allocated.items()]
        )
        position, previous_free = 0, False
        for off, size, is_free in extents:
            assert off == position, f"gap or overlap at {position}: next extent at {off}"
            assert off % unit == 0
            assert size % unit == 0
            assert size > 0
            assert not (is_free and previous_free), f"adjacent free extents at {off}"
            position, previous_free = off + size, is_free
        assert position == self.capacity
