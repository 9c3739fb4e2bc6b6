"""The Cache-Craft reuse planner: which stored variant of each chunk to reuse, and
which of its tokens to recompute because the chunk now follows different context.

A chunk's KV was computed after some prefix of other chunks (a *variant*). Reused
after a different prefix, its tokens miss the attention they would now pay to the new
context. Cache-Craft (Agarwal et al., SIGMOD 2025; /work/shared/notes/cachecraft.md
§1) estimates how much that matters from statistics stored with the variant:

* beta, prefix overlap (Eq. 6): the share of the chunk's inter-attention that went to
  prefix chunks also present in the new prefix;
* gamma, order penalty (Eq. 7): the normalised Kendall-tau distance between the old and
  the new order of those shared chunks; beta' = beta·(1 - gamma) (Eq. 8);
* CCI, cache-context impact (Eqs. 9-11): sigmoid(a / b) with a = Σ_j inter_j /
  (|C|·|C_j|) and b = intra / |C|², how much the chunk leans on its context rather
  than on itself;
* CFO, cache-fix overhead (Eq. 12): clamp(alpha·CCI·(1 - beta'), 0, 1), the fraction of the
  chunk's tokens to recompute: the top ⌈CFO·|C|⌉ tokens by inter-attention (Eq. 14),
  after the chunk's first :data:`BOUNDARY_TOKENS` tokens, which always rank first.

Why the boundary tokens first: measured on SmolLM2-135M (bench/rag_reuse.py
--diagnose), a moved chunk's first four tokens deviate from full prefill about ten
times as much per token as those past its 64th (squared K/V distance 100 against 9,
summed over layers): right after the boundary they attended mostly to what preceded
the chunk, which is exactly what changed. Their inter-attention scores do not always
say so: a variant stored with no prefix chunk has all scores 0.

Everything here is pure (numbers in, decisions out). :func:`plan_chunks` is on the
request path, so the per-variant work is small Python arithmetic over the prefix
(a handful of chunks) and whatever depends on a variant alone (CCI, the token ranking)
is computed once, when its :class:`VariantStats` is built.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = [
    "BOUNDARY_TOKENS",
    "KEY_BYTES",
    "ChunkDecision",
    "VariantStats",
    "context_impact",
    "fix_overhead",
    "order_penalty",
    "plan_chunks",
    "prefix_overlap",
    "tokens_to_recompute",
]

#: Length of a chunk key and of a variant key (xxh3_128).
KEY_BYTES = 16

#: The first tokens of a chunk, ranked before all others for recompute (see above).
BOUNDARY_TOKENS = 4

_EMPTY_POSITIONS: NDArray[np.int32] = np.empty(0, dtype=np.int32)
_EMPTY_POSITIONS.flags.writeable = False


def _frozen_vector(values: ArrayLike, name: str) -> NDArray[np.float32]:
    """A read-only 1-D float32 copy of ``values``, all finite and non-negative."""
    array = np.array(values, dtype=np.float32)
    if array.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} must be finite (float32)")
    if (array < 0).any():
        raise ValueError(f"{name} must be non-negative")
    array.flags.writeable = False
    return array


def _check_key(key: object, name: str) -> None:
    if not isinstance(key, bytes) or len(key) != KEY_BYTES:
        raise ValueError(f"{name} must be {KEY_BYTES} bytes, got {key!r}")


def _sigmoid(x: float) -> float:
    """The logistic function without overflow for any float, ±inf included."""
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


@dataclass(frozen=True, slots=True, eq=False)
class VariantStats:
    """What the planner knows about one stored variant of a chunk.

    ``inter[j]`` is the layer-averaged sum of attention from this chunk's tokens to
    prefix chunk ``prefix[j]`` (``prefix_tokens[j]`` tokens long), ``intra`` the same
    sum among the chunk's own tokens (causal), ``token_scores[t]`` token t's
    inter-attention to the whole prefix. Counts must be at least 1 (they divide),
    attention sums finite and non-negative; ValueError otherwise. Arrays are copied
    to read-only float32.

    The CCI and the token ranking depend on the variant alone, so they are computed
    here once (O(tokens·log tokens)) and the planner only looks them up.
    Equality is identity (``eq=False``): field-wise ``==`` on arrays is ambiguous.
    """

    variant: bytes
    prefix: tuple[bytes, ...]
    prefix_tokens: tuple[int, ...]
    inter: NDArray[np.float32]
    intra: float
    token_scores: NDArray[np.float32]
    tokens: int
    # Derived once, for the planner:
    _weighted: tuple[tuple[bytes, float], ...] = field(init=False, repr=False)
    _distinct: tuple[bytes, ...] = field(init=False, repr=False)  # prefix, first occurrences
    _cci: float = field(init=False, repr=False)
    _rank: NDArray[np.int32] = field(init=False, repr=False)  # best token first

    def __post_init__(self) -> None:
        _check_key(self.variant, "variant")
        prefix = tuple(self.prefix)
        for key in prefix:
            _check_key(key, "each prefix key")
        prefix_tokens = tuple(self.prefix_tokens)
        if len(prefix_tokens) != len(prefix):
            raise ValueError(
                f"prefix_tokens has {len(prefix_tokens)} counts for {len(prefix)} prefix chunks"
            )
        if any(not isinstance(n, int) or isinstance(n, bool) or n < 1 for n in prefix_tokens):
            raise ValueError("each prefix_tokens count must be an int >= 1")
        if not isinstance(self.tokens, int) or isinstance(self.tokens, bool) or self.tokens < 1:
            raise ValueError(f"tokens must be an int >= 1, got {self.tokens!r}")
        inter = _frozen_vector(self.inter, "inter")
        if len(inter) != len(prefix):
            raise ValueError(f"inter has {len(inter)} values for {len(prefix)} prefix chunks")
        scores = _frozen_vector(self.token_scores, "token_scores")
        if len(scores) != self.tokens:
            raise ValueError(f"token_scores has {len(scores)} values for {self.tokens} tokens")
        intra = float(self.intra)
        if not math.isfinite(intra) or intra < 0:
            raise ValueError(f"intra must be finite and non-negative, got {self.intra!r}")

        inter_values: list[float] = inter.tolist()
        a = 0.0
        for value, count in zip(inter_values, prefix_tokens, strict=True):
            a += value / (self.tokens * count)
        b = intra / (self.tokens * self.tokens)
        if a == 0:
            cci = 0.5  # a/b = 0: no known dependence on context
        elif b == 0:
            cci = 1.0  # all context, no self-attention: a/b = +inf
        else:
            cci = _sigmoid(a / b)
        rank = _ranking(scores)
        rank.flags.writeable = False

        set_ = object.__setattr__
        set_(self, "prefix", prefix)
        set_(self, "prefix_tokens", prefix_tokens)
        set_(self, "inter", inter)
        set_(self, "intra", intra)
        set_(self, "token_scores", scores)
        set_(self, "_weighted", tuple(zip(prefix, inter_values, strict=True)))
        set_(self, "_distinct", tuple(dict.fromkeys(prefix)))
        set_(self, "_cci", cci)
        set_(self, "_rank", rank)


@dataclass(frozen=True, slots=True, eq=False)
class ChunkDecision:
    """The plan for the chunk at ``index`` of the prompt.

    A hit names the chosen ``variant`` and its beta, gamma, beta', CCI and CFO; ``recompute``
    holds the positions within the chunk to recompute, ascending (empty for an exact
    prefix match). A miss (no stored variant) has ``hit`` False, ``variant`` None,
    beta = gamma = beta' = CCI = 0, ``cfo`` 1.0 (the whole chunk is computed) and an empty
    ``recompute``: its token count is unknown here.
    """

    index: int
    key: bytes
    hit: bool
    variant: bytes | None
    exact_prefix: bool
    beta: float
    gamma: float
    beta_prime: float
    cci: float
    cfo: float
    recompute: NDArray[np.int32]


def _ranking(scores: NDArray[np.float32]) -> NDArray[np.int32]:
    """Recompute order: the first :data:`BOUNDARY_TOKENS` positions, then the others by
    descending score (ties: the lower position first). O(T log T)."""
    head = min(BOUNDARY_TOKENS, len(scores))
    rest = head + np.argsort(-scores[head:], kind="stable")
    return np.concatenate([np.arange(head), rest]).astype(np.int32)


def _first_positions(keys: Sequence[bytes]) -> dict[bytes, int]:
    """Each distinct key's first position in ``keys``. O(len(keys))."""
    first: dict[bytes, int] = {}
    for i, key in enumerate(keys):
        first.setdefault(key, i)
    return first


