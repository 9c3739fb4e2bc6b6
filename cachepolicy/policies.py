"""Eviction policies by name: what ``eviction = "..."`` in a category's configuration
builds."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, get_args

from semcached.cachepolicy.lru import LruPolicy
from semcached.cachepolicy.onebit import DiscardFollower
from semcached.cachepolicy.predictor import LearnedBits
from semcached.cachepolicy.reuse_value import ReuseValuePolicy
from semcached.cachepolicy.s3fifo import S3FifoPolicy
from semcached.index.eviction import EvictionPolicy

__all__ = ["EVICTION_POLICIES", "EvictionName", "eviction_factory"]

EvictionName = Literal["lru", "s3fifo", "onebit", "reuse"]
EVICTION_POLICIES: tuple[str, ...] = get_args(EvictionName)


def _onebit() -> EvictionPolicy:
    """Discard bits learned by LightGBM from Belady labels of the recent history,
    followed inside the robustness guard; training runs in a background thread."""
    return DiscardFollower(LearnedBits(model="lightgbm", background=True), guard=True)


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
