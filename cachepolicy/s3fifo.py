"""S3-FIFO (Yang et al., SOSP 2023): three FIFO queues, quick demotion of one-hit items.

New items enter a small FIFO queue S (about 10 % of the cache); an item leaving S is
promoted to the main FIFO queue M if it was hit while in S, else evicted and its key
remembered in a ghost FIFO queue G. A new item whose key is in G goes straight to M.
Items leaving M are reinserted at its head while their (capped) hit counter is
positive, decrementing it: a CLOCK-like second chance. Sizes count in bytes, so the
10 % is of the bytes the policy tracks.
"""

from __future__ import annotations

from collections import OrderedDict

from semcached.index.eviction import AccessFeatures, EvictionPolicy

__all__ = ["S3FifoPolicy"]


class S3FifoPolicy(EvictionPolicy):
    """S3-FIFO. ``admit``, ``record_access`` and ``forget`` are O(1);
    ``choose_victim`` is O(1) amortised (each promotion or second chance it performs
    was paid for by an earlier admission or hit).

    ``small_ratio`` is S's share of the tracked bytes, ``max_freq`` the cap of the hit
    counter; the ghost queue holds at most as many keys as M holds items.
    """

    def __init__(self, *, small_ratio: float = 0.1, max_freq: int = 3) -> None:
        if not 0 < small_ratio < 1:
            raise ValueError("small_ratio must be in (0, 1)")
        self._small_ratio = small_ratio
        self._max_freq = max_freq
        self._small: OrderedDict[int, None] = OrderedDict()  # oldest first
        self._main: OrderedDict[int, None] = OrderedDict()
        self._ghost: OrderedDict[int, None] = OrderedDict()
        self._size: dict[int, int] = {}
        self._freq: dict[int, int] = {}
        self._small_bytes = 0
        self._bytes = 0
        self._incoming: int | None = None
        self._chosen: int | None = None

    def __len__(self) -> int:
        return len(self._size)

    def admit(self, key: int, size: int, features: AccessFeatures | None = None) -> None:
        if key in self._size:
            self.record_access(key, features)
            return
        self._chosen = None
        size = max(size, 1)
        self._size[key] = size
        self._freq[key] = 0
        self._bytes += size
        if key in self._ghost:  # remembered: it was evicted too early
            del self._ghost[key]
            self._main[key] = None
        else:
            self._small[key] = None
            self._small_bytes += size
        self._incoming = key

    def record_access(self, key: int, features: AccessFeatures | None = None) -> None:
        freq = self._freq.get(key)
        if freq is not None and freq < self._max_freq:
            self._freq[key] = freq + 1

    def forget(self, key: int) -> None:
        size = self._size.pop(key, None)
        if size is None:
            return
        del self._freq[key]
        self._bytes -= size
        if key in self._small:
            del self._small[key]
            self._small_bytes -= size
            if key == self._chosen:  # evicted from S: remember the key
                self._ghost[key] = None
                while len(self._ghost) > max(len(self._main), 1):
                    self._ghost.popitem(last=False)
        else:
            del self._main[key]
        if key == self._incoming:
            self._incoming = None
        self._chosen = None

    def choose_victim(self) -> int | None:
        if self._chosen is not None:
            return self._chosen
        if not self._size:
            return None
        incoming = self._incoming
        while True:
            small_other = self._small_bytes
            main_other = len(self._main)
            if incoming in self._small:
                small_other -= self._size[incoming]  # type: ignore[index]
            elif incoming in self._main:
                main_other -= 1
            if small_other > 0 and (
                small_other >= self._small_ratio * self._bytes or not main_other
            ):
                key = next(iter(self._small))  # not the incoming item: that one is newest
                if self._freq[key] > 0:  # hit while in S: promote
                    del self._small[key]
                    self._small_bytes -= self._size[key]
                    self._main[key] = None
                    self._freq[key] = 0
                    continue
            elif main_other:
                key = next(iter(self._main))
                if key == incoming:  # a second chance moved it ahead; it stays
                    self._main.move_to_end(key)
                    continue
                if self._freq[key] > 0:  # second chance
                    self._freq[key] -= 1
                    self._main.move_to_end(key)
                    continue
            else:  # only the incoming item is tracked
                key = next(iter(self._small or self._main))
            self._chosen = key
            return key

    def _check(self) -> None:
        """Invariants: S and M partition the keys; byte counts add up; G is disjoint."""
        assert set(self._small).isdisjoint(self._main)
        assert set(self._small) | set(self._main) == set(self._size) == set(self._freq)
        assert set(self._ghost).isdisjoint(self._size)
        assert self._small_bytes == sum(self._size[k] for k in self._small)
        assert self._bytes == sum(self._size.values())
        assert all(0 <= f <= self._max_freq for f in self._freq.values())
        assert self._incoming is None or self._incoming in self._size
        assert self._chosen is None or self._chosen in self._size
