"""Wiring the chunk KV cache into the daemon: its LMDB, its arena, lease sweeps, metrics.

:func:`install_kv_cache` (called by the ``kv`` route group with the daemon's
:class:`~semcached.service.context.DaemonContext`) registers one component behind the
core's data directory. It opens the KV cache's own LMDB environment at ``<data_dir>/kv-lmdb``
(its map capped apart from the semantic store's), removes shared-memory segments
left by a daemon that was killed, creates a fresh arena for the host tier (so the
host tier is cold after a restart and can never serve stale bytes), and loads the
metadata of every stored variant.

The device tier is set up at start (:func:`device_tiers`): with ``kv.gpu.devices``
``auto`` it uses every visible CUDA device, and without one (no driver, no device,
no torch) it is off, logged once and reported by ``/v1/kv/stats``. A budget larger
than a device's memory, or a device index that does not exist, stops the daemon.

With ``shared.redis_url`` set and ``shared.kv`` on, the engine gets the shared tier in
Redis (:func:`shared_tier`); Redis unreachable at start is a warning, not a failure:
the daemon runs local-only until Redis answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import zlib
from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from redis.backoff import NoBackoff
from redis.retry import Retry

from semcached.cachepolicy.policies import eviction_factory
from semcached.cachepolicy.promotion import HitCountPromotion
from semcached.errors import ConfigError
from semcached.index.cuda_memory import DeviceProbe, TorchCudaMemory, probe_devices
from semcached.index.device_arena import DeviceArena
from semcached.index.kv_disk import KvDiskStore
from semcached.index.kv_tiers import DeviceTier, HostTier
from semcached.index.lmdb_env import LmdbEnvironment
from semcached.index.shared.kv_blobs import KvBlobStore
from semcached.index.shared.target import parse_target, resolve
from semcached.index.shm_arena import ShmArena
from semcached.service.blocking import run_blocking
from semcached.service.config import KvGpuSettings, KvSettings, SharedSettings
from semcached.service.context import DaemonContext
from semcached.service.kv.engine import KvCache
from semcached.service.kv.sharing import SharedKv
from semcached.service.lifecycle import FunctionComponent, Slot

__all__ = ["KvCollector", "device_tiers", "install_kv_cache", "kv_map_cap", "shared_tier"]

log = logging.getLogger(__name__)

_SWEEP_INTERVAL_S = 1.0
_MiB = 1 << 20


def kv_map_cap(kv: KvSettings) -> int:
    """The KV LMDB map cap: as configured, or the budget plus room for LMDB's own pages."""
    return kv.disk_max_map_bytes or kv.disk_bytes + kv.disk_bytes // 4 + 64 * _MiB


def probe_gpu(gpu: KvGpuSettings) -> DeviceProbe:
    """The devices of the GPU tier, or why it is off; ConfigError for a selection or
    budget the devices cannot honour."""
    if not gpu.max_bytes:
        return DeviceProbe((), "kv.gpu.max_bytes is 0")
    try:
        probe = probe_devices(gpu.devices)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    for device in probe.devices:
        if gpu.max_bytes > device.total_bytes:
            raise ConfigError(
                f"kv.gpu.max_bytes is {gpu.max_bytes} bytes, more than GPU {device.index} "
                f"({device.name}) has: {device.total_bytes} bytes"
            )
    if gpu.slab_bytes > gpu.max_bytes:
        raise ConfigError(
            f"kv.gpu.slab_bytes ({gpu.slab_bytes}) is larger than kv.gpu.max_bytes "
            f"({gpu.max_bytes})"
        )
    return probe


def device_tiers(gpu: KvGpuSettings, probe: DeviceProbe, eviction: str) -> list[DeviceTier]:
    """One device tier per probed GPU, each with its own budget and policy."""
    new_policy = eviction_factory(eviction)
    slab = gpu.slab_bytes - gpu.slab_bytes % 4096
    return [
        DeviceTier(DeviceArena(TorchCudaMemory(info), gpu.max_bytes, slab), new_policy())
        for info in probe.devices
    ]


