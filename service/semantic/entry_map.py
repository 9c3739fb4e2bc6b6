"""The entry table's id -> :class:`Entry` map: columns for restored entries, a dict for the rest.

A restart used to build one Python tuple (and three number objects and a dict slot)
per stored entry before ``/readyz``: about 250 bytes and 0.9 us each, so 250 MB and
0.9 s at a million entries. Here the entries found in LMDB at start stay in the
numpy columns they were read into (id, created, expires, size, group: 37 bytes each,
id-sorted); an entry becomes a tuple in the dict only when it is read with
:meth:`EntryMap.get` (a lookup's candidate, a victim: what is read once is usually
read again) or written. Entries added after start go to the dict directly.

Reads of restored entries that stay in the columns cost a binary search (about
1-2 us); the dict answers the others as before. Loop-only, like the table.
"""

from __future__ import annotations

import functools
import itertools
import operator
from collections.abc import Iterator, Sequence
from typing import NamedTuple

import numpy as np
from numpy.typing import NDArray

__all__ = ["Entry", "EntryMap"]


class Entry(NamedTuple):
    """What the engine keeps in memory per entry to filter and account without LMDB."""

    namespace: str
    category: str
    partition: str
    created_at: float
    expires_at: float
    size: int


# Entry from a 6-tuple in C: NamedTuple's own __new__ is a Python function (~1 us).
_new_entry = functools.partial(tuple.__new__, Entry)

Group = tuple[str, str, str]  # (namespace, category, partition)

_COMPACT_MIN = 4096  # rows gone from the columns before they are worth compacting


