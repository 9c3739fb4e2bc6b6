"""Ships the semantic outbox to Redis, in commit order, removing what Redis acknowledged.

Each change becomes, in one pipeline per batch: the entry's record (``SET`` with
the entry's expiry, or ``DEL``), its id in the bucket's expiry-ordered set, the
namespace in the set of namespaces, and an event on the namespace's stream
(``XADD`` trimmed to about ``stream_max_len``). Every command is idempotent but the
``XADD``, and consumers skip a change they already hold, so a batch that fails half
way is simply shipped again: at-least-once, in order per namespace (one shipper, one
batch at a time, and a namespace's stream lives on one node).
Shipped records leave the outbox lazily (:class:`~semcached.index.shared.outbox.Outbox`).

With ``wait_replicas`` the batch leaves the outbox only once that many replicas hold
it (``WAIT``), so that a Sentinel failover to one of them loses no shipped change.

While Redis is unreachable the outbox grows (bounded, :class:`~semcached.index.
shared.outbox.Outbox`) and the shipper retries with a capped backoff, logging once
when it loses Redis and once when it is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor

import redis

from semcached.index.shared.keys import SemanticKeys
from semcached.index.shared.outbox import Outbox
from semcached.index.shared.records import Change
from semcached.index.shared.target import AsyncRedis
from semcached.service.blocking import run_blocking
from semcached.service.shared.stats import SharingStats

__all__ = ["Shipper"]

log = logging.getLogger(__name__)

_MAX_BACKOFF_S = 5.0


class Shipper:
    """Run :meth:`run` as a task; :meth:`wake` after a commit for a prompt ship."""

    def __init__(
        self,
        outbox: Outbox,
        client: AsyncRedis,
        keys: SemanticKeys,
        node: str,
        *,
        stats: SharingStats,
        executor: Executor,
        batch: int = 256,
        wait_replicas: int = 0,
        wait_timeout_s: float = 2.0,
        stream_max_len: int = 1_000_000,
        poll_interval_s: float = 0.05,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._outbox = outbox
        self._client = client
        self._keys = keys
        self._node = node
        self.stats = stats
        self._executor = executor
        self._batch = batch
        self._wait_replicas = wait_replicas
        self._wait_ms = max(1, int(wait_timeout_s * 1000))
        self._max_len = stream_max_len
        self._poll_s = poll_interval_s
        self._clock = clock
        self._wake = asyncio.Event()
        self._namespaces: set[str] = set()  # known to be in the namespaces set
        self._down_since: float | None = None

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        backoff = 0.0
        while True:
            shipped = await self.ship_once()
            if shipped < 0:  # Redis refused: wait, longer each time
                backoff = min(_MAX_BACKOFF_S, max(0.05, backoff * 2))
                await asyncio.sleep(backoff)
            elif shipped == 0:
                backoff = 0.0
                # Idle: delete what was shipped (busy, the inserts' commits do it).
                await run_blocking(self._executor, self._outbox.compact)
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self._poll_s)

    async def ship_once(self) -> int:
        """Ship one batch; how many changes (0: the outbox is empty, -1: Redis failed)."""
        batch = await run_blocking(self._executor, self._outbox.peek, self._batch)
        if not batch:
            return 0
        try:
            await self._publish([change for _, change in batch])
        except (redis.RedisError, OSError) as exc:
            self.stats.ship_failures += 1
            self._went_down(exc)
            return -1
        self._came_back()
        self._outbox.shipped(batch[-1][0])
        self.stats.shipped += len(batch)
        return len(batch)

    async def _publish(self, changes: Sequence[Change]) -> None:
        keys = self._keys
        now_ms = int(self._clock() * 1000)
        pipe = self._client.pipeline(transaction=False)
        new_namespaces = {c.namespace for c in changes} - self._namespaces
        if new_namespaces:
            pipe.sadd(keys.namespaces, *new_namespaces)
        for change in changes:
            ns, entry_id = change.namespace, change.entry_id
            bucket = keys.ids(ns, keys.bucket(ns, entry_id))
            if change.op == "put":
                expires_ms = math.inf if math.isinf(change.expires_at) else change.expires_at * 1000
                if expires_ms > now_ms:
                    record = keys.record(ns, entry_id)
                    if math.isinf(expires_ms):
                        pipe.set(record, change.record)
                    else:
                        pipe.set(record, change.record, pxat=int(expires_ms))
                    pipe.zadd(bucket, {str(entry_id): expires_ms})
                pipe.zremrangebyscore(bucket, "-inf", now_ms)  # the bucket's expired ids
            elif change.op == "del":
                pipe.delete(keys.record(ns, entry_id))
                pipe.zrem(bucket, str(entry_id))
            pipe.xadd(
                keys.stream(ns),
                change.event(self._node),  # type: ignore[arg-type]
                maxlen=self._max_len,
                approximate=True,
            )
        if self._wait_replicas:
            # On the pipeline's own connection: WAIT counts that connection's writes.
            pipe.execute_command("WAIT", self._wait_replicas, self._wait_ms)
        replies = await pipe.execute()
        if self._wait_replicas and int(replies[-1]) < self._wait_replicas:
            raise redis.RedisError(
                f"only {replies[-1]} of {self._wait_replicas} replicas took the batch in time"
            )
        self._namespaces |= new_namespaces

    def _went_down(self, exc: BaseException) -> None:
        if self._down_since is None:
            self._down_since = self._clock()
            log.warning(
                "shared tier unreachable, semantic changes wait in the outbox "
                "(%d queued, bound %d): %s",
                len(self._outbox),
                self._outbox.max_records,
                exc,
            )
        self.stats.redis_up = False

    def _came_back(self) -> None:
        if self._down_since is not None:
            log.warning(
                "shared tier reachable again after %.1f s; shipping the outbox",
                self._clock() - self._down_since,
            )
            self._down_since = None
        self.stats.redis_up = True