def shared_tier(shared: SharedSettings) -> SharedKv | None:
    """The shared KV tier the settings ask for, or None. Nothing is contacted here: the
    engine's :meth:`~KvCache.open` tries Redis once, then keeps trying in the background.
    ConfigError for a malformed URL."""
    if not (shared.redis_url and shared.kv):
        return None
    target = parse_target(shared.redis_url, timeout_s=shared.timeout_s)

    def connect() -> KvBlobStore:
        # Standalone or Cluster is settled by asking the node, on this worker thread.
        resolved = asyncio.run(resolve(target))
        reads = resolved.connect()
        # A read waits one socket timeout at most (it is on a request's path); writes
        # are in the background and keep the target's retries.
        reads.set_retry(Retry(NoBackoff(), 0))
        return KvBlobStore(
            resolved.connect(),
            read_client=reads,
            prefix=shared.key_prefix,
            part_bytes=shared.kv_part_bytes,
            ttl_s=shared.kv_ttl_s,
        )

    return SharedKv(connect, max_pending_bytes=shared.kv_max_pending_bytes, where=target.redacted)


def install_kv_cache(daemon: DaemonContext) -> Slot[KvCache]:
    """Register the engine as a component (unless ``kv.enabled`` is off); its slot."""
    settings = daemon.settings
    kv = settings.kv
    slot: Slot[KvCache] = Slot("chunk KV cache")
    if not kv.enabled:
        return slot
    sweeper: asyncio.Task[None] | None = None
    gpu = probe_gpu(settings.kv_gpu)
    if gpu.devices:
        log.info(
            "GPU tier on: %s, %d bytes each",
            ", ".join(f"{d.index} {d.name} ({d.uuid})" for d in gpu.devices),
            settings.kv_gpu.max_bytes,
        )
    else:
        log.info("GPU tier off: %s", gpu.reason)

    def open_blocking() -> KvCache:
        data_dir = daemon.data_dir.path
        env = LmdbEnvironment(
            data_dir / "kv-lmdb",
            initial_map_bytes=min(64 * _MiB, kv_map_cap(kv)),
            max_map_bytes=kv_map_cap(kv),
        )
        host = None
        if kv.host_bytes:
            # One prefix per data directory: the segments a killed daemon of this
            # directory left behind are ours to remove (we hold the directory's lock).
            prefix = f"semcached-{zlib.crc32(str(data_dir.resolve()).encode()):08x}"
            for name in ShmArena.remove_stale(kv.shm_dir, prefix):
                log.info("removed shared-memory segment %s left by a stopped daemon", name)
            new_policy = eviction_factory(kv.eviction)
            host = HostTier(
                ShmArena(kv.host_bytes, directory=kv.shm_dir, prefix=prefix), new_policy()
            )
        engine = KvCache(
            store=KvDiskStore(env),
            models={m.name: m for m in settings.kv_models},
            disk_budget_bytes=kv.disk_bytes,
            host=host,
            eviction=eviction_factory(kv.eviction),
            max_blob_bytes=kv.max_blob_bytes,
            lease_timeout_s=kv.lease_timeout_s,
            max_lease_s=kv.max_lease_s,
            max_leases=kv.max_leases,
            devices=device_tiers(settings.kv_gpu, gpu, kv.eviction),
            promotion=HitCountPromotion(settings.kv_gpu.promote_after_hits),
            gpu_off_reason=gpu.reason,
            shared=shared_tier(settings.shared),
        )
        try:
            count = engine.open()
        except BaseException:
            engine.close()
            env.close()
            raise
        log.info("chunk KV cache open: %d variants on disk", count)
        return engine

    async def open_engine() -> None:
        nonlocal sweeper
        engine = await run_blocking(daemon.executor, open_blocking)
        slot.set(engine)
        sweeper = asyncio.create_task(_sweep_leases(engine), name="kv lease sweeper")

    async def close_engine() -> None:
        if sweeper is not None:
            sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sweeper
        engine = slot.get()
        slot.set(None)
        await run_blocking(daemon.executor, _close, engine)

    daemon.components.add(FunctionComponent("chunk KV cache", open_engine, close_engine))
    daemon.components.readiness.watch_storage("kv", lambda: slot.is_set and slot.get().storage_full)
    daemon.registry.register(KvCollector(slot))
    return slot


