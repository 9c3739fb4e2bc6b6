"""The Cache-Craft reuse planner: hand-computed beta, gamma, CCI, CFO and token choices, the
variant choice, and properties of random plans."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from semcached.cachepolicy.reuse import (
    BOUNDARY_TOKENS,
    KEY_BYTES,
    ChunkDecision,
    VariantStats,
    context_impact,
    fix_overhead,
    order_penalty,
    plan_chunks,
    prefix_overlap,
    tokens_to_recompute,
)


def key(n: int) -> bytes:
    return bytes([n]) * KEY_BYTES


A, B, C, D, X = (key(n) for n in range(1, 6))


def stats(
    prefix: Sequence[bytes] = (),
    inter: Sequence[float] | None = None,
    *,
    intra: float = 1.0,
    scores: Sequence[float] = (1.0, 1.0, 1.0, 1.0),
    prefix_tokens: Sequence[int] | None = None,
    variant: int = 0xAA,
) -> VariantStats:
    return VariantStats(
        variant=key(variant),
        prefix=tuple(prefix),
        prefix_tokens=tuple(prefix_tokens or [4] * len(prefix)),
        inter=np.array([1.0] * len(prefix) if inter is None else inter, dtype=np.float32),
        intra=intra,
        token_scores=np.array(scores, dtype=np.float32),
        tokens=len(scores),
    )


# -- beta ---------------------------------------------------------------------------------


def test_prefix_overlap_weights_shared_chunks_by_their_inter_attention() -> None:
    s = stats([A, B, C], [1.0, 2.0, 3.0])
    assert prefix_overlap(s, [C, A, D]) == pytest.approx((1 + 3) / 6)
    assert prefix_overlap(s, [B]) == pytest.approx(2 / 6)
    assert prefix_overlap(s, [D, X]) == 0.0
    assert prefix_overlap(s, []) == 0.0
    assert prefix_overlap(s, [C, B, A]) == 1.0  # order does not matter to beta
    assert prefix_overlap(s, [A, B, C]) == 1.0


def test_prefix_overlap_without_inter_attention() -> None:
    # Nothing to weigh: 1.0 when there is no context now either, else 0.0.
    assert prefix_overlap(stats(), []) == 1.0
    assert prefix_overlap(stats(), [A]) == 0.0
    zeros = stats([A, B], [0.0, 0.0])
    assert prefix_overlap(zeros, []) == 1.0
    assert prefix_overlap(zeros, [A, B]) == 0.0


# -- gamma ---------------------------------------------------------------------------------


def test_order_penalty_counts_discordant_pairs() -> None:
    # old A<B<C; new positions C=0, A=1, B=2: (A,B) concordant, (A,C) and (B,C)
    # discordant -> 2 of C(3,2) = 3 pairs.
    assert order_penalty([A, B, C], [C, A, B]) == pytest.approx(2 / 3)
    assert order_penalty([A, B, C], [C, B, A]) == 1.0
    assert order_penalty([A, B, C], [A, B, C]) == 0.0
    assert order_penalty([A, B, C, D], [B, A, D, C]) == pytest.approx(2 / 6)


def test_order_penalty_only_over_shared_chunks() -> None:
    assert order_penalty([A, B, C], [B, X, A]) == 1.0  # shared A, B: swapped
    assert order_penalty([A, B, C], [X, A, D, C]) == 0.0  # shared A, C: same order
    assert order_penalty([A, B], [B]) == 0.0  # fewer than two shared
    assert order_penalty([], [A, B]) == 0.0
    assert order_penalty([A, B, A], [B, A]) == 1.0  # repeats count at their first position
    assert order_penalty([A, B], [B, A, B]) == 1.0


# -- CCI -------------------------------------------------------------------------------


def test_context_impact_by_hand() -> None:
    # tokens 4; prefix chunks of 2 and 4 tokens with inter 4 and 8; intra 8:
    # a = 4/(4*2) + 8/(4*4) = 1.0, b = 8/16 = 0.5, CCI = sigmoid(2).
    s = stats([A, B], [4.0, 8.0], intra=8.0, prefix_tokens=[2, 4])
    assert context_impact(s) == pytest.approx(1 / (1 + math.exp(-2.0)))


def test_context_impact_edge_cases() -> None:
    assert context_impact(stats()) == 0.5  # a = 0: no known context dependence
    assert context_impact(stats([A], [0.0], intra=5.0)) == 0.5
    assert context_impact(stats([A], [0.0], intra=0.0)) == 0.5
    assert context_impact(stats([A], [3.0], intra=0.0)) == 1.0  # b = 0 < a
    # a / b overflows to inf: the sigmoid must not raise.
    huge = stats([A], [3e38], intra=1e-300, prefix_tokens=[1], scores=[1.0])
    assert context_impact(huge) == 1.0
    tiny = stats([A], [1e-30], intra=3e38, prefix_tokens=[1000], scores=[1.0])
    assert context_impact(tiny) == pytest.approx(0.5)


# -- CFO -------------------------------------------------------------------------------


def test_fix_overhead_scales_with_alpha_and_clamps() -> None:
    assert fix_overhead(1.0, 0.8, 0.5) == pytest.approx(0.4)
    assert fix_overhead(2.0, 0.8, 0.5) == pytest.approx(0.8)
    assert fix_overhead(5.0, 0.9, 0.0) == 1.0
    assert fix_overhead(0.0, 0.9, 0.0) == 0.0
    assert fix_overhead(3.0, 0.9, 1.0) == 0.0
    for bad in (-0.1, math.nan, math.inf):
        with pytest.raises(ValueError, match="alpha"):
            fix_overhead(bad, 0.5, 0.5)


# -- which tokens ----------------------------------------------------------------------


def test_tokens_to_recompute_boundary_then_top_scores_ascending() -> None:
    assert BOUNDARY_TOKENS == 4
    # The first four tokens (the chunk's boundary) come first whatever their scores.
    scores = np.array([0.0, 0.0, 0.0, 0.0, 0.1, 0.9, 0.5, 0.9, 0.2, 0.0], dtype=np.float32)
    chosen = tokens_to_recompute(scores, 0.6)  # N = 6: the boundary and the two 0.9s
    assert chosen.dtype == np.int32
    assert chosen.tolist() == [0, 1, 2, 3, 5, 7]
    assert tokens_to_recompute(scores, 0.65).tolist() == [0, 1, 2, 3, 5, 6, 7]  # ceil(6.5)
    assert tokens_to_recompute(scores, 0.2).tolist() == [0, 1]
    assert tokens_to_recompute(scores, 0.0).tolist() == []
    assert tokens_to_recompute(scores, 1.0).tolist() == list(range(10))
    assert tokens_to_recompute(scores, 0.01).tolist() == [0]  # any fraction > 0: one token


def test_tokens_to_recompute_ties_go_to_lower_positions() -> None:
    scores = np.array([0, 0, 0, 0, 0.5, 0.7, 0.5, 0.5, 0.7], dtype=np.float32)
    # N = 7: the boundary, the 0.7s, then the first 0.5.
    assert tokens_to_recompute(scores, 7 / 9).tolist() == [0, 1, 2, 3, 4, 5, 8]


def test_tokens_to_recompute_ceil_ignores_float_error() -> None:
    # A CFO of 0.3 that arrives as 0.1 * 3 is 0.30000000000000004; times 10 tokens it
    # is 3.0000000000000004, which a bare ceil would make 4.
    cfo = 0.1 * 3
    assert cfo * 10 > 3
    ones = np.ones(10, dtype=np.float32)
    assert tokens_to_recompute(ones, cfo).tolist() == [0, 1, 2]
    assert tokens_to_recompute(ones, 0.3).tolist() == [0, 1, 2]
    assert 0.07 * 100 > 7
    assert len(tokens_to_recompute(np.ones(100, dtype=np.float32), 0.07)) == 7


def test_tokens_to_recompute_rejects_bad_fractions() -> None:
    for bad in (-0.1, 1.5, math.nan):
        with pytest.raises(ValueError, match="cfo"):
            tokens_to_recompute(np.ones(3, dtype=np.float32), bad)


# -- validation ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"variant": b"short"}, "variant must be 16 bytes"),
        ({"prefix": (A, b"x")}, "prefix key must be 16 bytes"),
        ({"prefix_tokens": (4,)}, "prefix_tokens has 1 counts for 2"),
        ({"prefix_tokens": (4, 0)}, "prefix_tokens count must be an int >= 1"),
        ({"inter": np.ones(3, dtype=np.float32)}, "inter has 3 values for 2"),
        ({"inter": np.array([1.0, -1.0], dtype=np.float32)}, "inter must be non-negative"),
        ({"inter": np.array([1.0, np.nan], dtype=np.float32)}, "inter must be finite"),
        ({"inter": np.ones((2, 1), dtype=np.float32)}, "one-dimensional"),
        ({"intra": -1.0}, "intra must be finite and non-negative"),
        ({"intra": math.inf}, "intra must be finite"),
        ({"tokens": 0, "token_scores": np.ones(0, dtype=np.float32)}, "tokens must be an int"),
        ({"tokens": 5}, "token_scores has 4 values for 5 tokens"),
        ({"token_scores": np.array([1, 2, np.inf, 0], dtype=np.float32)}, "token_scores must"),
    ],
)
def test_variant_stats_validation(change: dict[str, object], message: str) -> None:
    fields: dict[str, object] = {
        "variant": key(9),
        "prefix": (A, B),
        "prefix_tokens": (4, 4),
        "inter": np.ones(2, dtype=np.float32),
        "intra": 1.0,
        "token_scores": np.ones(4, dtype=np.float32),
        "tokens": 4,
    }
    with pytest.raises(ValueError, match=message):
        VariantStats(**(fields | change))  # type: ignore[arg-type]


def test_variant_stats_arrays_are_read_only_copies() -> None:
    inter = np.array([1.0, 2.0], dtype=np.float32)
    s = VariantStats(key(9), (A, B), (4, 4), inter, 1.0, np.ones(2, dtype=np.float32), 2)
    inter[0] = 7.0
    assert s.inter.tolist() == [1.0, 2.0]
    assert not s.inter.flags.writeable
    assert not s.token_scores.flags.writeable


# -- plans -----------------------------------------------------------------------------


def test_exact_prefix_recomputes_nothing_whatever_alpha() -> None:
    exact = stats([A, B], [5.0, 5.0], intra=0.0, variant=1)  # CCI 1.0
    other = stats([B, A], [5.0, 5.0], intra=0.0, variant=2)
    table = {C: [other, exact], A: [stats(variant=3)]}
    plan = plan_chunks([A, B, C], lambda k: table.get(k, []), alpha=100.0)
    first, miss, third = plan
    assert (first.hit, first.exact_prefix, first.variant) == (True, True, key(3))  # () == ()
    assert (miss.hit, miss.variant, miss.cfo, miss.recompute.tolist()) == (False, None, 1.0, [])
    assert (third.index, third.key, third.variant, third.exact_prefix) == (2, C, key(1), True)
    assert (third.beta, third.gamma, third.beta_prime, third.cfo) == (1.0, 0.0, 1.0, 0.0)
    assert third.cci == 1.0
    assert third.recompute.tolist() == []


def test_reordered_prefix_is_penalised() -> None:
    # C stored after [A, B]; now after [B, A]: beta = 1, gamma = 1, beta' = 0, CFO = alpha·CCI.
    s = stats([A, B], [2.0, 2.0], intra=4.0, scores=[0.1, 0.4, 0.3, 0.2], variant=7)
    [*_, decision] = plan_chunks([B, A, C], lambda k: [s] if k == C else [], alpha=1.0)
    cci = context_impact(s)
    assert (decision.beta, decision.gamma, decision.beta_prime) == (1.0, 1.0, 0.0)
    assert decision.cfo == pytest.approx(cci)
    n = math.ceil(cci * 4)
    assert decision.recompute.tolist() == list(range(n))  # all within the boundary
    assert not decision.exact_prefix


def test_variant_choice_greatest_beta_prime_then_lower_cfo_then_order() -> None:
    # New prefix of C: [A, B].
    partial = stats([A, X], [1.0, 1.0], variant=1)  # beta = 0.5
    full = stats([A, D, B], [2.0, 0.0, 2.0], variant=2)  # beta = 1, gamma = 0
    swapped = stats([B, A], [1.0, 1.0], variant=3)  # beta = 1, gamma = 1
    keys = [A, B, C]

    def pick(variants: list[VariantStats]) -> ChunkDecision:
        return plan_chunks(keys, lambda k: variants if k == C else [], 1.0)[2]

    assert pick([partial, swapped, full]).variant == key(2)
    assert pick([partial, swapped]).variant == key(1)
    # Equal beta' (both 0.5): the lower CFO wins, i.e. the lower CCI.
    leans = stats([A, X], [8.0, 8.0], intra=1.0, variant=4)
    selfish = stats([B, X], [1.0, 1.0], intra=64.0, variant=5)
    assert context_impact(selfish) < context_impact(leans)
    assert pick([leans, selfish]).variant == key(5)
    assert pick([selfish, leans]).variant == key(5)
    # Equal beta' and CFO: the first listed.
    twin = stats([A, X], [1.0, 1.0], variant=6)
    assert pick([partial, twin]).variant == key(1)
    assert pick([twin, partial]).variant == key(6)
    # An exact match wins even when listed last.
    exact = stats([A, B], [0.0, 0.0], variant=8)
    assert pick([full, exact]).variant == key(8)


def test_repeated_chunk_and_unknown_chunks() -> None:
    again = stats([A, B], [1.0, 1.0], variant=1)
    table = {A: [stats(variant=2), again]}
    plan = plan_chunks([A, B, A], lambda k: table.get(k, []), 0.5)
    assert [d.hit for d in plan] == [True, False, True]
    assert [d.variant for d in plan] == [key(2), None, key(1)]
    assert plan[2].exact_prefix
    assert plan_chunks([], lambda k: [], 1.0) == []
    with pytest.raises(ValueError, match="alpha"):
        plan_chunks([A], lambda k: [], -1.0)


# -- properties ------------------------------------------------------------------------

KEYS = [key(n) for n in range(1, 7)]
keys_st = st.lists(st.sampled_from(KEYS), max_size=6)
weights = st.floats(0.0, 50.0, width=32) | st.just(0.0)


@st.composite
def variant_stats(draw: st.DrawFn) -> VariantStats:
    prefix = draw(keys_st)
    tokens = draw(st.integers(1, 40))
    return VariantStats(
        variant=draw(st.binary(min_size=KEY_BYTES, max_size=KEY_BYTES)),
        prefix=tuple(prefix),
        prefix_tokens=tuple(
            draw(st.lists(st.integers(1, 64), min_size=len(prefix), max_size=len(prefix)))
        ),
        inter=np.array(
            draw(st.lists(weights, min_size=len(prefix), max_size=len(prefix))), dtype=np.float32
        ),
        intra=draw(st.floats(0.0, 500.0)),
        # A few distinct scores, so ties are common.
        token_scores=np.array(
            draw(
                st.lists(st.sampled_from([0.0, 0.25, 0.5, 1.0]), min_size=tokens, max_size=tokens)
            ),
            dtype=np.float32,
        ),
        tokens=tokens,
    )


@settings(max_examples=200, deadline=None)
@given(
    keys=st.lists(st.sampled_from(KEYS), min_size=1, max_size=8),
    # A chunk's variants have distinct keys (the store is keyed by them).
    table=st.dictionaries(
        st.sampled_from(KEYS),
        st.lists(variant_stats(), max_size=4, unique_by=lambda s: s.variant),
    ),
    alpha=st.floats(0.0, 4.0),
)
def test_plans_are_consistent(
    keys: list[bytes], table: dict[bytes, list[VariantStats]], alpha: float
) -> None:
    plan = plan_chunks(keys, lambda k: table.get(k, []), alpha)
    assert [(d.index, d.key) for d in plan] == list(enumerate(keys))
    for d in plan:
        positions = d.recompute.tolist()
        assert d.recompute.dtype == np.int32
        assert positions == sorted(set(positions))
        assert 0.0 <= d.cfo <= 1.0
        if not d.hit:
            assert table.get(d.key, []) == []
            assert d.variant is None
            assert positions == []
            continue
        candidates = table[d.key]
        chosen = next(s for s in candidates if s.variant == d.variant)
        new_prefix = keys[: d.index]
        assert all(0 <= p < chosen.tokens for p in positions)
        assert 0.0 <= d.beta <= 1.0
        assert 0.0 <= d.gamma <= 1.0
        assert d.cci == context_impact(chosen)
        if d.exact_prefix:
            assert chosen.prefix == tuple(new_prefix)
            assert positions == []
            assert d.cfo == 0.0
            continue
        assert all(s.prefix != tuple(new_prefix) for s in candidates)
        # The plan agrees with the public formulas.
        assert d.beta == prefix_overlap(chosen, new_prefix)
        gamma = order_penalty(chosen.prefix, new_prefix) if d.beta > 0 else 0.0
        assert d.gamma == gamma
        assert d.beta_prime == d.beta * (1 - d.gamma)
        assert d.cfo == fix_overhead(alpha, d.cci, d.beta_prime)
        assert positions == tokens_to_recompute(chosen.token_scores, d.cfo).tolist()
        assert len(positions) == math.ceil(round(d.cfo * chosen.tokens, 9)) <= chosen.tokens
        # No variant ranks higher: a greater beta', or an equal beta' and a lower CFO.
        for s in candidates:
            bp = prefix_overlap(s, new_prefix) * (1 - order_penalty(s.prefix, new_prefix))
            cfo = fix_overhead(alpha, context_impact(s), bp)
            assert (bp, -cfo) <= (d.beta_prime, -d.cfo)


@settings(max_examples=300, deadline=None)
@given(
    alpha=st.floats(0.0, 10.0),
    cci=st.floats(0.0, 1.0),
    bp=st.lists(st.floats(0.0, 1.0), min_size=2, max_size=2),
)
def test_more_beta_prime_never_raises_cfo(alpha: float, cci: float, bp: list[float]) -> None:
    low, high = sorted(bp)
    assert 0.0 <= fix_overhead(alpha, cci, high) <= fix_overhead(alpha, cci, low) <= 1.0
