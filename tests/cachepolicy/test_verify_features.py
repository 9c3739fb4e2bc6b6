"""pair_features against the first implementation (kept below as the reference: the
shipped model was trained on its values), on random sentences and token embeddings,
and feature_rows (a batch) against pair_features (one pair at a time)."""

from __future__ import annotations

import math
import re
from collections.abc import Collection
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from semcached.cachepolicy.verify import Candidate
from semcached.cachepolicy.verify_features import (
    FEATURE_NAMES,
    STOP_WORDS,
    TokenEmbeddings,
    feature_rows,
    pair_features,
)

# --- the reference: verify_features.py as the verifier-minilm-v1 model was trained on it

_ALIGNMENT = 13
_LOW_MATCH = 0.6
_NEGATIONS = frozenset(
    ("not", "no", "never", "none", "nobody", "nothing", "neither", "nor", "without", "cannot")
)
_WORD = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)?|\d+(?:[.,]\d+)*")
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")


def reference_pair_features(
    cached: str,
    query: str,
    cosine: float,
    *,
    cached_tokens: TokenEmbeddings | None = None,
    query_tokens: TokenEmbeddings | None = None,
    stop_ids: Collection[int] = (),
) -> npt.NDArray[np.float64]:
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
    best_for_cached = sims.max(axis=1)
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
    return {w for w in words[1:] if w[:1].isupper()}


# --- random pairs

VOCABULARY = (  # noqa: SIM905 (one string, not a 54-item list literal)
    "the a is not no never nothing cannot isn't DON'T won't can't without of in to and "
    "cat Cat dog Paris paris Berlin Acme revenue price playing guitar flute café Zoë's "
    "naïve İstanbul 2019 2021 3.14 1,000 1.2.3 ٣ ² ½ x_1 abc123 O'Neil's it's — , . ? ! "
    "Revenue PRICE What How"
).split()


def random_text(rng: np.random.Generator) -> str:
    words = rng.choice(VOCABULARY, size=int(rng.integers(0, 25)))
    return " ".join(words) if rng.random() < 0.7 else "".join(words)


def random_tokens(
    rng: np.random.Generator, count: int, like: TokenEmbeddings | None = None
) -> TokenEmbeddings:
    ids = rng.integers(0, 40, size=count).astype(np.int32)
    vectors = rng.normal(size=(count, 384)).astype(np.float32)
    if like is not None and len(like.ids) and count:
        # Some tokens close to the other side's: best matches over the whole range.
        copies = rng.integers(0, len(like.ids), size=count)
        weight = rng.random(size=(count, 1)).astype(np.float32) * 8
        vectors += weight * like.vectors[copies] * math.sqrt(384)
    vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    return TokenEmbeddings(ids, vectors)


STOP_SETS: list[frozenset[int]] = [frozenset(), frozenset(range(0, 40, 3)), frozenset(range(40))]


@pytest.mark.parametrize("seed", range(4))
def test_the_features_are_those_the_model_was_trained_on(seed: int) -> None:
    rng = np.random.default_rng(seed)
    for _ in range(150):
        cached, query = random_text(rng), random_text(rng)
        cached_tokens = random_tokens(rng, int(rng.integers(0, 30)))
        query_tokens = random_tokens(rng, int(rng.integers(0, 30)), like=cached_tokens)
        stop = STOP_SETS[int(rng.integers(0, len(STOP_SETS)))]
        cosine = float(rng.random())
        variants: list[dict[str, Any]] = [
            {"cached_tokens": cached_tokens, "query_tokens": query_tokens, "stop_ids": stop},
            {"cached_tokens": cached_tokens},  # one side only: no alignment
            {},
        ]
        for kwargs in variants:
            expected = reference_pair_features(cached, query, cosine, **kwargs)
            got = pair_features(cached, query, cosine, **kwargs)
            assert got.dtype == np.float64
            assert got.shape == (len(FEATURE_NAMES),)
            np.testing.assert_array_equal(np.isnan(got), np.isnan(expected))
            np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
            # Only the float32 means may differ, by rounding; the rest is exact.
            np.testing.assert_array_equal(got[_ALIGNMENT:], expected[_ALIGNMENT:])


def test_a_batch_is_its_pairs_one_at_a_time() -> None:
    rng = np.random.default_rng(9)
    query, query_tokens = random_text(rng), random_tokens(rng, 15)
    candidates = [
        Candidate(random_text(rng), query, float(rng.random()), random_tokens(rng, n), query_tokens)
        for n in (12, 0, 20, 15, 3, 1, 17, 15)
    ]
    candidates.append(Candidate(query, query, 1.0))  # no tokens
    candidates.append(candidates[0])  # the same cached text twice
    stop = STOP_SETS[1]
    rows = feature_rows(candidates, stop)
    assert rows.shape == (len(candidates), len(FEATURE_NAMES))
    for row, c in zip(rows, candidates, strict=True):
        alone = pair_features(
            c.cached,
            c.query,
            c.cosine,
            cached_tokens=c.cached_tokens,
            query_tokens=c.query_tokens,
            stop_ids=stop,
        )
        np.testing.assert_array_equal(row, alone)
    assert feature_rows([], stop).shape == (0, len(FEATURE_NAMES))
