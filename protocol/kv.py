"""The chunk KV cache's bodies as they travel: metadata, replies, plans (msgspec structs).

The daemon decodes and validates the put header with :class:`ChunkPutMeta` and a
plan request with :class:`KvPlanRequest` (unknown fields are rejected), and
generates its OpenAPI document from these structs, so the constraints below are at
once what is enforced and what is documented; a client builds one to store a chunk
instead of passing a dozen keyword arguments, and reads the replies with the others.
See :mod:`semcached.protocol.semantic` for why msgspec.

Keys travel as 32 lower-case hex digits (:func:`semcached.protocol.keys.key_hex`).
Float arrays (the Cache-Craft statistics) travel as a JSON list of numbers or as
base64 of little-endian float32 (:func:`pack_floats`), which is 4 bytes a value
instead of about 20 and decodes without parsing.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from typing import Annotated, Any, Literal

import msgspec
import numpy as np
from numpy.typing import NDArray

from semcached.protocol.keys import KEY_PATTERN

__all__ = [
    "KV_DTYPES",
    "CacheCraftStats",
    "ChunkMeta",
    "ChunkPutMeta",
    "Floats",
    "HexKey",
    "KvCudaHandle",
    "KvDeleted",
    "KvDtype",
    "KvFetch",
    "KvGpu",
    "KvGpuDevice",
    "KvLease",
    "KvLeasedChunk",
    "KvModel",
    "KvModels",
    "KvPlan",
    "KvPlanChunk",
    "KvPlanRequest",
    "KvPutResult",
    "KvShmHandle",
    "KvStats",
    "KvTierStats",
    "LeaseSeconds",
    "ModelName",
    "Transfer",
    "pack_floats",
    "unpack_floats",
]

KvDtype = Literal["float16", "bfloat16", "float32"]
KV_DTYPES: tuple[str, ...] = ("float16", "bfloat16", "float32")
Transfer = Literal["http", "shm", "cuda"]
MAX_LEASE_S = 1e9

HexKey = Annotated[str, msgspec.Meta(pattern=KEY_PATTERN, description="32 lower-case hex digits.")]
Dim = Annotated[int, msgspec.Meta(ge=1)]
ModelName = Annotated[
    str,
    msgspec.Meta(
        min_length=1,
        max_length=256,
        pattern=r"\S",
        description="A model the daemon knows (kv_models; GET /v1/kv/models).",
    ),
]
DeviceName = Annotated[
    str,
    msgspec.Meta(
        min_length=1,
        max_length=64,
        description="A GPU of the daemon's GPU tier: its UUID (GPU-...) or the daemon's "
        "CUDA index of it. Hot chunks come as CUDA IPC handles on it, others in shm.",
    ),
]
LeaseSeconds = Annotated[
    float,
    msgspec.Meta(ge=1e-3, le=MAX_LEASE_S, description="Lease time; within kv.max_lease_s."),
]
Floats = Annotated[
    list[float] | str,
    msgspec.Meta(description="A list of numbers, or base64 of little-endian float32."),
]
Shape = Annotated[
    tuple[Dim, Dim, Dim, Dim, Dim],
    msgspec.Meta(description="[layers, 2, kv_heads, tokens, head_dim]; keys after RoPE."),
]


class CacheCraftStats(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """Cache-Craft statistics of one variant, averaged over layers (zeros when absent)."""

    inter: Annotated[
        Floats | None, msgspec.Meta(description="Per prefix chunk: summed attention to it.")
    ] = None
    intra: Annotated[
        float,
        msgspec.Meta(ge=0.0, description="Summed causal attention among the chunk's tokens."),
    ] = 0.0
    token_scores: Annotated[
        Floats | None, msgspec.Meta(description="Per token: its inter-attention to the prefix.")
    ] = None


class ChunkPutMeta(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """What a put declares about its blob (JSON in the ``X-Semcached-KV-Meta`` header)."""

    model: ModelName
    dtype: KvDtype
    shape: Shape
    prefix: Annotated[
        list[HexKey],
        msgspec.Meta(
            description="Ordered keys of the chunks the KV was computed after "
            "(empty: right after the system prompt)."
        ),
    ] = []
    prefix_tokens: Annotated[
        list[Dim] | None, msgspec.Meta(description="Tokens of each prefix chunk.")
    ] = None
    rope_base: Annotated[
        int, msgspec.Meta(ge=0, description="Position of the chunk's first token.")
    ] = 0
    rope: Annotated[dict[str, Any], msgspec.Meta(description="RoPE parameters.")] = {}
    stats: CacheCraftStats | None = None


class ChunkMeta(msgspec.Struct, frozen=True):
    """A stored variant's metadata as the daemon reports it."""

    key: str
    variant: str
    model: str
    dtype: str
    shape: tuple[int, ...]
    tokens: int
    nbytes: int
    prefix: tuple[str, ...]
    prefix_tokens: tuple[int, ...]
    rope_base: int
    rope: dict[str, Any]
    created_at: float
    hits: int
    last_access: float