def _overlap(stats: VariantStats, first: Mapping[bytes, int], limit: int) -> float:
    """beta against the new prefix ``keys[:limit]``, given the keys' first positions
    ``first`` in ``keys``. O(len(stats.prefix)).

    Numerator and denominator are summed in the same order, so a fully shared prefix
    gives exactly 1.0 and beta never exceeds 1.
    """
    total = 0.0
    shared = 0.0
    for key, value in stats._weighted:
        total += value
        if first.get(key, limit) < limit:
            shared += value
    if total == 0:
        return 1.0 if limit == 0 else 0.0
    return shared / total


def _kendall(old_distinct: Sequence[bytes], first: Mapping[bytes, int], limit: int) -> float:
    """Normalised Kendall-tau distance between the order of ``old_distinct`` and the
    order (first positions below ``limit``) of the same keys in the new prefix, over the
    keys present in both. O(n²) for n shared keys: n is a retrieval's top-k (a few to
    a few tens), where the double loop beats an O(n log n) merge count."""
    order: list[int] = []
    for key in old_distinct:
        p = first.get(key, limit)
        if p < limit:
            order.append(p)
    n = len(order)
    if n < 2:
        return 0.0
    discordant = 0
    for x in range(n - 1):
        px = order[x]
        for y in range(x + 1, n):
            if order[y] < px:
                discordant += 1
    return discordant / (n * (n - 1) // 2)


def _count(cfo: float, tokens: int) -> int:
    """⌈cfo·tokens⌉ after rounding away float error: a CFO of 0.1·3 over 10 tokens is
    3.0000000000000004 tokens, which must be 3, not 4."""
    return min(tokens, math.ceil(round(cfo * tokens, 9)))


def _cfo(alpha: float, cci: float, beta_prime: float) -> float:
    """:func:`fix_overhead` without the check of alpha (the planner checks it once)."""
    cfo = alpha * cci * (1.0 - beta_prime)
    return 0.0 if cfo <= 0 else min(cfo, 1.0)


def prefix_overlap(stats: VariantStats, new_prefix: Sequence[bytes]) -> float:
    """beta (Eq. 6): Σ inter over the old prefix chunks that also occur in ``new_prefix``
    ÷ Σ inter over the old prefix, in [0, 1]. O(len(old) + len(new)).

    When the old prefix carries no inter-attention (empty, or all zeros) the ratio is
    undefined: beta is 1.0 if ``new_prefix`` is empty too (no context then, none now),
    else 0.0 (nothing is known to be shared, so nothing is credited).
    """
    return _overlap(stats, _first_positions(new_prefix), len(new_prefix))


def order_penalty(old_prefix: Sequence[bytes], new_prefix: Sequence[bytes]) -> float:
    """gamma (Eq. 7): the normalised Kendall-tau distance, discordant pairs ÷ C(n, 2),
    between the order of the n chunks present in both prefixes in the old and in the
    new one; 0.0 when n < 2. A key repeated within a prefix counts at its first
    occurrence. In [0, 1]; O(len(old) + len(new) + n²)."""
    distinct = tuple(dict.fromkeys(old_prefix))
    return _kendall(distinct, _first_positions(new_prefix), len(new_prefix))


def context_impact(stats: VariantStats) -> float:
    """CCI (Eq. 11) = sigmoid(a / b), a = Σ_j inter_j / (tokens·prefix_tokens_j),
    b = intra / tokens². When a = 0 the ratio is 0 (CCI 0.5); when b = 0 < a it is
    +inf (CCI 1.0). Computed when the stats are built; O(1) here."""
    return stats._cci


def fix_overhead(alpha: float, cci: float, beta_prime: float) -> float:
    """CFO (Eq. 12) = clamp(alpha·CCI·(1 - beta'), 0, 1): the fraction of the chunk's tokens
    to recompute. Non-increasing in beta' for alpha, CCI ≥ 0. ValueError for a negative or
    non-finite alpha. O(1)."""
    if not math.isfinite(alpha) or alpha < 0:
        raise ValueError(f"alpha must be finite and >= 0, got {alpha!r}")
    return _cfo(alpha, cci, beta_prime)


def tokens_to_recompute(token_scores: NDArray[np.float32], cfo: float) -> NDArray[np.int32]:
    """The N = ⌈cfo·len(token_scores)⌉ positions to recompute, ascending: the first
    :data:`BOUNDARY_TOKENS`, then those with the highest scores (ties: the lower
    position first) (Eq. 14 after the boundary). ValueError unless 0 ≤ cfo ≤ 1.
    O(T log T) for T tokens (a stable sort; the planner reuses a ranking cached in
    :class:`VariantStats`)."""
    if not 0.0 <= cfo <= 1.0:
        raise ValueError(f"cfo must be in [0, 1], got {cfo!r}")
    scores = np.asarray(token_scores, dtype=np.float32)
    n = _count(cfo, len(scores))
    if n == 0:
        return _EMPTY_POSITIONS
    return np.sort(_ranking(scores)[:n]).astype(np.int32)


def plan_chunks(
    keys: Sequence[bytes],
    variants_of: Callable[[bytes], Sequence[VariantStats]],
    alpha: float,
) -> list[ChunkDecision]:
    """One decision per chunk of the new prompt ``keys`` (in order).

    The new prefix of chunk i is ``keys[:i]``. Among the variants ``variants_of(key)``
    returns, a variant computed after exactly that prefix wins (nothing to recompute,
    whatever alpha and CCI); otherwise the greatest beta', ties broken by the lower CFO, then
    by the order of the variants. No variant: a miss.

    O(Σ_i Σ_v (p_v + s_v²) + N log N) for variants v with prefix length p_v and s_v
    chunks shared with the new prefix, N the tokens recomputed: small Python arithmetic
    per variant, two numpy calls per hit that recomputes anything.
    """
    if not math.isfinite(alpha) or alpha < 0:
        raise ValueError(f"alpha must be finite and >= 0, got {alpha!r}")
    keys = tuple(keys)
    first = _first_positions(keys)
    decisions: list[ChunkDecision] = []
    for i, key in enumerate(keys):
        candidates = variants_of(key)
        if not candidates:
            decisions.append(
                ChunkDecision(i, key, False, None, False, 0.0, 0.0, 0.0, 0.0, 1.0, _EMPTY_POSITIONS)
            )
            continue
        new_prefix = keys[:i]
        best: VariantStats | None = None
        best_beta = best_gamma = best_bp = best_cfo = 0.0
        exact: VariantStats | None = None
        for stats in candidates:
            if stats.prefix == new_prefix:
                exact = stats
                break
            beta = _overlap(stats, first, i)
            # beta = 0 makes beta' = 0 whatever the order: skip the quadratic count.
            gamma = _kendall(stats._distinct, first, i) if beta > 0 else 0.0
            bp = beta * (1.0 - gamma)
            cfo = _cfo(alpha, stats._cci, bp)
            if best is None or bp > best_bp or (bp == best_bp and cfo < best_cfo):
                best, best_beta, best_gamma, best_bp, best_cfo = stats, beta, gamma, bp, cfo
        if exact is not None:
            decisions.append(
                ChunkDecision(
                    index=i,
                    key=key,
                    hit=True,
                    variant=exact.variant,
                    exact_prefix=True,
                    beta=1.0,
                    gamma=0.0,
                    beta_prime=1.0,
                    cci=exact._cci,
                    cfo=0.0,
                    recompute=_EMPTY_POSITIONS,
                )
            )
            continue
        assert best is not None
        n = _count(best_cfo, best.tokens)
        if n == 0:
            recompute = _EMPTY_POSITIONS
        else:
            recompute = np.sort(best._rank[:n])
            recompute.flags.writeable = False
        decisions.append(
            ChunkDecision(
                index=i,
                key=key,
                hit=True,
                variant=best.variant,
                exact_prefix=False,
                beta=best_beta,
                gamma=best_gamma,
                beta_prime=best_bp,
                cci=best._cci,
                cfo=best_cfo,
                recompute=recompute,
            )
        )
    return decisions
