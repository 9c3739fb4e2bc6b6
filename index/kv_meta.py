"""What the chunk KV cache stores beside each blob, and how it is laid out on disk.

A *variant* is one chunk's KV as computed after one prefix. Its blob holds the
tensor in the canonical layout ``[layers, 2, kv_heads, tokens, head_dim]`` (see
:data:`~semcached.protocol.keys.LAYOUT_VERSION`); :class:`VariantMeta` holds
everything else: shape and dtype, the RoPE base position and parameters, the
prefix it was computed after, and the Cache-Craft statistics the reuse planner
needs (per prefix chunk inter-attention, intra-attention, per-token scores).

Record encoding (version 1), little-endian::

    u8 version | u32 len(json) | json header | f32 inter[len(prefix)] | f32 scores[tokens]

The arrays travel raw: they are most of the record and decode with no parsing.
"""

from __future__ import annotations

import hashlib
import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
from numpy.typing import NDArray

from semcached.protocol.keys import KEY_BYTES

__all__ = [
    "DTYPE_BYTES",
    "ModelSpec",
    "VariantMeta",
    "decode_meta",
    "encode_meta",
    "expected_shape",
    "record_key",
    "scope_key",
]

DTYPE_BYTES: Mapping[str, int] = {"float16": 2, "bfloat16": 2, "float32": 4}
"""KV element types accepted, with their sizes (bfloat16 has no numpy dtype: its bytes
are stored as they are and clients view them as ``uint16`` or as a torch tensor)."""

_VERSION = 1
_HEAD = struct.Struct("<BI")
_F32 = np.dtype("<f4")


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """A model whose KV the daemon accepts: the shape every blob of it must have.

    ``alpha`` scales the reuse planner's recompute fraction for this model (Cache-Craft's alpha:
    larger recomputes more and keeps quality closer to a full prefill).
    """

    name: str
    layers: int
    kv_heads: int
    head_dim: int
    alpha: float = 1.0
    tokenizer: str = ""

    def __post_init__(self) -> None:
        if min(self.layers, self.kv_heads, self.head_dim) < 1:
            raise ValueError(f"model {self.name!r}: layers, kv_heads and head_dim must be >= 1")
        if not (math.isfinite(self.alpha) and self.alpha >= 0):
            raise ValueError(f"model {self.name!r}: alpha must be a finite number >= 0")


def expected_shape(model: ModelSpec, tokens: int) -> tuple[int, int, int, int, int]:
    return (model.layers, 2, model.kv_heads, tokens, model.head_dim)


def record_key(chunk: bytes, variant: bytes, scope: bytes = b"") -> bytes:
    """The LMDB key of a variant: its scope (empty or 16 bytes), the chunk key, then the
    variant key, so a chunk's variants are adjacent.

    Unscoped keys (32 bytes) are those of the laptop modes and of stores written
    before tenants; scoped ones (48 bytes) can never equal them, whatever key a
    client sends, so no tenant can name another's record.
    """
    return scope + chunk + variant


def scope_key(name: str) -> bytes:
    """The 16 bytes that put a KV scope's records apart (``""``: unscoped, no bytes).

    A cryptographic hash: two scope names that collide would share chunks, so the
    names an operator writes must not be able to collide by accident or on purpose.
    """
    if not name:
        return b""
    return hashlib.blake2b(name.encode(), digest_size=KEY_BYTES, person=b"semcached.scope").digest()


def _floats(values: NDArray[Any] | Sequence[float], length: int, what: str) -> NDArray[np.float32]:
    array = np.ascontiguousarray(values, dtype=np.float32)
    if array.shape != (length,):
        raise ValueError(f"{what} must have {length} values, got shape {array.shape}")
    if length and (not np.isfinite(array).all() or array.min() < 0):
        raise ValueError(f"{what} must be finite and non-negative")
    return array


