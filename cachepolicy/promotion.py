"""When a chunk is hot enough to earn a place in GPU memory.

Device memory is the scarcest tier: a chunk read once and never again would only
push out one that is reused. A chunk is promoted to a GPU when a client asks for
device handles and :class:`HitCountPromotion` says it is hot: read at least
``min_hits`` times (its hits count every plan and read, so a chunk that the planner
keeps choosing qualifies on its second use). Colder chunks are handed out from the
host tier, which the client copies to its device itself.
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["HitCountPromotion", "PromotionPolicy"]


class PromotionPolicy(Protocol):
    """Decides promotion into a faster tier. Pure: no state of its own."""

    def should_promote(self, hits: int, nbytes: int) -> bool:
        """Whether a chunk read ``hits`` times (this read included), of ``nbytes``,
        should be copied into the faster tier now."""
        ...


class HitCountPromotion:
    """Promote from the ``min_hits``-th read on (1: every chunk, on its first read). O(1)."""

    def __init__(self, min_hits: int = 2) -> None:
        if min_hits < 1:
            raise ValueError(f"min_hits must be at least 1, not {min_hits}")
        self.min_hits = min_hits

    def should_promote(self, hits: int, nbytes: int) -> bool:
        return hits >= self.min_hits
