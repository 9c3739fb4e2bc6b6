"""The chunk KV cache engine's results, leases and per-variant record (plain data)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from semcached.cachepolicy.reuse import ChunkDecision, VariantStats
from semcached.index.kv_meta import VariantMeta
from semcached.index.kv_tiers import ArenaTier, CudaHandle, ShmHandle

__all__ = [
    "UNSCOPED",
    "ChunkPlan",
    "KvTenant",
    "Lease",
    "LeasedBlob",
    "Plan",
    "PutBuffer",
    "PutResult",
    "Variant",
]


@dataclass(slots=True)
class Variant:
    """One stored variant as the engine tracks it (``vid``: its id in the tiers)."""

    vid: int
    meta: VariantMeta
    stats: VariantStats
    saved_tokens: float = 0.0  # prefill it spares per reuse, as last planned


@dataclass(frozen=True, slots=True)
class PutResult:
    created: bool  # False: an earlier copy of the same variant was replaced
    variant: bytes
    nbytes: int
    tiers: tuple[str, ...]  # where the bytes are now
    evicted: int  # variants evicted from disk to make room


@dataclass(frozen=True, slots=True)
class PutBuffer:
    """Room in the host tier for one put's bytes (:meth:`KvCache.put_buffer`): fill it
    with ``write(at, piece)`` as the body arrives, then hand it to :meth:`KvCache.put`
    (``view`` as the blob) or to :meth:`KvCache.drop_put_buffer`."""

    vid: int  # the id the variant will have
    view: memoryview  # the reserved extent, invisible until the put commits
    write: Callable[[int, bytes], None]  # copies a piece in at an offset (pwrite)


@dataclass(frozen=True, slots=True)
class KvTenant:
    """Whose request it is: the scope its chunk keys live in (``scope_key`` of the
    tenant's KV scope; b"": unscoped), who owns the leases it takes, and its caps
    (0: none of its own)."""

    scope: bytes = b""
    owner: str = ""
    max_leases: int = 0
    max_pinned_bytes: int = 0
    max_bytes: int = 0  # disk-tier bytes of its scope; past it, the scope's oldest go


UNSCOPED = KvTenant()
"""The in-process default: unscoped keys, no per-tenant caps."""


@dataclass(slots=True)
class Lease:
    """Pins extents of the host and device tiers until released or until ``deadline``
    (monotonic)."""

    id: str
    deadline: float
    expires_at: float  # the same moment as wall-clock time, for clients
    ttl_s: float
    owner: str = ""  # only its owner may release it
    pins: list[tuple[ArenaTier, int, int]] = field(default_factory=list)  # tier, vid, offset
    pinned_bytes: int = 0  # counted against the owner's max_pinned_bytes


@dataclass(frozen=True, slots=True)
class LeasedBlob:
    meta: VariantMeta
    handle: ShmHandle | CudaHandle
    lease: Lease


@dataclass(frozen=True, slots=True)
class ChunkPlan:
    """The plan for one chunk of a prompt (see :class:`ChunkDecision` for the metrics)."""

    decision: ChunkDecision
    tokens: int | None  # the chunk's length: the caller's, else the stored variant's
    position: int | None  # where the chunk starts in the new prompt (None after an
    # unknown-length miss)
    meta: VariantMeta | None
    tier: str | None  # where the bytes were found: "gpu<N>", "host" or "disk"
    handle: ShmHandle | CudaHandle | None  # set when a lease was asked for and granted

    @property
    def rope_shift(self) -> int | None:
        if self.meta is None or self.position is None:
            return None
        return self.position - self.meta.rope_base


@dataclass(frozen=True, slots=True)
class Plan:
    model: str
    chunks: list[ChunkPlan]
    lease: Lease | None

    @property
    def recompute_tokens(self) -> int:
        return sum(len(c.decision.recompute) for c in self.chunks)
