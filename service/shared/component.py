"""Wiring the semantic shared tier into the daemon: clients, tasks, readiness, metrics.

:func:`install_semantic_sharing` registers the component
that, at open, settles the Redis topology, bootstraps the namespaces this daemon
does not know yet (the daemon turns ready after that, or after
``shared.bootstrap_timeout_s``), and starts the shipper and the consumer. Redis
unreachable at start is not fatal: the daemon serves its local state and the tasks
keep trying.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator

import redis
from prometheus_client import Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from semcached.index.shared.keys import SemanticKeys
from semcached.index.shared.outbox import ReplicaState
from semcached.index.shared.target import (
    AsyncRedis,
    RedisTarget,
    SharedTierError,
    parse_target,
    resolve,
)
from semcached.service.config import SharedSettings
from semcached.service.context import DaemonContext
from semcached.service.lifecycle import FunctionComponent, Slot
from semcached.service.semantic.engine import SemanticCache
from semcached.service.shared.consumer import Consumer
from semcached.service.shared.shipper import Shipper
from semcached.service.shared.stats import LAG_BUCKETS_S, SharingStats

__all__ = ["SemanticSharing", "SharingCollector", "install_semantic_sharing"]

log = logging.getLogger(__name__)


class SemanticSharing:
    """The shipper and consumer of one daemon, started once Redis answered."""

    def __init__(
        self,
        settings: SharedSettings,
        target: RedisTarget,
        slot: Slot[SemanticCache],
        daemon: DaemonContext,
    ) -> None:
        self._settings = settings
        self._target = target
        self._slot = slot
        self._daemon = daemon
        self._state: ReplicaState | None = None  # the data directory opens first
        self.stats = SharingStats()
        self.shipper: Shipper | None = None
        self.consumer: Consumer | None = None
        self._client: AsyncRedis | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._starter: asyncio.Task[None] | None = None

    async def open(self) -> None:
        """Start sharing; wait for the bootstrap if Redis answers (a daemon that cannot
        reach Redis at all turns ready on its local state at once)."""
        try:
            self._target = await resolve(self._target)
            reachable = True
        except SharedTierError as exc:
            log.warning("%s; serving local state and retrying in the background", exc)
            reachable = False
        self._starter = asyncio.create_task(self._start(), name="shared-tier-start")
        if not reachable:
            return
        timeout = self._settings.bootstrap_timeout_s
        done, _ = await asyncio.wait({self._starter}, timeout=timeout or None)
        if not done:
            log.warning(
                "shared tier: no bootstrap within %.0f s; serving local state while it goes on",
                timeout,
            )

    async def _start(self) -> None:
        """Settle the topology (retrying while Redis is down), bootstrap, start the tasks."""
        delay = 0.1
        while True:
            try:
                self._target = await resolve(self._target)
                break
            except SharedTierError:
                await asyncio.sleep(delay)
                delay = min(5.0, delay * 2)
        engine = self._slot.get()
        outbox = engine.outbox
        assert outbox is not None  # semantic_outbox gave the store one
        executor = self._daemon.executor
        state = self._state = ReplicaState(self._daemon.data_dir.env)
        node = await asyncio.get_running_loop().run_in_executor(executor, state.node_id)
        client = self._client = self._target.connect_async()
        keys = SemanticKeys(self._settings.key_prefix)
        self.shipper = Shipper(
            outbox,
            client,
            keys,
            node,
            stats=self.stats,
            executor=executor,
            batch=self._settings.ship_batch,
            wait_replicas=0 if self._target.mode == "cluster" else self._settings.wait_replicas,
            wait_timeout_s=self._settings.timeout_s,
            stream_max_len=self._settings.stream_max_len,
            poll_interval_s=self._settings.poll_interval_s,
        )
        self.consumer = Consumer(
            engine,
            client,
            keys,
            state,
            node,
            stats=self.stats,
            executor=executor,
            namespaces=self._daemon.settings.semantic.namespaces,
            poll_interval_s=self._settings.poll_interval_s,
        )
        self._tasks.append(asyncio.create_task(self.shipper.run(), name="shared-shipper"))
        while True:
            try:
                await self.consumer.bootstrap()
                self.stats.redis_up = True
                break
            except (redis.RedisError, OSError) as exc:
                log.warning("shared tier bootstrap failed, retrying: %s", exc)
                await asyncio.sleep(1.0)
        self._tasks.append(asyncio.create_task(self.consumer.run(), name="shared-consumer"))
        log.info(
            "shared tier on at %s (%s, node %s): following %d namespaces",
            self._target.redacted,
            self._target.mode,
            node,
            len(self.consumer.offsets),
        )

    async def close(self) -> None:
        tasks = [t for t in (self._starter, *self._tasks) if t is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            _, stuck = await asyncio.wait(tasks, timeout=5.0)
            if stuck:
                log.warning("shared tier: %d tasks did not stop within 5 s", len(stuck))
        self._tasks.clear()
        if self.shipper is not None:  # one last round: what ships now need not wait a restart
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.shipper.ship_once(), 2.0)
            outbox = self._slot.get().outbox if self._slot.is_set else None
            if outbox is not None:  # else shipped again after the restart (harmless)
                await asyncio.get_running_loop().run_in_executor(
                    self._daemon.executor, outbox.compact
                )
        if self._client is not None:
            try:
                await asyncio.wait_for(self._client.aclose(), 2.0)
            except (TimeoutError, redis.RedisError, OSError) as exc:
                log.warning("shared tier: closing the Redis client failed: %r", exc)
            self._client = None


def install_semantic_sharing(
    daemon: DaemonContext, slot: Slot[SemanticCache]
) -> SemanticSharing | None:
    """Register the shared tier's component (after the semantic cache's) and metrics."""
    settings = daemon.settings.shared
    if not (settings.redis_url and settings.semantic):
        return None
    target = parse_target(settings.redis_url, timeout_s=settings.timeout_s)  # ConfigError now
    sharing = SemanticSharing(settings, target, slot, daemon)
    daemon.components.add(FunctionComponent("shared tier", sharing.open, sharing.close))
    daemon.registry.register(SharingCollector(sharing, slot))
    sharing_lag = Histogram(
        "semcached_shared_replication_lag_seconds",
        "Time from another daemon's commit of a semantic change to its apply here.",
        buckets=LAG_BUCKETS_S,
        registry=daemon.registry,
    )
    sharing.stats.observe = sharing_lag.observe
    return sharing


class SharingCollector(Collector):
    """The shared tier's counters at scrape time."""

    def __init__(self, sharing: SemanticSharing, slot: Slot[SemanticCache]) -> None:
        self._sharing = sharing
        self._slot = slot

    def collect(self) -> Iterator[Metric]:
        stats = self._sharing.stats
        up = GaugeMetricFamily(
            "semcached_shared_redis_up", "Whether the last shared-tier command succeeded."
        )
        up.add_metric([], float(stats.redis_up))
        yield up
        counters = {
            "shipped": ("semcached_shared_shipped", "Semantic changes shipped to Redis."),
            "ship_failures": ("semcached_shared_ship_failures", "Ship rounds Redis refused."),
            "malformed": (
                "semcached_shared_malformed",
                "Stream events or records skipped as malformed.",
            ),
            "bootstraps": ("semcached_shared_bootstraps", "Namespaces bootstrapped from Redis."),
            "read_failures": ("semcached_shared_read_failures", "Stream read rounds that failed."),
        }
        for attr, (name, help_text) in counters.items():
            family = CounterMetricFamily(name, help_text)
            family.add_metric([], getattr(stats, attr))
            yield family
        applied = CounterMetricFamily(
            "semcached_shared_applied", "Other daemons' changes applied, by op.", labels=["op"]
        )
        applied.add_metric(["put"], stats.applied_puts)
        applied.add_metric(["del"], stats.applied_deletes)
        applied.add_metric(["fb"], stats.applied_feedback)
        yield applied
        if self._slot.is_set and (outbox := self._slot.get().outbox) is not None:
            depth = GaugeMetricFamily(
                "semcached_shared_outbox_records", "Semantic changes waiting to be shipped."
            )
            depth.add_metric([], len(outbox))
            yield depth
            dropped = CounterMetricFamily(
                "semcached_shared_outbox_dropped",
                "Changes dropped unshipped at the outbox bound (the local store keeps them).",
            )
            dropped.add_metric([], outbox.dropped)
            yield dropped