class KvPutResult(ChunkMeta, frozen=True):
    """The stored variant's metadata, where its bytes are now and what made room."""

    tiers: Annotated[tuple[str, ...], msgspec.Meta(description="E.g. [host, disk].")]
    evicted: Annotated[int, msgspec.Meta(description="Variants evicted to make room.")]


class KvShmHandle(msgspec.Struct, frozen=True):
    """Where a blob lies in shared memory: map ``segment`` read-only, read ``length``
    bytes at ``offset``."""

    segment: Annotated[str, msgspec.Meta(description="A file in the daemon's kv.shm_dir.")]
    offset: int
    length: int


class KvCudaHandle(msgspec.Struct, frozen=True):
    """Where a blob lies in a daemon GPU's memory: open ``ipc_handle`` with CUDA IPC on
    the GPU ``device`` (same host only) and read ``length`` bytes at ``offset`` from the
    mapping's start. Valid while the lease lasts; one handle maps a whole slab, so
    clients open each distinct handle once."""

    device: Annotated[str, msgspec.Meta(description="The GPU's UUID (GPU-...).")]
    device_index: Annotated[int, msgspec.Meta(description="The daemon's CUDA index of it.")]
    ipc_handle: Annotated[str, msgspec.Meta(description="Base64 of the 64-byte CUDA IPC handle.")]
    offset: int
    length: int


class KvLease(msgspec.Struct, frozen=True):
    """Pins handed-out shared memory until released (DELETE /v1/kv/leases/{id}) or expired."""

    id: str
    expires_at: Annotated[float, msgspec.Meta(description="Unix time.")]
    ttl_s: float


class KvLeasedChunk(ChunkMeta, frozen=True):
    """A read with transfer=shm or cuda: the metadata, the lease and one pinned handle:
    ``cuda`` when the chunk is in the asked GPU's tier, else ``shm``."""

    lease: KvLease
    shm: KvShmHandle | None = None
    cuda: KvCudaHandle | None = None


