"""Eviction policies by name: what ``eviction = "..."`` in a category's configuration
builds."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, get_args

from semcached.cachepolicy.bucket_bits import BucketBits
from semcached.cachepolicy.lru import LruPolicy
from semcached.cachepolicy.lru_guard import LruGuard
from semcached.cachepolicy.onebit import QueueFollower
from semcached.cachepolicy.reuse_value import ReuseValuePolicy
from semcached.cachepolicy.s3fifo import S3FifoPolicy
from semcached.index.eviction import EvictionPolicy

__all__ = ["EVICTION_POLICIES", "EvictionName", "eviction_factory"]

EvictionName = Literal["lru", "s3fifo", "onebit", "reuse"]
EVICTION_POLICIES: tuple[str, ...] = get_args(EvictionName)


def _onebit() -> EvictionPolicy:
    """Discard bits from a per-bucket table of Belady's labels on the recent history
    (trained online, in a background thread), followed on two recency queues, inside
    the LRU guard: never more than 0.5 % of requests (+ one cache's worth) worse than
    LRU. (bench/eviction.py's ``onebit-lgbm`` row: the same bits from LightGBM over
    richer features in the marking guard, about 10x the cost per access.)"""
    return LruGuard(QueueFollower(BucketBits(background=True)))


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
