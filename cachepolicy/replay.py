"""Replay a request trace through a policy: the cache loop that tests and benchmarks
share with the daemon's engines (admit, then evict while over capacity)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from semcached.index.eviction import EvictionPolicy

__all__ = ["replay"]


def replay(
    policy: EvictionPolicy,
    keys: Sequence[int],
    capacity: int,
    sizes: Sequence[int] | None = None,
    *,
    check: Callable[[], None] | None = None,
) -> int:
    """The number of misses of a cache of ``capacity`` (items, or bytes when ``sizes``
    is given) run by ``policy`` over ``keys``. An item larger than the cache is not
    admitted. ``check`` runs after every request (an invariant check in tests).
    O(n) policy calls."""
    cached: dict[int, int] = {}
    used = 0
    misses = 0
    for i, key in enumerate(keys):
        if key in cached:
            policy.record_access(key)
        else:
            misses += 1
            size = 1 if sizes is None else sizes[i]
            if size <= capacity:
                cached[key] = size
                used += size
                policy.admit(key, size)
                while used > capacity:
                    victim = policy.choose_victim()
                    if victim is None or victim not in cached:
                        raise AssertionError(f"policy named {victim!r}, not a cached key")
                    used -= cached.pop(victim)
                    policy.forget(victim)
        if check is not None:
            check()
    return misses