def _close(engine: KvCache) -> None:
    engine.close()
    engine.store.env.close()


async def _sweep_leases(engine: KvCache) -> None:
    """End timed-out leases even when no request comes to do it."""
    while True:
        await asyncio.sleep(_SWEEP_INTERVAL_S)
        engine.sweep()


class KvCollector(Collector):
    """Exports the engine's tier counters at scrape time."""

    def __init__(self, slot: Slot[KvCache]) -> None:
        self._slot = slot

    def collect(self) -> Iterator[Metric]:
        if not self._slot.is_set:
            return
        engine = self._slot.get()
        tiers = engine.stats()
        size = GaugeMetricFamily("semcached_kv_bytes", "KV bytes held, by tier.", labels=["tier"])
        entries = GaugeMetricFamily(
            "semcached_kv_entries", "Chunk variants held, by tier.", labels=["tier"]
        )
        budget = GaugeMetricFamily(
            "semcached_kv_budget_bytes", "Byte budget of each tier.", labels=["tier"]
        )
        counters = {
            name: CounterMetricFamily(f"semcached_kv_{name}", help_text, labels=["tier"])
            for name, help_text in (
                ("hits", "Reads that found the variant in this tier."),
                ("misses", "Reads that did not find the variant in this tier."),
                ("promotions", "Variants copied up into this tier on a hit."),
                ("demotions", "Variants moved out of this tier under pressure."),
                ("evictions", "Variants removed from the cache by this tier's policy."),
            )
        }
        budgets = engine.budgets()
        for tier, s in tiers.items():
            size.add_metric([tier], s.bytes)
            entries.add_metric([tier], s.entries)
            budget.add_metric([tier], budgets[tier])
            for name, family in counters.items():
                family.add_metric([tier], getattr(s, name))
        leases = GaugeMetricFamily(
            "semcached_kv_leases", "Shared-memory leases live (each pins blobs)."
        )
        leases.add_metric([], engine.live_leases)
        # Owners are tenants of the tokens file: a bounded set of label values.
        held = GaugeMetricFamily(
            "semcached_kv_tenant_leases", "Leases live, by owning tenant.", labels=["tenant"]
        )
        pinned = GaugeMetricFamily(
            "semcached_kv_tenant_pinned_bytes",
            "Host-tier bytes pinned by a tenant's leases.",
            labels=["tenant"],
        )
        for owner, (count, nbytes) in engine.lease_holders().items():
            held.add_metric([owner], count)
            pinned.add_metric([owner], nbytes)
        yield from (size, entries, budget, *counters.values(), leases, held, pinned)
        if engine.shared is not None:
            yield from _shared_metrics(engine.shared)


def _shared_metrics(shared: SharedKv) -> Iterator[Metric]:
    """The shared tier's own counters (its hits and misses are in the tier rows)."""
    c = shared.snapshot()
    for name, help_text, value in (
        ("written_bytes", "Chunk KV bytes written to the shared tier.", c.written_bytes),
        ("writes", "Chunk variants written to the shared tier.", c.writes),
        ("write_errors", "Writes the shared tier refused (outages are retried).", c.write_errors),
        ("unshared", "Puts not shared: shared.kv_max_pending_bytes were queued.", c.unshared),
        (
            "fetch_errors",
            "Reads of the shared tier that failed (served as misses).",
            c.fetch_errors,
        ),
        ("corrupt", "Shared records skipped: corrupt, or unusable by this daemon.", c.corrupt),
        ("outages", "Times the shared tier became unreachable.", c.outages),
    ):
        family = CounterMetricFamily(f"semcached_kv_shared_{name}", help_text)
        family.add_metric([], value)
        yield family
    pending = GaugeMetricFamily(
        "semcached_kv_shared_pending_bytes", "Chunk KV bytes waiting to be written to Redis."
    )
    pending.add_metric([], c.pending_bytes)
    up = GaugeMetricFamily("semcached_kv_shared_up", "1 while the shared tier answers.")
    up.add_metric([], 1 if shared.up else 0)
    yield from (pending, up)
