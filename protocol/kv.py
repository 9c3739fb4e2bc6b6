"""The chunk KV cache's metadata as it travels: what a put declares, what a read reports.

Both are msgspec structs: the daemon decodes and validates the put header with
:class:`ChunkPutMeta` (the constraints below are also what the OpenAPI document
shows), and a client builds one to store a chunk instead of passing a dozen keyword
arguments. Keys travel as 32 lower-case hex digits (:func:`semcached.protocol.keys.key_hex`).
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
    "KvDtype",
    "pack_floats",
    "unpack_floats",
]

KvDtype = Literal["float16", "bfloat16", "float32"]
KV_DTYPES: tuple[str, ...] = ("float16", "bfloat16", "float32")

HexKey = Annotated[str, msgspec.Meta(pattern=KEY_PATTERN, description="32 lower-case hex digits.")]
Dim = Annotated[int, msgspec.Meta(ge=1)]
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
        float, msgspec.Meta(description="Summed causal attention among the chunk's tokens.")
    ] = 0.0
    token_scores: Annotated[
        Floats | None, msgspec.Meta(description="Per token: its inter-attention to the prefix.")
    ] = None


class ChunkPutMeta(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """What a put declares about its blob (JSON in the ``X-Semcached-KV-Meta`` header)."""

    model: Annotated[
        str, msgspec.Meta(min_length=1, max_length=256, description="A model the daemon knows.")
    ]
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
    rope_base: Annotated[int, msgspec.Meta(description="Position of the chunk's first token.")] = 0
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
