"""Token embeddings packed small: what the cache keeps of a prompt for the verifier.

The hit verifier aligns the cached prompt's contextual token embeddings with the new
prompt's (:mod:`~semcached.cachepolicy.verify_features`). Recomputing the cached side
at lookup time would cost a model call per verified lookup, so each entry keeps its
prompt's token embeddings from the insert's own forward pass, and the embedder keeps
recent texts' the same way. At float32 a 20-token prompt would cost 30 KiB; packed
here it costs 7.9 KiB: each row (unit length) is quantised to int8 with its own scale
(the largest component maps to 127), an error of at most half a step, below 0.4% of
the row's largest component, which moves the alignment's dot products by about as
little. At most ``max_tokens`` tokens are kept (the first ones), so an entry's packed
tokens are bounded whatever the prompt.

Layout (little-endian)::

    u8 version | u16 tokens n | u16 dim | u32 ids[n] | f32 scales[n] | i8 rows[n * dim]

Pure; O(n * dim) each way.
"""

from __future__ import annotations

import struct

import numpy as np

from semcached.cachepolicy.verify_features import TokenEmbeddings

__all__ = ["DEFAULT_MAX_TOKENS", "pack_tokens", "packed_size", "unpack_tokens"]

DEFAULT_MAX_TOKENS = 64
"""Tokens kept per prompt by default: a typical question is 10 to 30 (MiniLM's
word pieces); the verifier was trained on sentences of that length."""

_VERSION = 1
_HEAD = struct.Struct("<BHH")
_MAX_TOKENS = 0xFFFF


def packed_size(tokens: int, dim: int) -> int:
    """Bytes :func:`pack_tokens` writes for ``tokens`` rows of ``dim``."""
    return _HEAD.size + tokens * (8 + dim)


def pack_tokens(tokens: TokenEmbeddings, max_tokens: int = DEFAULT_MAX_TOKENS) -> bytes:
    """The first ``max_tokens`` of ``tokens`` as bytes (see the module docstring)."""
    if not 0 < max_tokens <= _MAX_TOKENS:
        raise ValueError(f"max_tokens must be in [1, {_MAX_TOKENS}], got {max_tokens}")
    n = min(len(tokens.ids), max_tokens)
    rows = np.asarray(tokens.vectors[:n], dtype=np.float32)
    dim = rows.shape[1]
    if dim > _MAX_TOKENS:
        raise ValueError(f"token rows of {dim} dimensions cannot be packed")
    peak = np.abs(rows).max(axis=1) if n else np.empty(0, dtype=np.float32)
    scales = np.where(peak > 0, peak / 127.0, 1.0).astype("<f4")
    quantised = np.rint(rows / scales[:, None]).astype(np.int8)
    return b"".join(
        (
            _HEAD.pack(_VERSION, n, dim),
            np.asarray(tokens.ids[:n], dtype="<u4").tobytes(),
            scales.tobytes(),
            quantised.tobytes(),
        )
    )


def unpack_tokens(data: bytes | memoryview) -> TokenEmbeddings:
    """The tokens :func:`pack_tokens` packed, rows back in float32 (ValueError if damaged)."""
    if len(data) < _HEAD.size:
        raise ValueError("packed tokens are truncated")
    version, n, dim = _HEAD.unpack_from(data)
    if version != _VERSION:
        raise ValueError(f"packed tokens of version {version}; this semcached reads {_VERSION}")
    if len(data) != packed_size(n, dim):
        raise ValueError(f"packed tokens have {len(data)} bytes, expected {packed_size(n, dim)}")
    offset = _HEAD.size
    ids = np.frombuffer(data, dtype="<u4", count=n, offset=offset).astype(np.int32)
    offset += 4 * n
    scales = np.frombuffer(data, dtype="<f4", count=n, offset=offset)
    offset += 4 * n
    quantised = np.frombuffer(data, dtype=np.int8, count=n * dim, offset=offset)
    rows = quantised.reshape(n, dim).astype(np.float32) * scales[:, None]
    return TokenEmbeddings(ids, rows)
