"""Keys of the RAG chunk KV cache: what a chunk is, and which variant of it.

A *chunk key* names the KV of one run of tokens under one model: xxh3-128 over the
model id, the tokenizer id, the KV dtype, the layout version and the token ids as
little-endian int32. It is position-independent (the same chunk retrieved at another
place in a prompt has the same key) and deterministic across processes and machines:
every input is spelled as bytes with explicit lengths, never through Python's
``hash`` (salted per process) or a platform's native integer size.

A *variant key* names the context a chunk's KV was computed after: xxh3-128 over the
ordered 16-byte keys of the prefix chunks. The empty prefix (computed right after
the system prompt, as the engine declares) has a variant key too.

Part of the wire format: clients import it to name what they store; it depends on
xxhash and numpy only.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import xxhash
from numpy.typing import NDArray

__all__ = [
    "KEY_BYTES",
    "KEY_PATTERN",
    "LAYOUT_VERSION",
    "KeyFormatError",
    "chunk_key",
    "key_hex",
    "parse_key",
    "variant_key",
]

KEY_BYTES = 16
LAYOUT_VERSION = 1
"""The KV blob layout that chunk keys commit to: ``[layers, 2, kv_heads, tokens, head_dim]``
(2: keys then values), C order, keys stored after RoPE at their original positions."""

_CHUNK_DOMAIN = b"semcached.chunk.v1"
_VARIANT_DOMAIN = b"semcached.variant.v1"
KEY_PATTERN = "^[0-9a-f]{32}$"
"""A key in URLs and JSON: 32 lower-case hex digits (16 bytes)."""
_KEY_HEX = re.compile(r"[0-9a-f]{32}")
_LENGTH = struct.Struct("<I")


class KeyFormatError(ValueError):
    """A key is not 32 lower-case hex digits (16 bytes)."""


def _field(text: str) -> bytes:
    raw = text.encode()
    return _LENGTH.pack(len(raw)) + raw


def chunk_key(
    model: str,
    tokenizer: str,
    dtype: str,
    token_ids: Sequence[int] | NDArray[np.integer[Any]],
    *,
    layout_version: int = LAYOUT_VERSION,
) -> bytes:
    """The 16-byte key of a chunk's KV. O(tokens).

    Raises ValueError when a token id does not fit a signed 32-bit integer.
    """
    ids = np.asarray(token_ids)
    if ids.ndim != 1:
        raise ValueError("token_ids must be one-dimensional")
    if ids.size and (ids.min() < -(2**31) or ids.max() >= 2**31):
        raise ValueError("token ids must fit in a signed 32-bit integer")
    h = xxhash.xxh3_128()
    h.update(_CHUNK_DOMAIN)
    for text in (model, tokenizer, dtype):
        h.update(_field(text))
    h.update(_LENGTH.pack(layout_version))
    h.update(_LENGTH.pack(ids.size))
    h.update(np.ascontiguousarray(ids, dtype="<i4").tobytes())
    return h.digest()


def variant_key(prefix: Iterable[bytes]) -> bytes:
    """The 16-byte key of the context ``prefix`` (ordered chunk keys). O(len(prefix))."""
    h = xxhash.xxh3_128()
    h.update(_VARIANT_DOMAIN)
    for key in prefix:
        if len(key) != KEY_BYTES:
            raise KeyFormatError(f"a chunk key has {KEY_BYTES} bytes, got {len(key)}")
        h.update(key)
    return h.digest()


def parse_key(text: str) -> bytes:
    """The bytes of a key written as 32 lower-case hex digits; KeyFormatError otherwise."""
    if not isinstance(text, str) or _KEY_HEX.fullmatch(text) is None:
        raise KeyFormatError(f"a key is 32 lower-case hex digits, got {str(text)[:40]!r}")
    return bytes.fromhex(text)


def key_hex(key: bytes) -> str:
    """A key as it travels in URLs and JSON."""
    return key.hex()
