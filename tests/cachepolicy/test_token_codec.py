"""Packed token embeddings: round trip within the int8 error, bounded, damage refused."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from semcached.cachepolicy.token_codec import pack_tokens, packed_size, unpack_tokens
from semcached.cachepolicy.verify_features import TokenEmbeddings


def _tokens(n: int, dim: int = 384, seed: int = 0) -> TokenEmbeddings:
    rng = np.random.default_rng(seed)
    rows = rng.standard_normal((n, dim)).astype(np.float32)
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    return TokenEmbeddings(rng.integers(0, 30_000, n).astype(np.int32), rows)


@given(n=st.integers(0, 40), dim=st.integers(1, 64), seed=st.integers(0, 2**32 - 1))
def test_round_trip_keeps_ids_and_rows_within_half_a_step(n: int, dim: int, seed: int) -> None:
    tokens = _tokens(n, dim, seed)
    packed = pack_tokens(tokens)
    assert len(packed) == packed_size(n, dim)
    back = unpack_tokens(packed)
    assert back.ids.tolist() == tokens.ids.tolist()
    assert back.vectors.shape == (n, dim)
    if n:
        step = np.abs(tokens.vectors).max(axis=1, keepdims=True) / 127.0
        assert (np.abs(back.vectors - tokens.vectors) <= step / 2 + 1e-6).all()


def test_alignment_dot_products_barely_move() -> None:
    a, b = _tokens(20, seed=1), _tokens(15, seed=2)
    exact = a.vectors @ b.vectors.T
    packed = unpack_tokens(pack_tokens(a)).vectors @ unpack_tokens(pack_tokens(b)).vectors.T
    assert float(np.abs(exact - packed).max()) < 0.01


def test_only_the_first_max_tokens_are_kept() -> None:
    tokens = _tokens(100)
    back = unpack_tokens(pack_tokens(tokens, max_tokens=8))
    assert back.ids.tolist() == tokens.ids[:8].tolist()
    with pytest.raises(ValueError, match="max_tokens"):
        pack_tokens(tokens, max_tokens=0)


@pytest.mark.parametrize(
    "damage",
    [
        lambda b: b[:3],
        lambda b: b[:-1],
        lambda b: b + b"x",
        lambda b: bytes([9]) + b[1:],
    ],
)
def test_damaged_bytes_are_refused(damage: object) -> None:
    packed = pack_tokens(_tokens(5))
    with pytest.raises(ValueError, match="packed tokens"):
        unpack_tokens(damage(packed))  # type: ignore[operator]
