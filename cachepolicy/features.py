"""Per-access features: what a cache tells its eviction policy, and what a learned
predictor computes from the access history.

A cache passes an :class:`AccessFeatures` with an admission or a hit when it knows
more than the key (the wall time, the entry's expiry, the similarity of the lookup
that hit it, its category); every field is optional, so callers that know nothing
pass nothing. :class:`FeatureTracker` keeps a few numbers per item (last request,
recent gaps, exponentially decayed counters) and turns each access into one row of
:data:`FEATURE_NAMES`, in logical time (the number of accesses the policy has seen),
so rows do not depend on the request rate.
"""

from __future__ import annotations

import math

from semcached.index.eviction import AccessFeatures

__all__ = [
    "EDC_HALF_LIVES",
    "FEATURE_NAMES",
    "GAPS",
    "FeatureTracker",
]

#: How many earlier inter-request gaps of an item a row carries.
GAPS = 4
#: Half-lives, in accesses, of the exponentially decayed request counters.
EDC_HALF_LIVES = (16.0, 256.0, 4096.0, 65536.0)
FEATURE_NAMES: tuple[str, ...] = (
    *(f"log_gap{i}" for i in range(1, GAPS + 1)),
    *(f"edc{int(h)}" for h in EDC_HALF_LIVES),
    "log_count",
    "log_size",
    "log_age",
    "ttl_left_s",
    "similarity",
    "category",
)
_NAN = math.nan
_DECAY = tuple(math.log(2.0) / h for h in EDC_HALF_LIVES)


class _ItemHistory:
    """The numbers kept per tracked item."""

    __slots__ = ("count", "edc", "first", "gaps", "last", "size")

    def __init__(self, tick: int, size: int) -> None:
        self.first = tick
        self.last = tick
        self.count = 0
        self.size = size
        self.gaps: list[float] = []  # most recent first, at most GAPS
        self.edc = [0.0] * len(EDC_HALF_LIVES)


class FeatureTracker:
    """Turns accesses into feature rows. O(1) time per access, O(items) memory.

    Items not requested for ``horizon`` accesses are dropped by :meth:`prune` (the
    caller runs it now and then; it is O(items)).
    """

    def __init__(self, horizon: int = 1 << 18) -> None:
        self.tick = 0
        self.horizon = horizon
        self._items: dict[int, _ItemHistory] = {}

    def __len__(self) -> int:
        return len(self._items)

    def access(self, key: int, size: int | None, features: AccessFeatures | None) -> list[float]:
        """Record one access of ``key`` and return its row (see :data:`FEATURE_NAMES`)."""
        self.tick += 1
        tick = self.tick
        item = self._items.get(key)
        if item is None:
            item = self._items[key] = _ItemHistory(tick, size or 1)
        else:
            gap = float(tick - item.last)
            item.gaps.insert(0, gap)
            del item.gaps[GAPS:]
            for i, decay in enumerate(_DECAY):
                item.edc[i] *= math.exp(-decay * gap)
        if size is not None:
            item.size = size
        item.last = tick
        item.count += 1
        edc = item.edc
        for i in range(len(edc)):
            edc[i] += 1.0
        gaps = item.gaps
        row = [math.log1p(gaps[i]) if i < len(gaps) else _NAN for i in range(GAPS)]
        row.extend(edc)
        row.append(math.log(item.count))
        row.append(math.log(item.size))
        row.append(math.log1p(tick - item.first))
        if features is None:
            row.extend((_NAN, _NAN, _NAN))
        else:
            ttl = (
                features.expires_at - features.now
                if features.expires_at is not None and features.now is not None
                else _NAN
            )
            row.append(ttl)
            row.append(_NAN if features.similarity is None else features.similarity)
            row.append(_NAN if features.category is None else float(features.category))
        return row

    def prune(self) -> int:
        """Drop items idle for longer than the horizon; returns how many. O(items)."""
        cutoff = self.tick - self.horizon
        stale = [k for k, item in self._items.items() if item.last < cutoff]
        for key in stale:
            del self._items[key]
        return len(stale)
