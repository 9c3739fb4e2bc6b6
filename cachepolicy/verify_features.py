"""The features a hit verifier reads from a (cached prompt, new prompt) pair.

Cosine similarity alone cannot tell "A man is playing a guitar" from "A man is
playing a flute": one swapped content word moves a sentence vector very little. The
features here look at what the vector averages away:

* **token alignment** (BERTScore-style greedy matching, Zhang et al. 2020): each
  token of one prompt is matched to its most similar token of the other by their
  contextual embeddings; precision, recall and F1 of the matches, and the worst
  matches among *content* tokens (a swapped noun or verb has no good partner);
* **lexical cues**: numbers that differ, a negation on one side only, capitalised
  names that differ, content words on one side only, length.

Pure and cheap: for prompts of m and n tokens the alignment is one (m x n) matrix
product, O(m n d) with d = 384 for MiniLM, and the lexical part is O(length); the
statistics of a few dozen numbers are computed on Python floats, cheaper than numpy
calls on arrays that small. Measured 0.14 ms per pair of ~15-token prompts, 0.10 ms
per pair in batches of 8 sharing their query (whose analysis is done once); see
bench/verifier_speed.py. The product goes to numpy's BLAS, which may run it on
several threads for long prompts (OpenBLAS from about 27 x 27 tokens): on a busy
2-core machine a 40 x 40 product measured 0.17 ms at best, 0.57 ms median. Token
data is optional; without it the alignment features are NaN, which the tree model
was trained to read as "missing".
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from struct import Struct
from typing import NamedTuple, Protocol

import numpy as np
import numpy.typing as npt

__all__ = ["FEATURE_NAMES", "FeaturePair", "TokenEmbeddings", "feature_rows", "pair_features"]

FEATURE_NAMES: tuple[str, ...] = (
    "cosine",
    "align_precision",
    "align_recall",
    "align_f1",
    "worst_match_cached",
    "worst_match_query",
    "worst_content_cached",
    "worst_content_query",
    "worst_content",
    "mean_content_cached",
    "mean_content_query",
    "two_worst_content",
    "low_match_share",
    "content_jaccard",
    "content_only_cached",
    "content_only_query",
    "numbers_differing",
    "numbers_present",
    "negations_differing",
    "names_differing",
    "length_ratio",
    "length_max",
)
_ALIGNMENT = 13  # FEATURE_NAMES[1:_ALIGNMENT] need token embeddings
_LOW_MATCH = 0.6  # a token whose best partner is below this has no counterpart

# Function words: their alignment says little about meaning (English; other
# languages fall back to every word counting as content).
STOP_WORDS: frozenset[str] = frozenset(
    # One string, not a 110-line list literal.
    """a an the is are was were be been being am do does did doing have has had having
    i me my we our you your he him his she her it its they them their this that these
    those of in on at to for from by with about as into over under after before between
    through during and or but if so than then too very can will would should could may
    might must shall what which who whom whose when where why how there here up down out
    off again further once all any both each few more most other some such only own same
    just also""".split()  # noqa: SIM905
)
_NEGATIONS = frozenset(
    ("not", "no", "never", "none", "nobody", "nothing", "neither", "nor", "without", "cannot")
)
_WORD = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)?|\d+(?:[.,]\d+)*")
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
_NO_ALIGNMENT = (math.nan,) * (_ALIGNMENT - 1)
_FLOAT32 = Struct("<f")


@dataclass(frozen=True, slots=True)
class TokenEmbeddings:
    """A prompt's contextual token embeddings, special tokens removed.

    ``ids`` are the tokenizer's ids (to tell content tokens from stop words);
    ``vectors`` has one L2-normalised row per token.
    """

    ids: npt.NDArray[np.int32]
    vectors: npt.NDArray[np.float32]

    def __post_init__(self) -> None:
        if self.vectors.ndim != 2 or len(self.ids) != len(self.vectors):
            raise ValueError("need one vector row per token id")


class FeaturePair(Protocol):
    """A candidate pair as :func:`feature_rows` reads it (e.g. a verifier's Candidate)."""

    @property
    def cached(self) -> str: ...
    @property
    def query(self) -> str: ...
    @property
    def cosine(self) -> float: ...
    @property
    def cached_tokens(self) -> TokenEmbeddings | None: ...
    @property
    def query_tokens(self) -> TokenEmbeddings | None: ...


def pair_features(
    cached: str,
    query: str,
    cosine: float,
    *,
    cached_tokens: TokenEmbeddings | None = None,
    query_tokens: TokenEmbeddings | None = None,
    stop_ids: Collection[int] = (),
) -> npt.NDArray[np.float64]:
    """One row of :data:`FEATURE_NAMES` for a candidate pair; NaN where a part is missing."""
    row = _row(
        cached,
        query,
        cosine,
        cached_tokens=cached_tokens,
        query_tokens=query_tokens,
        stop_ids=stop_ids,
        memo=_Memo(),
    )
    return np.array(row, dtype=np.float64)


def feature_rows(
    pairs: Sequence[FeaturePair], stop_ids: Collection[int] = ()
) -> npt.NDArray[np.float64]:
    """The rows of :func:`pair_features` for several pairs (len(pairs) x len(FEATURE_NAMES)).

    A text or a token sequence that several pairs share (the one query of a lookup's
    candidates) is analysed once.
    """
    memo = _Memo()
    rows = [
        _row(
            p.cached,
            p.query,
            p.cosine,
            cached_tokens=p.cached_tokens,
            query_tokens=p.query_tokens,
            stop_ids=stop_ids,
            memo=memo,
        )
        for p in pairs
    ]
    return np.array(rows, dtype=np.float64).reshape(len(rows), len(FEATURE_NAMES))


class _Words(NamedTuple):
    """The lexical view of one text."""

    length: int  # words
    content: frozenset[str]  # lower-cased words that are not stop words
    numbers: frozenset[str]
    negations: int
    names: frozenset[str]


class _Memo:
    """What one call has analysed: texts by value, token sequences by identity (they
    outlive the call, so their ids are not reused meanwhile)."""

    __slots__ = ("content", "words")

    def __init__(self) -> None:
        self.words: dict[str, _Words] = {}
        self.content: dict[int, list[bool] | None] = {}


def _row(
    cached: str,
    query: str,
    cosine: float,
    *,
    cached_tokens: TokenEmbeddings | None,
    query_tokens: TokenEmbeddings | None,
    stop_ids: Collection[int],
    memo: _Memo,
) -> list[float]:
    row = [float(cosine)]
    if cached_tokens is not None and query_tokens is not None:
        row += _alignment(cached_tokens, query_tokens, stop_ids, memo)
    else:
        row += _NO_ALIGNMENT
    row += _lexical(_words(cached, memo), _words(query, memo))
    return row


def _alignment(
    cached: TokenEmbeddings, query: TokenEmbeddings, stop_ids: Collection[int], memo: _Memo
) -> list[float]:
    """The alignment features from one (m x n) matrix product; the statistics of a few
    dozen numbers are cheaper as Python floats than as numpy calls."""
    if not len(cached.ids) or not len(query.ids):
        return list(_NO_ALIGNMENT)
    sims = cached.vectors @ query.vectors.T
    best_for_cached: list[float] = sims.max(axis=1).tolist()  # each cached token's best partner
    best_for_query: list[float] = sims.max(axis=0).tolist()
    precision = _mean(best_for_query)
    recall = _mean(best_for_cached)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    content_cached = _content(best_for_cached, _content_mask(cached, stop_ids, memo))
    content_query = _content(best_for_query, _content_mask(query, stop_ids, memo))
    both = content_cached + content_query
    low = sum(1 for b in both if b < _LOW_MATCH)
    worst_cached, worst_query = min(content_cached), min(content_query)
    return [
        precision,
        recall,
        f1,
        min(best_for_cached),
        min(best_for_query),
        worst_cached,
        worst_query,
        min(worst_cached, worst_query),
        _mean(content_cached),
        _mean(content_query),
        _mean(sorted(both)[:2]),  # the two worst content matches
        low / len(both),
    ]


def _mean(values: list[float]) -> float:
    """The mean of float32 values, rounded to float32 as numpy's float32 mean is."""
    return float(_FLOAT32.unpack(_FLOAT32.pack(math.fsum(values) / len(values)))[0])


def _content_mask(
    tokens: TokenEmbeddings, stop_ids: Collection[int], memo: _Memo
) -> list[bool] | None:
    """Which tokens are content tokens; None for all of them (no stop ids, or every
    token is a stop word)."""
    key = id(tokens)
    if key in memo.content:
        return memo.content[key]
    mask: list[bool] | None = None
    if stop_ids:
        mask = [i not in stop_ids for i in tokens.ids.tolist()]
        if not any(mask):
            mask = None
    memo.content[key] = mask
    return mask


def _content(best: list[float], mask: list[bool] | None) -> list[float]:
    """The best-match scores of content tokens."""
    if mask is None:
        return best
    return [b for b, keep in zip(best, mask, strict=True) if keep]


def _words(text: str, memo: _Memo) -> _Words:
    found = memo.words.get(text)
    if found is None:
        words = _WORD.findall(text)
        lower = [w.lower() for w in words]
        negations = sum(map(_NEGATIONS.__contains__, lower))
        if "'" in text:  # only a word with an apostrophe can end in n't
            negations += sum(1 for w in lower if w.endswith("n't"))
        found = _Words(
            length=len(words),
            content=frozenset(lower).difference(STOP_WORDS),
            numbers=frozenset(_NUMBER.findall(text)),
            negations=negations,
            # Capitalised words past the first: a cheap stand-in for named entities.
            names=frozenset([w for w in words[1:] if w[:1].isupper()]),
        )
        memo.words[text] = found
    return found


def _lexical(cached: _Words, query: _Words) -> list[float]:
    union = cached.content | query.content
    longest = max(cached.length, query.length)
    return [
        len(cached.content & query.content) / len(union) if union else 1.0,
        len(cached.content - query.content),
        len(query.content - cached.content),
        len(cached.numbers ^ query.numbers),
        float(bool(cached.numbers or query.numbers)),
        abs(cached.negations - query.negations),
        len(cached.names ^ query.names),
        min(cached.length, query.length) / longest if longest else 1.0,
        longest,
    ]
