"""Leases: what pins extents of the host and device tiers for a client.

A lease holds pins ``(tier, variant id, offset)`` until it is released or
its deadline (monotonic clock) passes; while pinned, an extent is never reused, even if
its variant is demoted or deleted. At most ``max_leases`` live at once (503: the
daemon's bound), and each owner (tenant) at most its own ``max_leases`` and
``max_pinned_bytes`` (429: the tenant's bound, which leaves the others served). Only
its owner may release a lease; to anyone else it does not exist.

Not thread-safe on its own: the engine calls it with its lock held.
"""

from __future__ import annotations

import heapq
import secrets
import time
from collections.abc import Callable

from semcached.errors import BadRequestError, ServiceUnavailableError, TooManyRequestsError
from semcached.protocol.codes import ErrorCode
from semcached.service.kv.types import KvTenant, Lease

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
        self._held: dict[str, list[int]] = {}  # owner -> [leases, pinned bytes]

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

    def held(self, owner: str) -> tuple[int, int]:
        """The leases ``owner`` holds and the bytes they pin."""
        count, pinned = self._held.get(owner, (0, 0))
        return count, pinned

    def owners(self) -> dict[str, tuple[int, int]]:
        """Every owner holding leases: (leases, pinned bytes)."""
        return {owner: (c, b) for owner, (c, b) in self._held.items()}

    def new(self, ttl: float, tenant: KvTenant) -> Lease:
        """A new lease of ``ttl`` seconds for ``tenant``; 503 while ``max_leases`` are
        live, 429 while the tenant holds its own most."""
        self.expire()
        if len(self._leases) >= self.max_leases:
            raise ServiceUnavailableError(
                ErrorCode.TOO_MANY_LEASES,
                f"{self.max_leases} leases are live; release some and retry",
            )
        held = self._held.setdefault(tenant.owner, [0, 0])
        if tenant.max_leases and held[0] >= tenant.max_leases:
            raise TooManyRequestsError(
                ErrorCode.LEASE_QUOTA_EXCEEDED,
                f"the tenant holds its {tenant.max_leases} leases; release some and retry",
            )
        lease = Lease(
            secrets.token_hex(8), self._monotonic() + ttl, self._clock() + ttl, ttl, tenant.owner
        )
        self._leases[lease.id] = lease
        held[0] += 1
        heapq.heappush(self._deadlines, (lease.deadline, lease.id))
        return lease

    def charge(self, lease: Lease, nbytes: int, limit: int) -> bool:
        """Count ``nbytes`` more pinned by ``lease`` unless that would take its owner
        past ``limit`` (0: no limit); whether it was counted."""
        if self._leases.get(lease.id) is not lease:
            return False  # ended meanwhile (expired during a long plan)
        held = self._held[lease.owner]
        if limit and held[1] + nbytes > limit:
            return False
        held[1] += nbytes
        lease.pinned_bytes += nbytes
        return True

    def refund(self, lease: Lease, nbytes: int) -> None:
        """Undo a :meth:`charge` whose pin did not happen."""
        lease.pinned_bytes -= nbytes
        if self._leases.get(lease.id) is lease:  # else its end settled the owner's count
            self._held[lease.owner][1] -= nbytes

    def release(self, lease_id: str, owner: str | None = None) -> bool:
        """End a lease now, unpinning its extents; False if it had ended already or,
        with ``owner``, belongs to someone else (who must not learn it exists)."""
        lease = self._leases.get(lease_id)
        if lease is None or (owner is not None and lease.owner != owner):
            return False
        self._end(self._leases.pop(lease_id))
        return True

    def expire(self) -> int:
        """End every lease past its deadline; how many ended."""
        now = self._monotonic()
        ended = 0
        while self._deadlines and self._deadlines[0][0] <= now:
            _, lease_id = heapq.heappop(self._deadlines)
            lease = self._leases.pop(lease_id, None)
            if lease is not None:
                self._end(lease)
                ended += 1
        return ended

    def clear(self) -> None:
        """Forget every lease (at close: the arena goes with them)."""
        self._leases.clear()
        self._deadlines.clear()
        self._held.clear()

    def _end(self, lease: Lease) -> None:
        for tier, vid, offset in lease.pins:
            tier.unpin(vid, offset)
        held = self._held[lease.owner]
        held[0] -= 1
        held[1] -= lease.pinned_bytes
        if not held[0]:
            del self._held[lease.owner]
