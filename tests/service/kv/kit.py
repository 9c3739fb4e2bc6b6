"""Building chunk KV engines and variants for tests: a tiny model, random tensors."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from semcached.cachepolicy.lru import LruPolicy
from semcached.cachepolicy.promotion import HitCountPromotion
from semcached.index.device_arena import DeviceArena
from semcached.index.eviction import EvictionPolicy
from semcached.index.kv_disk import KvDiskStore
from semcached.index.kv_meta import ModelSpec, VariantMeta
from semcached.index.kv_tiers import DeviceTier, HostTier
from semcached.index.lmdb_env import LmdbEnvironment
from semcached.index.shm_arena import ShmArena
from semcached.protocol.keys import chunk_key, variant_key
from semcached.service.kv.engine import KvCache
from semcached.service.kv.sharing import SharedKv
from tests.index.device_standin import HostDeviceMemory

MiB = 1 << 20
TINY = ModelSpec("tiny", layers=2, kv_heads=2, head_dim=8, alpha=1.0, tokenizer="tiny-tok")
PAGE = 4096


class FakeMonotonic:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def key_of(*tokens: int) -> bytes:
    return chunk_key(TINY.name, TINY.tokenizer, "float32", list(tokens))


def blob_nbytes(tokens: int) -> int:
    return TINY.layers * 2 * TINY.kv_heads * tokens * TINY.head_dim * 4


def variant(
    chunk: bytes,
    tokens: int = 16,
    prefix: Sequence[bytes] = (),
    *,
    seed: int = 0,
    created_at: float = 1.0,
    rope_base: int = 0,
) -> tuple[VariantMeta, bytes]:
    """A random float32 KV blob of ``tokens`` tokens and its metadata."""
    rng = np.random.default_rng(seed)
    tensor = rng.standard_normal((TINY.layers, 2, TINY.kv_heads, tokens, TINY.head_dim))
    meta = VariantMeta(
        chunk=chunk,
        variant=variant_key(prefix),
        model=TINY.name,
        dtype="float32",
        shape=tensor.shape,
        prefix=tuple(prefix),
        prefix_tokens=tuple(8 for _ in prefix),
        rope_base=rope_base,
        rope={"theta": 10000.0},
        inter=rng.random(len(prefix)).astype(np.float32),
        intra=float(tokens),
        token_scores=rng.random(tokens).astype(np.float32),
        created_at=created_at,
    )
    return meta, tensor.astype(np.float32).tobytes()


class Engines:
    """Makes engines over one data directory (so a test can restart one)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.envs: list[LmdbEnvironment] = []
        self.engines: list[KvCache] = []
        self.monotonic = FakeMonotonic()

    def open(
        self,
        *,
        disk_bytes: int = 64 * MiB,
        host_bytes: int = 8 * MiB,
        max_blob_bytes: int = 32 * MiB,
        max_leases: int = 100,
        eviction: Callable[[], EvictionPolicy] = LruPolicy,
        max_map_bytes: int = 256 * MiB,
        gpus: Sequence[HostDeviceMemory] = (),
        gpu_bytes: int = 4 * PAGE,
        slab_bytes: int = 2 * PAGE,
        promote_after_hits: int = 1,
        shared: SharedKv | None = None,
    ) -> KvCache:
        """An engine over this directory; ``gpus``: device tiers on host stand-ins."""
        env = LmdbEnvironment(
            self.root / "kv-lmdb", initial_map_bytes=MiB, max_map_bytes=max_map_bytes
        )
        self.envs.append(env)
        host = None
        if host_bytes:
            host = HostTier(ShmArena(host_bytes, directory=self.root, prefix="t"), eviction())
        engine = KvCache(
            store=KvDiskStore(env),
            models={TINY.name: TINY},
            disk_budget_bytes=disk_bytes,
            host=host,
            eviction=eviction,
            max_blob_bytes=max_blob_bytes,
            lease_timeout_s=30.0,
            max_lease_s=60.0,
            max_leases=max_leases,
            monotonic=self.monotonic,
            devices=[
                DeviceTier(DeviceArena(memory, gpu_bytes, slab_bytes), eviction())
                for memory in gpus
            ],
            promotion=HitCountPromotion(promote_after_hits),
            shared=shared,
        )
        engine.open()
        self.engines.append(engine)
        return engine

    def close(self, engine: KvCache) -> None:
        engine.close()
        engine.store.env.close()

    def close_all(self) -> None:
        for engine in self.engines:
            if engine.opened:
                engine.close()
        for env in self.envs:
            env.close()