class KvPlanRequest(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """A prompt's chunks, in order (at most kv.max_plan_chunks)."""

    model: ModelName
    chunks: Annotated[list[HexKey], msgspec.Meta(description="Chunk keys in prompt order.")]
    chunk_tokens: Annotated[
        list[Dim] | None,
        msgspec.Meta(description="Each chunk's length; places the chunks after a miss."),
    ] = None
    start: Annotated[
        int, msgspec.Meta(ge=0, description="Position of the first chunk (system prompt).")
    ] = 0
    shm: Annotated[bool, msgspec.Meta(description="Hand out pinned shared-memory handles.")] = False
    device: DeviceName | None = None
    lease_s: LeaseSeconds | None = None


class KvFetch(msgspec.Struct):
    """How to fetch a hit's bytes."""

    tier: Annotated[
        str,
        msgspec.Meta(
            description="Where they were found: gpu<N>, host, disk, or shared (only the "
            "shared tier in Redis holds them: GET the http URL, which fetches them into "
            "this daemon; no handle is given)."
        ),
    ]
    http: Annotated[str, msgspec.Meta(description="The GET URL of the variant.")]
    nbytes: int
    dtype: str
    shape: tuple[int, ...]
    shm: KvShmHandle | None
    cuda: KvCudaHandle | None = None


class KvPlanChunk(msgspec.Struct):
    """One chunk of the plan: the chosen variant, its Cache-Craft metrics, what to recompute."""

    key: HexKey
    hit: bool
    variant: str | None
    exact_prefix: bool
    tokens: int | None
    position: Annotated[int | None, msgspec.Meta(description="Where it starts in the prompt.")]
    rope_base: int | None
    rope_shift: int | None
    beta: float
    gamma: float
    beta_prime: float
    cci: float
    cfo: float
    recompute: Annotated[
        list[int], msgspec.Meta(description="Token positions within the chunk, ascending.")
    ]
    fetch: KvFetch | None


class KvPlan(msgspec.Struct):
    model: str
    hits: int
    misses: int
    recompute_tokens: int
    lease: KvLease | None
    chunks: list[KvPlanChunk]


class KvTierStats(msgspec.Struct):
    """One tier's counters. For the ``shared`` tier (Redis): ``bytes``/``entries`` are
    what waits to be written there, ``budget_bytes`` the bound of that queue,
    ``promotions`` the variants fetched from it into this daemon."""

    bytes: int
    entries: int
    budget_bytes: int
    hits: int
    misses: int
    promotions: int
    demotions: int
    evictions: int
    written_bytes: Annotated[
        int, msgspec.Meta(description="shared: bytes written to Redis by this daemon.")
    ] = 0
    errors: Annotated[
        int,
        msgspec.Meta(
            description="shared: reads that failed (Redis unreachable, corrupt or "
            "unusable records)."
        ),
    ] = 0


class KvGpuDevice(msgspec.Struct):
    index: int
    uuid: str
    name: str
    total_bytes: int
    slabs: Annotated[int, msgspec.Meta(description="Slabs allocated so far.")]
    slab_bytes: int
    allocated_bytes: Annotated[int, msgspec.Meta(description="Device memory held in slabs.")]


class KvGpu(msgspec.Struct):
    """The GPU tier: on with its devices, or off and why."""

    enabled: bool
    reason: str | None
    devices: list[KvGpuDevice]


class KvStats(msgspec.Struct):
    tiers: Annotated[
        dict[str, KvTierStats],
        msgspec.Meta(description="By tier: gpu<N>, host, disk, shared (when configured)."),
    ]
    variants: int
    leases: Annotated[int, msgspec.Meta(description="Live leases.")]
    gpu: KvGpu


class KvModel(msgspec.Struct):
    layers: int
    kv_heads: int
    head_dim: int
    alpha: float
    tokenizer: str


class KvModels(msgspec.Struct):
    models: dict[str, KvModel]


class KvDeleted(msgspec.Struct):
    deleted: Annotated[int, msgspec.Meta(description="Variants removed.")]


def pack_floats(values: Sequence[float] | NDArray[Any]) -> str:
    """Floats as base64 of little-endian float32, the compact form of :data:`Floats`."""
    return base64.b64encode(np.ascontiguousarray(values, dtype="<f4").tobytes()).decode()


def unpack_floats(value: list[float] | str) -> NDArray[np.float32]:
    """A :data:`Floats` value as a float32 array; ValueError for bad base64."""
    if isinstance(value, list):
        return np.asarray(value, dtype=np.float32)
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("not valid base64") from None
    if len(raw) % 4:
        raise ValueError("base64 must hold whole float32 values")
    return np.frombuffer(raw, dtype="<f4").astype(np.float32)
