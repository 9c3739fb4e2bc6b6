"""Eviction policies by name: what ``eviction = "..."`` in a category's configuration
builds."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, get_args

from semcached.cachepolicy.bucket_bits import BucketTable
from semcached.cachepolicy.lru import LruPolicy
from semcached.cachepolicy.reuse_value import ReuseValuePolicy
from semcached.cachepolicy.s3fifo import S3FifoPolicy
from semcached.ext.onebit import GuardedFollower
from semcached.index.eviction import EvictionPolicy

__all__ = ["EVICTION_POLICIES", "EvictionName", "eviction_factory"]

EvictionName = Literal["lru", "s3fifo", "onebit", "reuse"]
EVICTION_POLICIES: tuple[str, ...] = get_args(EvictionName)


def _onebit() -> EvictionPolicy:
    """Discard bits from a per-bucket table of Belady's labels on the recent history
    (trained online, in a background thread), followed on two recency queues, inside
    the LRU guard: never worse than LRU by more than 0.5 % of requests plus one
    cache's worth. Compiled (semcached.ext.onebit); its pure-Python twin is
    ``LruGuard(QueueFollower(BucketBits()))``."""
    return GuardedFollower(BucketTable(background=True))


_FACTORIES: dict[str, Callable[[], EvictionPolicy]] = {
    "lru": LruPolicy,
    "s3fifo": S3FifoPolicy,
    "onebit": _onebit,
    "reuse": ReuseValuePolicy,
}


def eviction_factory(name: str) -> Callable[[], EvictionPolicy]:
    """A callable that makes a fresh policy of that name; ValueError for unknown names."""
    try:
        return _FACTORIES[name]
    except KeyError:
        known = ", ".join(EVICTION_POLICIES)
        raise ValueError(f"unknown eviction policy {name!r}; known: {known}") from None
