"""Requests per second per tenant: one token bucket each.

A bucket holds up to ``burst`` tokens and refills at ``requests_per_s``; a request
takes one or is refused with the time until one is there (the ``Retry-After``). The
buckets are keyed by tenant name, and tenants come from the tokens file, so their
number is bounded by the operator, not by callers. Loop-only (no lock).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from semcached.service.auth.tenants import Tenant

__all__ = ["RateLimiter"]


@dataclass(slots=True)
class _Bucket:
    rate: float
    burst: int
    tokens: float
    at: float


class RateLimiter:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}

    def acquire(self, tenant: Tenant) -> float:
        """Take one request from ``tenant``'s bucket: 0.0 if allowed, else the seconds
        until the next one would be (the bucket is left as it was)."""
        rate, burst = tenant.limits.requests_per_s, tenant.limits.burst
        if rate <= 0:
            return 0.0
        now = self._clock()
        bucket = self._buckets.get(tenant.name)
        if bucket is None or bucket.rate != rate or bucket.burst != burst:
            # New tenant, or its limits changed on a reload: start full.
            bucket = self._buckets[tenant.name] = _Bucket(rate, burst, float(burst), now)
        bucket.tokens = min(float(burst), bucket.tokens + (now - bucket.at) * rate)
        bucket.at = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0.0
        return (1.0 - bucket.tokens) / rate

    def forget_others(self, names: set[str]) -> None:
        """Drop the buckets of tenants no longer in the table (after a reload)."""
        for name in set(self._buckets) - names:
            del self._buckets[name]
