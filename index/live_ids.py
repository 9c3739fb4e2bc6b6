"""A compact set of 64-bit ids: one sorted array plus small sets of recent changes.

A Python ``set`` of a million ints costs about 70 bytes per id (the table slot and
the int object) and ``set(array.tolist())`` takes ~0.4 s per million at load. Here
the bulk of the ids sit in a sorted ``uint64`` array (8 bytes each), and the ids
added or removed since the last merge in two Python sets. The sets are merged into
the array once they hold more than a sixteenth of it, so they stay small and a
merge (O(n log n) in numpy) costs about a microsecond per change, amortised.

Single ids are looked up with a binary search (O(log n), ~1 us); batches with
:meth:`LiveIds.contains_many` (vectorised). Not thread-safe: the owner locks.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = ["LiveIds"]

_MERGE_MIN = 4096  # changes kept in the sets before a merge is considered


class LiveIds:
    """A set of ids in ``[0, 2**64)``: ``len``, ``in``, add, discard, sorted export."""

    def __init__(self, ids: ArrayLike = ()) -> None:
        """``ids``: the initial members, in any order (duplicates allowed). O(n log n),
        O(n) when they are sorted and unique already (as :meth:`to_array` writes them)."""
        self._base = _sorted_unique(np.asarray(ids, dtype=np.uint64))
        self._added: set[int] = set()  # members not in _base
        self._removed: set[int] = set()  # entries of _base that are no longer members

    def __len__(self) -> int:
        return len(self._base) - len(self._removed) + len(self._added)

    def __contains__(self, entry_id: object) -> bool:
        if not isinstance(entry_id, int | np.integer):
            return False
        value = int(entry_id)
        if value in self._added:
            return True
        return value not in self._removed and self._in_base(value)

    def __iter__(self) -> Iterator[int]:
        return iter(self.to_array().tolist())

    def _in_base(self, value: int) -> bool:
        if not 0 <= value < 1 << 64:
            return False
        base = self._base
        i = int(base.searchsorted(np.uint64(value)))
        return i < len(base) and int(base[i]) == value

    def contains_many(self, ids: NDArray[np.uint64]) -> NDArray[np.bool_]:
        """Membership of each of ``ids`` (uint64), vectorised over the array. O(m log n)."""
        base = self._base
        if len(base):
            pos = np.minimum(base.searchsorted(ids), len(base) - 1)
            found: NDArray[np.bool_] = base[pos] == ids
        else:
            found = np.zeros(len(ids), dtype=bool)
        if self._added or self._removed:
            as_int = ids.tolist()
            for row, value in enumerate(as_int):
                if value in self._added:
                    found[row] = True
                elif value in self._removed:
                    found[row] = False
        return found

    def add_many(self, ids: Iterable[int]) -> None:
        """Add ids (members already are left as they are). O(1) each, amortised."""
        added, removed = self._added, self._removed
        for value in ids:
            if value in removed:
                removed.discard(value)
            elif value not in added and not self._in_base(value):
                added.add(value)
        self._maybe_merge()

    def discard(self, entry_id: int) -> None:
        """Remove an id if it is a member. O(log n)."""
        if entry_id in self._added:
            self._added.discard(entry_id)
        elif entry_id not in self._removed and self._in_base(entry_id):
            self._removed.add(entry_id)
            self._maybe_merge()

    def to_array(self) -> NDArray[np.uint64]:
        """Every member, sorted ascending (a fresh array). O(n + changes log changes).

        Does not change the set, so concurrent readers (under a shared lock) may call it.
        """
        return self._merged()

    def nbytes(self) -> int:
        """About how much memory the ids take (the array and the change sets)."""
        per_change = 70  # a set slot and an int object, as measured for set[int]
        return int(self._base.nbytes) + per_change * (len(self._added) + len(self._removed))

    def _maybe_merge(self) -> None:
        if len(self._added) + len(self._removed) > max(_MERGE_MIN, len(self._base) >> 4):
            self._merge()

    def _merge(self) -> None:
        if self._added or self._removed:
            # The new array first: a reader in between sees the same members either way.
            self._base = self._merged()
            self._added, self._removed = set(), set()

    def _merged(self) -> NDArray[np.uint64]:
        base = self._base
        if not (self._added or self._removed):
            return base.copy()
        if self._removed:
            gone = np.fromiter(self._removed, dtype=np.uint64, count=len(self._removed))
            base = base[~np.isin(base, gone, assume_unique=True)]
        if self._added:
            new = np.fromiter(self._added, dtype=np.uint64, count=len(self._added))
            base = np.concatenate([base, new])
            base.sort(kind="stable")  # timsort: the old array is one sorted run already
        return base


def _sorted_unique(ids: NDArray[np.uint64]) -> NDArray[np.uint64]:
    flat = ids.reshape(-1)
    if flat.size < 2 or bool((flat[1:] > flat[:-1]).all()):
        return flat.copy()
    return np.unique(flat)