@dataclass(slots=True)
class VariantMeta:
    """One stored variant. Mutable only in its access bookkeeping (``hits``, ``last_access``).

    ``inter``: per prefix chunk, the layer-averaged sum of attention from this chunk's
    tokens to that chunk; ``intra``: the layer-averaged sum of causal attention among
    this chunk's own tokens; ``token_scores``: per token of this chunk, its
    inter-attention to the prefix. All zero when the engine sent no statistics.
    """

    chunk: bytes
    variant: bytes
    model: str
    dtype: str
    shape: tuple[int, ...]
    prefix: tuple[bytes, ...]
    prefix_tokens: tuple[int, ...]
    rope_base: int
    rope: dict[str, Any]
    inter: NDArray[np.float32]
    intra: float
    token_scores: NDArray[np.float32]
    created_at: float
    hits: int = 0
    last_access: float = 0.0
    scope: bytes = b""  # whose chunk key this is (:func:`scope_key`); b"": unscoped
    nbytes: int = field(init=False)

    def __post_init__(self) -> None:
        if len(self.chunk) != KEY_BYTES or len(self.variant) != KEY_BYTES:
            raise ValueError("chunk and variant keys have 16 bytes")
        if len(self.scope) not in (0, KEY_BYTES):
            raise ValueError("a scope has 0 or 16 bytes")
        if self.dtype not in DTYPE_BYTES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPE_BYTES)}, got {self.dtype!r}")
        if len(self.shape) != 5 or min(self.shape) < 1 or self.shape[1] != 2:
            raise ValueError(
                f"shape must be [layers, 2, kv_heads, tokens, head_dim], got {list(self.shape)}"
            )
        if len(self.prefix_tokens) != len(self.prefix):
            raise ValueError("prefix_tokens must give one token count per prefix chunk")
        if any(n < 1 for n in self.prefix_tokens):
            raise ValueError("prefix_tokens must be >= 1")
        if self.rope_base < 0:
            raise ValueError("rope_base must be >= 0")
        if not (math.isfinite(self.intra) and self.intra >= 0):
            raise ValueError("intra must be finite and non-negative")
        self.inter = _floats(self.inter, len(self.prefix), "inter")
        self.token_scores = _floats(self.token_scores, self.tokens, "token_scores")
        self.nbytes = math.prod(self.shape) * DTYPE_BYTES[self.dtype]

    @property
    def tokens(self) -> int:
        return self.shape[3]

    @property
    def key(self) -> bytes:
        """The record's LMDB key (scope, chunk, variant)."""
        return record_key(self.chunk, self.variant, self.scope)

    @property
    def stored_chunk(self) -> bytes:
        """The chunk as stored: its scope then the client's chunk key."""
        return self.scope + self.chunk


def encode_meta(meta: VariantMeta) -> bytes:
    """The record of ``meta``; ValueError when ``rope`` (free-form JSON) cannot be
    stored (nested more than 254 deep, an integer beyond 64 bits)."""
    try:
        header = _encode_header(meta)
    except orjson.JSONEncodeError as exc:
        raise ValueError(f"rope: cannot be stored: {exc}") from None
    return b"".join(
        (
            _HEAD.pack(_VERSION, len(header)),
            header,
            meta.inter.astype(_F32, copy=False).tobytes(),
            meta.token_scores.astype(_F32, copy=False).tobytes(),
        )
    )


def _encode_header(meta: VariantMeta) -> bytes:
    return orjson.dumps(
        {
            "model": meta.model,
            "dtype": meta.dtype,
            "shape": list(meta.shape),
            "prefix": [k.hex() for k in meta.prefix],
            "prefix_tokens": list(meta.prefix_tokens),
            "rope_base": meta.rope_base,
            "rope": meta.rope,
            "intra": meta.intra,
            "created_at": meta.created_at,
            "hits": meta.hits,
            "last_access": meta.last_access,
        }
    )


def decode_meta(key: bytes, record: bytes) -> VariantMeta:
    """The variant stored under ``key`` (32 or 48 bytes, see :func:`record_key`);
    ValueError for a corrupt record."""
    if len(key) not in (2 * KEY_BYTES, 3 * KEY_BYTES):
        raise ValueError(f"a chunk record key has 32 or 48 bytes, not {len(key)}")
    scope, key = key[: len(key) - 2 * KEY_BYTES], key[len(key) - 2 * KEY_BYTES :]
    version, length = _HEAD.unpack_from(record)
    if version != _VERSION:
        raise ValueError(f"unknown chunk metadata version {version}")
    start = _HEAD.size
    doc = orjson.loads(record[start : start + length])
    start += length
    n_prefix = len(doc["prefix"])
    tokens = int(doc["shape"][3])
    inter = np.frombuffer(record, _F32, n_prefix, start)
    scores = np.frombuffer(record, _F32, tokens, start + 4 * n_prefix)
    return VariantMeta(
        chunk=key[:KEY_BYTES],
        variant=key[KEY_BYTES:],
        model=doc["model"],
        dtype=doc["dtype"],
        shape=tuple(doc["shape"]),
        prefix=tuple(bytes.fromhex(k) for k in doc["prefix"]),
        prefix_tokens=tuple(doc["prefix_tokens"]),
        rope_base=int(doc["rope_base"]),
        rope=dict(doc["rope"]),
        inter=inter,
        intra=float(doc["intra"]),
        token_scores=scores,
        created_at=float(doc["created_at"]),
        hits=int(doc["hits"]),
        last_access=float(doc["last_access"]),
        scope=scope,
    )
