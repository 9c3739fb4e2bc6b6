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
product, O(m n d) with d = 384 for MiniLM, and the lexical part is O(length). Token
data is optional; without it the alignment features are NaN, which the tree model
was trained to read as "missing".
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = ["FEATURE_NAMES", "TokenEmbeddings", "pair_features"]

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
    row = np.full(len(FEATURE_NAMES), np.nan)
    row[0] = cosine
    if cached_tokens is not None and query_tokens is not None:
        row[1:_ALIGNMENT] = _alignment(cached_tokens, query_tokens, stop_ids)
    row[_ALIGNMENT:] = _lexical(cached, query)
    return row


def _alignment(
    cached: TokenEmbeddings, query: TokenEmbeddings, stop_ids: Collection[int]
) -> list[float]:
    if not len(cached.ids) or not len(query.ids):
        return [math.nan] * (_ALIGNMENT - 1)
    sims = cached.vectors @ query.vectors.T
    best_for_cached = sims.max(axis=1)  # each cached token's best partner in the query
    best_for_query = sims.max(axis=0)
    precision = float(best_for_query.mean())
    recall = float(best_for_cached.mean())
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    content_cached = _content(best_for_cached, cached.ids, stop_ids)
    content_query = _content(best_for_query, query.ids, stop_ids)
    both = np.concatenate([content_cached, content_query])
    two_worst = np.partition(both, 1)[:2].mean() if len(both) > 1 else both.mean()
    return [
        precision,
        recall,
        f1,
        float(best_for_cached.min()),
        float(best_for_query.min()),
        float(content_cached.min()),
        float(content_query.min()),
        float(min(content_cached.min(), content_query.min())),
        float(content_cached.mean()),
        float(content_query.mean()),
        float(two_worst),
        float((both < _LOW_MATCH).mean()),
    ]


def _content(
    best: npt.NDArray[np.float32], ids: npt.NDArray[np.int32], stop_ids: Collection[int]
) -> npt.NDArray[np.float32]:
    """The best-match scores of content tokens; all of them if every token is a stop word."""
    if not stop_ids:
        return best
    mask = np.fromiter((int(i) not in stop_ids for i in ids), dtype=bool, count=len(ids))
    return best[mask] if mask.any() else best


def _lexical(cached: str, query: str) -> list[float]:
    words_cached, words_query = _WORD.findall(cached), _WORD.findall(query)
    lower_cached = [w.lower() for w in words_cached]
    lower_query = [w.lower() for w in words_query]
    content_cached = {w for w in lower_cached if w not in STOP_WORDS}
    content_query = {w for w in lower_query if w not in STOP_WORDS}
    union = content_cached | content_query
    numbers_cached, numbers_query = set(_NUMBER.findall(cached)), set(_NUMBER.findall(query))
    longest = max(len(words_cached), len(words_query))
    return [
        len(content_cached & content_query) / len(union) if union else 1.0,
        len(content_cached - content_query),
        len(content_query - content_cached),
        len(numbers_cached ^ numbers_query),
        float(bool(numbers_cached or numbers_query)),
        abs(_negations(lower_cached) - _negations(lower_query)),
        len(_names(words_cached) ^ _names(words_query)),
        min(len(words_cached), len(words_query)) / longest if longest else 1.0,
        longest,
    ]


def _negations(words: list[str]) -> int:
    return sum(w in _NEGATIONS or w.endswith("n't") for w in words)


def _names(words: list[str]) -> set[str]:
    """Capitalised words past the first: a cheap stand-in for named entities."""
    return {w for w in words[1:] if w[:1].isupper()}
