"""Retry timing: capped exponential backoff with full jitter.

Full jitter (a uniform draw between 0 and the capped exponential step) spreads
the retries of many clients that failed together, so they do not return in
lock-step to a daemon that is just restarting.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field

__all__ = ["RETRY_STATUSES", "RetryPolicy"]

# Statuses that mean "not now" rather than "not this": worth another attempt.
RETRY_STATUSES = frozenset({502, 503, 504})


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """``retries`` extra attempts after the first, waiting ``delays()`` between them."""

    retries: int = 3
    base_s: float = 0.05
    cap_s: float = 2.0
    rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.retries < 0 or self.base_s < 0 or self.cap_s < 0:
            raise ValueError("retries, base_s and cap_s must not be negative")

    def delays(self) -> Iterator[float]:
        """The wait before each retry, in seconds: ``retries`` values."""
        for attempt in range(self.retries):
            yield self.rng.uniform(0.0, min(self.cap_s, self.base_s * 2**attempt))
