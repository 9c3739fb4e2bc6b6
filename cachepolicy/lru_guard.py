"""A guard that keeps any eviction policy within a stated distance of LRU.

:class:`LruGuard` wraps a policy (the *inner* one, e.g. a learned one) and runs an
LRU *shadow* beside it: the keys an LRU cache of the same capacity would hold, with
their sizes, in recency order. The shadow never touches the data; it only counts
the misses LRU would have had on the same requests. The capacity is the cache's own:
the shadow is trimmed, oldest first, to the bytes the real cache holds after each
call, so it follows quota changes, expiries and deletions like the cache does.

While the inner policy's misses exceed LRU's by more than ``slack`` x requests, the
guard *follows LRU lazily*: its victim is a cached key the shadow no longer holds
(the oldest such), else the shadow's least recent cached key. It hands the choice
back to the inner policy once the excess has fallen to half the allowance.

The bound (unit sizes). Let n be the requests so far, k the cache's capacity in
items, M and L the misses of the guarded cache and of LRU. Then at all times

    M <= L + slack * n + k + 1.

Why: while the inner policy chooses, the guard switches to LRU on the first miss that
takes M - L above slack * n, so M - L <= slack * n + 1 then. While following LRU, let
D = M - L and P = |cached keys the shadow does not hold| <= k. A miss of the cache
on a key LRU holds evicts a key LRU does not hold (D + 1, P - 1); a miss of LRU alone
may add one key to P (D - 1, P + 1); a miss of both evicts one outside key and LRU
drops at most one (D, P unchanged or lower). So D + P never grows while following,
and D stays below its value at the switch plus k. With sizes the guard works the
same way, but the bound holds only for the unit-size case it is proved for.

Cost: O(1) per call on top of the inner policy (ordered-dict moves), O(capacity)
memory for the shadow. Counters: ``lru_misses``, ``misses``, ``switches`` and
``following_lru``.
"""

from __future__ import annotations

from collections import OrderedDict

from semcached.index.eviction import AccessFeatures, EvictionPolicy

__all__ = ["LruGuard"]


class LruGuard(EvictionPolicy):
    """``inner``'s victims while its misses stay within ``slack`` x requests of an LRU
    shadow's, LRU's (lazily) otherwise. See the module docstring for the bound."""

    def __init__(self, inner: EvictionPolicy, *, slack: float = 0.005) -> None:
        if not 0 <= slack < 1:
            raise ValueError("slack must be in [0, 1)")
        self.inner = inner
        self.slack = slack
        self._size: dict[int, int] = {}  # cached key -> size
        self._bytes = 0
        self._shadow: OrderedDict[int, int] = OrderedDict()  # LRU's keys, oldest first
        self._shadow_bytes = 0
        self._outside: OrderedDict[int, None] = OrderedDict()  # cached, not in the shadow
        self._incoming: int | None = None
        self._chosen: int | None = None
        self.requests = 0
        self.misses = 0
        self.lru_misses = 0
        self.switches = 0
        self.following_lru = False

    def __len__(self) -> int:
        return len(self._size)

    # -- the protocol --------------------------------------------------------------------

    def admit(self, key: int, size: int, features: AccessFeatures | None = None) -> None:
        if key in self._size:
            self.record_access(key, features)
            return
        self._chosen = None
        size = max(size, 1)
        self._size[key] = size
        self._bytes += size
        self.requests += 1
        self.misses += 1
        self._shadow_access(key, size)
        self.inner.admit(key, size, features)
        self._incoming = key
        self._steer()

    def record_access(self, key: int, features: AccessFeatures | None = None) -> None:
        size = self._size.get(key)
        if size is None:
            return
        self._chosen = None
        self.requests += 1
        shadow = self._shadow
        if shadow.get(key) == size:  # an LRU hit too (the common case, inline)
            shadow.move_to_end(key)
            self.inner.record_access(key, features)
            return
        self._shadow_access(key, size)
        self.inner.record_access(key, features)
        self._steer()

    def forget(self, key: int) -> None:
        size = self._size.pop(key, None)
        if size is None:
            return
        evicted = key == self._chosen
        self._chosen = None
        self._bytes -= size
        self._outside.pop(key, None)
        if key == self._incoming:
            self._incoming = None
        if not evicted:  # expired or deleted: gone from LRU's cache too
            shadow_size = self._shadow.pop(key, None)
            if shadow_size is not None:
                self._shadow_bytes -= shadow_size
        self.inner.forget(key)
        self._trim_shadow()

    def choose_victim(self) -> int | None:
        if self._chosen is not None:
            return self._chosen
        if not self._size:
            return None
        victim = self._lru_victim() if self.following_lru else self.inner.choose_victim()
        self._chosen = victim
        return victim

    def set_cost(self, key: int, saved: float) -> None:
        self.inner.set_cost(key, saved)

    # -- internals -----------------------------------------------------------------------

    def _shadow_access(self, key: int, size: int) -> None:
        if key in self._shadow:
            self._shadow.move_to_end(key)
            self._shadow_bytes += size - self._shadow[key]
            self._shadow[key] = size
        else:
            self.lru_misses += 1
            self._shadow[key] = size
            self._shadow_bytes += size
            self._outside.pop(key, None)
        self._trim_shadow()

    def _trim_shadow(self) -> None:
        """LRU's evictions: down to the bytes the cache holds now."""
        while self._shadow_bytes > self._bytes:
            key, size = self._shadow.popitem(last=False)
            self._shadow_bytes -= size
            if key in self._size:
                self._outside[key] = None

    def _steer(self) -> None:
        """Run after each miss (the cache's or the shadow's): the excess only grows
        then, so switching to LRU on time keeps the bound; the switch back may wait
        for the next miss."""
        excess = self.misses - self.lru_misses
        allowance = self.slack * self.requests
        if not self.following_lru:
            if excess > allowance:
                self.following_lru = True
                self.switches += 1
        elif excess <= allowance / 2:
            self.following_lru = False

    def _lru_victim(self) -> int | None:
        incoming = self._incoming if len(self._size) > 1 else None
        for key in self._outside:
            if key != incoming:
                return key
        for key in self._shadow:
            if key in self._size and key != incoming:
                return key
        return self.inner.choose_victim()

    def _check(self) -> None:
        """Invariants between the cache's keys, the shadow and the outside set."""
        assert self._bytes == sum(self._size.values())
        assert self._shadow_bytes == sum(self._shadow.values())
        assert self._shadow_bytes <= self._bytes or not self._shadow
        assert set(self._outside) == set(self._size) - set(self._shadow)
        assert self.lru_misses <= self.requests
        assert self._chosen is None or self._chosen in self._size
        assert len(self.inner) == len(self._size)
