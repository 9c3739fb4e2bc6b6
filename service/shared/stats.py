"""The shared tier's counters, kept by the shipper and the consumer, read by metrics."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["LAG_BUCKETS_S", "SharingStats"]

LAG_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)


@dataclass(slots=True)
class SharingStats:
    """Monotone counters (but ``redis_up``) since start. Loop-only."""

    shipped: int = 0
    ship_failures: int = 0
    applied_puts: int = 0
    applied_deletes: int = 0
    applied_feedback: int = 0
    own_skipped: int = 0
    malformed: int = 0
    bootstraps: int = 0
    bootstrap_entries: int = 0
    read_failures: int = 0
    redis_up: bool = False
    # Where each applied change's replication lag goes (the metrics' histogram).
    observe: Callable[[float], None] = lambda _lag_s: None
