"""Identical concurrent misses share one upstream call.

The first miss of a key *leads*: it goes upstream and publishes the answer's record
(or None: nothing cacheable came). Misses of the same key that arrive meanwhile
*follow*: they wait, at most ``wait_s``, for that record, then go upstream
themselves. The leader keeps its flight open until the record is stored, so a
request that misses in the cache in between still finds the answer here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Hashable
from typing import Any

__all__ = ["Coalescer", "Flight"]

Record = dict[str, Any]


class Flight:
    """The leader's handle: publish the record early, finish when it is stored."""

    def __init__(self, coalescer: Coalescer, key: Hashable) -> None:
        self._coalescer = coalescer
        self._key = key
        self.future: asyncio.Future[Record | None] = asyncio.get_running_loop().create_future()

    def publish(self, record: Record | None) -> None:
        if not self.future.done():
            self.future.set_result(record)

    def finish(self) -> None:
        """End the flight (publishing None if nothing was): later misses lead anew."""
        self.publish(None)
        if self._coalescer._flights.get(self._key) is self:
            del self._coalescer._flights[self._key]


class Coalescer:
    def __init__(self, wait_s: float) -> None:
        self.wait_s = wait_s
        self._flights: dict[Hashable, Flight] = {}
        self.followed = 0  # followers that got the leader's record
        self.timed_out = 0  # followers that gave up waiting
        self.waiting = 0  # followers waiting now

    def __len__(self) -> int:
        return len(self._flights)

    def lead(self, key: Hashable) -> Flight | None:
        """A new flight for ``key``, or None when one is under way (then :meth:`follow`)."""
        if self.wait_s <= 0 or key in self._flights:
            return None
        flight = self._flights[key] = Flight(self, key)
        return flight

    def flying(self, key: Hashable) -> bool:
        return self.wait_s > 0 and key in self._flights

    async def follow(self, key: Hashable) -> Record | None:
        """The record of ``key``'s flight, or None (none under way, nothing cacheable
        came, or it took longer than ``wait_s``)."""
        flight = self._flights.get(key)
        if flight is None:
            return None
        self.waiting += 1
        try:
            # shield: a follower giving up must not cancel the leader's future.
            record = await asyncio.wait_for(asyncio.shield(flight.future), self.wait_s)
        except TimeoutError:
            self.timed_out += 1
            return None
        finally:
            self.waiting -= 1
        if record is not None:
            self.followed += 1
        return record