class EntryMap:
    """``dict[int, Entry]``'s methods that the engine uses, over columns and a dict."""

    def __init__(self) -> None:
        self._dict: dict[int, Entry] = {}
        self._pending: list[tuple[int, NDArray[np.void]]] = []  # (group, META rows)
        self._groups: list[Group] = []
        self._group_of: dict[Group, int] = {}
        self._ids: NDArray[np.uint64] = np.empty(0, dtype=np.uint64)
        self._created: NDArray[np.float64] = np.empty(0, dtype=np.float64)
        self._expires: NDArray[np.float64] = np.empty(0, dtype=np.float64)
        self._size: NDArray[np.int64] = np.empty(0, dtype=np.int64)
        self._group: NDArray[np.int32] = np.empty(0, dtype=np.int32)
        self._held: NDArray[np.bool_] = np.empty(0, dtype=bool)  # row still answers here
        self._in_columns = 0  # rows held, pending ones included

    # -- restore ---------------------------------------------------------------------

    def add_restored(self, group: Group, records: NDArray[np.void]) -> None:
        """Keep LMDB bookkeeping records (``id``, ``created_at``, ``expires_at``,
        ``size`` fields) of entries not in the map. O(1): merged at the next read."""
        code = self._group_of.get(group)
        if code is None:
            code = self._group_of[group] = len(self._groups)
            self._groups.append(group)
        self._pending.append((code, records))
        self._in_columns += len(records)

    def _settle(self) -> None:
        """Merge pending records into the columns (id order). O(n log n), vectorised."""
        pending, self._pending = self._pending, []
        held = self._held
        ids = [self._ids[held], *(r["id"].astype(np.uint64) for _, r in pending)]
        created = [self._created[held], *(r["created_at"] for _, r in pending)]
        expires = [self._expires[held], *(r["expires_at"] for _, r in pending)]
        size = [self._size[held], *(r["size"] for _, r in pending)]
        group = [self._group[held], *(np.full(len(r), c, dtype=np.int32) for c, r in pending)]
        all_ids = np.concatenate(ids)
        order = np.argsort(all_ids, kind="stable")
        self._ids = all_ids[order]
        self._created = np.concatenate(created).astype(np.float64)[order]
        self._expires = np.concatenate(expires).astype(np.float64)[order]
        self._size = np.concatenate(size).astype(np.int64)[order]
        self._group = np.concatenate(group)[order]
        self._held = np.ones(len(order), dtype=bool)

    # -- reads -----------------------------------------------------------------------

    def _row(self, key: int) -> int:
        """The held column row of ``key``, or -1. O(log n)."""
        if self._pending:
            self._settle()
        ids = self._ids
        if not ids.size or not 0 <= key < 1 << 64:
            return -1
        i = int(ids.searchsorted(np.uint64(key)))
        if i < ids.size and int(ids[i]) == key and self._held[i]:
            return i
        return -1

    def _entry(self, i: int) -> Entry:
        numbers = (float(self._created[i]), float(self._expires[i]), int(self._size[i]))
        return _new_entry(self._groups[int(self._group[i])] + numbers)

    def get(self, key: int, default: Entry | None = None) -> Entry | None:
        """The entry of ``key``; a restored one moves to the dict (read again soon)."""
        entry = self._dict.get(key)
        if entry is not None or not self._in_columns:
            return entry if entry is not None else default
        i = self._row(key)
        if i < 0:
            return default
        entry = self._dict[key] = self._entry(i)
        self._drop_row(i)
        return entry

    def peek(self, key: int) -> Entry | None:
        """:meth:`get` that leaves a restored entry in the columns (a one-off read)."""
        entry = self._dict.get(key)
        if entry is not None or not self._in_columns:
            return entry
        i = self._row(key)
        return None if i < 0 else self._entry(i)

    def peek_many(self, keys: Sequence[int]) -> list[Entry | None]:
        """:meth:`peek` of each of ``keys`` (ids in ``[0, 2**64)``), one vectorised
        search for those in the columns: about 0.5 us each instead of 2-3. O(m log n)."""
        found: list[Entry | None] = [self._dict.get(key) for key in keys]
        if not self._in_columns:
            return found
        if self._pending:
            self._settle()
        rest = [i for i, entry in enumerate(found) if entry is None]
        if not rest or not self._ids.size:
            return found
        wanted = np.fromiter((keys[i] for i in rest), dtype=np.uint64, count=len(rest))
        # Sorted keys let numpy narrow each search from the last: a random binary
        # search into millions of ids costs ~20 cache misses.
        order = np.argsort(wanted)
        pos = np.empty(len(wanted), dtype=np.intp)
        pos[order] = self._ids.searchsorted(wanted[order])
        np.minimum(pos, self._ids.size - 1, out=pos)
        hit = (self._ids[pos] == wanted) & self._held[pos]
        rows = pos[hit]
        groups = [self._groups[g] for g in self._group[rows].tolist()]
        numbers = zip(
            self._created[rows].tolist(),
            self._expires[rows].tolist(),
            self._size[rows].tolist(),
            strict=True,
        )
        made = map(_new_entry, map(operator.add, groups, numbers))  # tuples built in C
        for i, entry in zip(itertools.compress(rest, hit.tolist()), made, strict=True):
            found[i] = entry
        return found

    def __getitem__(self, key: int) -> Entry:
        entry = self.get(key)
        if entry is None:
            raise KeyError(key)
        return entry

    def __contains__(self, key: object) -> bool:
        if key in self._dict:
            return True
        if not isinstance(key, int | np.integer) or not self._in_columns:
            return False
        return self._row(int(key)) >= 0

    def __len__(self) -> int:
        return len(self._dict) + self._in_columns

    def __iter__(self) -> Iterator[int]:
        return iter([key for key, _ in self.items()])

    def items(self) -> list[tuple[int, Entry]]:
        """Every (id, entry), as a list (callers may change the map meanwhile). O(n)."""
        if self._pending:
            self._settle()
        rows = np.flatnonzero(self._held).tolist()
        ids = self._ids[rows].tolist()
        return [*self._dict.items(), *((k, self._entry(i)) for k, i in zip(ids, rows, strict=True))]

    # -- writes ----------------------------------------------------------------------

    def __setitem__(self, key: int, entry: Entry) -> None:
        if self._in_columns:
            i = self._row(key)
            if i >= 0:
                self._drop_row(i)
        self._dict[key] = entry

    def pop(self, key: int, default: Entry | None = None) -> Entry | None:
        entry = self._dict.pop(key, None)
        if entry is not None or not self._in_columns:
            return entry if entry is not None else default
        i = self._row(key)
        if i < 0:
            return default
        entry = self._entry(i)
        self._drop_row(i)
        return entry

    def _drop_row(self, i: int) -> None:
        self._held[i] = False
        self._in_columns -= 1
        gone = len(self._held) - self._in_columns
        if gone > max(_COMPACT_MIN, self._in_columns):  # mostly holes: compact
            self._settle()

    def any_due(self, now: float) -> bool:
        """Whether any entry expires at or before ``now`` (the columns vectorised,
        the dict's entries one by one). O(n) in numpy + O(dict)."""
        if self._pending:
            self._settle()
        if bool((self._expires[self._held] <= now).any()):
            return True
        return any(entry.expires_at <= now for entry in self._dict.values())

    # -- introspection ---------------------------------------------------------------

    def column_bytes(self) -> int:
        """Bytes of the columns (the dict's entries are Python objects: walk them)."""
        arrays = (self._ids, self._created, self._expires, self._size, self._group, self._held)
        return sum(int(a.nbytes) for a in arrays) + sum(int(r.nbytes) for _, r in self._pending)

    @property
    def promoted(self) -> dict[int, Entry]:
        """The entries held as Python tuples (added since start, or read)."""
        return self._dict
