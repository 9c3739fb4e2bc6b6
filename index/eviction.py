"""The eviction protocol: how a cache talks to the policy that picks its victims.

It lives here, below the policies, because the storage tiers of this layer (the KV
tiers) drive a policy; the policies themselves are in :mod:`semcached.cachepolicy`
(:func:`semcached.cachepolicy.policies.eviction_factory` builds one by name). The
policy only tracks keys and decides; the cache does the removing and then calls
:meth:`EvictionPolicy.forget`.

The protocol of a cache with a policy:

* a new item: ``admit(key, size, features)``; a hit: ``record_access(key, features)``
  (``features`` is optional everywhere: :class:`AccessFeatures` or None);
* then, while the cache is over its quota: ``victim = choose_victim()``, remove the
  victim, ``forget(victim)``. A policy never names the item admitted last while it
  tracks another one (the item that faulted is loaded, something else goes);
* an item removed for another reason (expired, deleted): ``forget(key)``. A policy
  tells an eviction from other removals by ``forget`` naming the key it chose;
* optional hooks have defaults in the protocol (a policy subclasses it explicitly to
  inherit them): ``set_cost(key, saved)`` tells a cost-aware policy what keeping the
  item saves; the others ignore it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

__all__ = ["AccessFeatures", "EvictionPolicy"]


@dataclass(frozen=True, slots=True)
class AccessFeatures:
    """What the cache knows about one access besides the key; all optional.

    ``now`` and ``expires_at`` are seconds on the cache's clock, ``similarity`` is the
    cosine similarity of the lookup that hit, ``category`` a small integer code.
    """

    now: float | None = None
    expires_at: float | None = None
    similarity: float | None = None
    category: int | None = None


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

    def set_cost(self, key: int, saved: float) -> None:
        """What keeping ``key`` saves per reuse (e.g. prefill tokens); ignored by default."""
        return

    def __len__(self) -> int: ...
