"""Eviction policies: which cached item goes when a cache is over its quota.

Every cache of the daemon talks to eviction through :class:`EvictionPolicy`, so a
category (or, later, a KV tier) can switch policy by configuration
(:func:`semcached.cachepolicy.policies.eviction_factory`). The policy only tracks
keys and decides; the cache does the removing and then calls
:meth:`EvictionPolicy.forget`.

The protocol of a cache with a policy:

* a new item: ``admit(key, size, features)``; a hit: ``record_access(key, features)``
  (``features`` is optional everywhere: :class:`AccessFeatures` or None);
* then, while the cache is over its quota: ``victim = choose_victim()``, remove the
  victim, ``forget(victim)``. A policy never names the item admitted last while it
  tracks another one (the item that faulted is loaded, something else goes);
* an item removed for another reason (expired, deleted): ``forget(key)``. A policy
  tells an eviction from other removals by ``forget`` naming the key it chose.

Policies: :class:`LruPolicy`, :class:`~semcached.cachepolicy.s3fifo.S3FifoPolicy`,
:class:`~semcached.cachepolicy.reuse_value.ReuseValuePolicy` (GDSF) and the one-bit
policies of :mod:`semcached.cachepolicy.onebit`.
"""

from __future__ import annotations

from typing import Protocol

from semcached.cachepolicy.features import AccessFeatures
from semcached.cachepolicy.lru import LruPolicy

__all__ = ["AccessFeatures", "EvictionPolicy", "LruPolicy"]


class EvictionPolicy(Protocol):
    """Tracks the keys of one cache and names the next victim."""

    def admit(self, key: int, size: int, features: AccessFeatures | None = None) -> None:
        """A new item entered the cache."""

    def record_access(self, key: int, features: AccessFeatures | None = None) -> None:
        """An item was read (a cache hit); unknown keys are ignored."""

    def forget(self, key: int) -> None:
        """An item left the cache (evicted, expired or deleted); unknown keys are ignored."""

    def choose_victim(self) -> int | None:
        """The key to evict next, without removing it; None when nothing is tracked.

        Calling it again before any other call names the same key.
        """

    def __len__(self) -> int: ...
