"""A set of ints with O(1) add, discard and uniform random choice."""

from __future__ import annotations

import random
from collections.abc import Iterator

__all__ = ["RandomSet"]


class RandomSet:
    """Keys in a dense list plus each key's position: ``add``, ``discard``,
    ``__contains__`` and ``choice`` are O(1); iteration is O(n) in no fixed order."""

    __slots__ = ("_items", "_pos")

    def __init__(self) -> None:
        self._items: list[int] = []
        self._pos: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: int) -> bool:
        return key in self._pos

    def __iter__(self) -> Iterator[int]:
        return iter(self._items)

    def add(self, key: int) -> None:
        if key not in self._pos:
            self._pos[key] = len(self._items)
            self._items.append(key)

    def discard(self, key: int) -> None:
        pos = self._pos.pop(key, None)
        if pos is None:
            return
        last = self._items.pop()
        if pos < len(self._items):
            self._items[pos] = last
            self._pos[last] = pos

    def clear(self) -> None:
        self._items.clear()
        self._pos.clear()

    def choice(self, rng: random.Random, exclude: int | None = None) -> int | None:
        """A uniformly random key other than ``exclude``; None when there is none."""
        n = len(self._items)
        if exclude is not None and exclude in self._pos:
            if n <= 1:
                return None
            i = rng.randrange(n - 1)
            # Skip the excluded key's slot: positions past it shift down by one.
            if i >= self._pos[exclude]:
                i += 1
            return self._items[i]
        return self._items[rng.randrange(n)] if n else None

    def _check(self) -> None:
        assert len(self._items) == len(self._pos)
        assert all(self._items[p] == k for k, p in self._pos.items())
