"""Leases: what pins shared-memory extents of the host tier for a client.

A lease holds pins ``(variant id, offset)`` on the host tier until it is released or
its deadline (monotonic clock) passes; while pinned, an extent is never reused, even if
its variant is demoted or deleted. At most ``max_leases`` live at once.

Not thread-safe on its own: the engine calls it with its lock held.
"""

from __future__ import annotations

import heapq
import secrets
import time
from collections.abc import Callable

from semcached.errors import BadRequestError, ServiceUnavailableError
from semcached.index.kv_tiers import HostTier
from semcached.protocol.codes import ErrorCode
from semcached.service.kv.types import Lease

__all__ = ["LeaseTable"]


class LeaseTable:
    """Live leases by id, and their deadlines in a heap (expiry is O(log n) per lease)."""

    def __init__(
        self,
        *,
        timeout_s: float,
        max_lease_s: float,
        max_leases: int,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.timeout_s = timeout_s
        self.max_lease_s = max_lease_s
        self.max_leases = max_leases
        self._clock = clock
        self._monotonic = monotonic
        self._leases: dict[str, Lease] = {}
        self._deadlines: list[tuple[float, str]] = []  # heap

    def __len__(self) -> int:
        return len(self._leases)

    def ttl(self, ttl_s: float | None) -> float:
        """The lease time asked for (default: the timeout), or a 400 past the bounds."""
        ttl = self.timeout_s if ttl_s is None else ttl_s
        if not (0 < ttl <= self.max_lease_s):
            raise BadRequestError(
                ErrorCode.BAD_LEASE,
                f"a lease lasts more than 0 and at most {self.max_lease_s:g} s",
            )
        return ttl

    def new(self, ttl: float, host: HostTier | None) -> Lease:
        """A new lease of ``ttl`` seconds; 503 while ``max_leases`` are live."""
        self.expire(host)
        if len(self._leases) >= self.max_leases:
            raise ServiceUnavailableError(
                ErrorCode.TOO_MANY_LEASES,
                f"{self.max_leases} leases are live; release some and retry",
            )
        lease = Lease(secrets.token_hex(8), self._monotonic() + ttl, self._clock() + ttl, ttl)
        self._leases[lease.id] = lease
        heapq.heappush(self._deadlines, (lease.deadline, lease.id))
        return lease

    def release(self, lease_id: str, host: HostTier | None) -> bool:
        """End a lease now, unpinning its extents; False if it had ended already."""
        lease = self._leases.pop(lease_id, None)
        if lease is None:
            return False
        _unpin(lease, host)
        return True

    def expire(self, host: HostTier | None) -> int:
        """End every lease past its deadline; how many ended."""
        now = self._monotonic()
        ended = 0
        while self._deadlines and self._deadlines[0][0] <= now:
            _, lease_id = heapq.heappop(self._deadlines)
            lease = self._leases.pop(lease_id, None)
            if lease is not None:
                _unpin(lease, host)
                ended += 1
        return ended

    def clear(self) -> None:
        """Forget every lease (at close: the arena goes with them)."""
        self._leases.clear()
        self._deadlines.clear()


def _unpin(lease: Lease, host: HostTier | None) -> None:
    assert host is not None  # only the host tier hands out leases
    for vid, offset in lease.pins:
        host.unpin(vid, offset)
