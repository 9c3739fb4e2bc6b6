"""The verifier's features (tables of pairs) and its model file (the shipped one and
files that are missing, of another version or damaged)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import orjson
import pytest

from semcached.cachepolicy.verify import (
    VERIFIER_FORMAT,
    Candidate,
    TreeVerifier,
    VerifierModelError,
)
from semcached.cachepolicy.verify_features import FEATURE_NAMES, TokenEmbeddings, pair_features

F = {name: i for i, name in enumerate(FEATURE_NAMES)}


def tokens(*vectors: list[float], ids: list[int] | None = None) -> TokenEmbeddings:
    rows = np.array(vectors, dtype=np.float32)
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    return TokenEmbeddings(np.array(ids or range(len(rows)), dtype=np.int32), rows)


def test_identical_tokens_align_perfectly() -> None:
    t = tokens([1, 0, 0], [0, 1, 0])
    row = pair_features("a b", "a b", 1.0, cached_tokens=t, query_tokens=t)
    for name in ("align_precision", "align_recall", "align_f1", "worst_content"):
        assert row[F[name]] == pytest.approx(1.0)
    assert row[F["low_match_share"]] == 0.0


def test_a_swapped_content_token_has_no_partner_but_a_stop_word_is_ignored() -> None:
    cached = tokens([1, 0, 0], [0, 1, 0], ids=[5, 6])  # "playing guitar"
    query = tokens([1, 0, 0], [0, 0, 1], ids=[5, 7])  # "playing flute"
    row = pair_features("x", "y", 0.9, cached_tokens=cached, query_tokens=query)
    assert row[F["worst_content"]] == pytest.approx(0.0)
    assert row[F["low_match_share"]] == pytest.approx(0.5)
    # The unmatched tokens are stop words: the content-only minimum ignores them.
    row = pair_features("x", "y", 0.9, cached_tokens=cached, query_tokens=query, stop_ids={6, 7})
    assert row[F["worst_content"]] == pytest.approx(1.0)
    assert row[F["worst_match_cached"]] == pytest.approx(0.0)


def test_without_token_embeddings_the_alignment_is_missing() -> None:
    row = pair_features("What is 2+2?", "What is 2+3?", 0.97)
    assert row[F["cosine"]] == 0.97
    assert math.isnan(row[F["align_f1"]])
    assert not math.isnan(row[F["numbers_differing"]])


@pytest.mark.parametrize(
    ("cached", "query", "feature", "value"),
    [
        ("Revenue in 2019", "Revenue in 2021", "numbers_differing", 2),
        ("Revenue in 2019", "revenue in 2019", "numbers_differing", 0),
        ("It is safe", "It is not safe", "negations_differing", 1),
        ("It isn't safe", "It is not safe", "negations_differing", 0),
        ("Flights to Paris", "Flights to Berlin", "names_differing", 2),
        ("Flights to Paris", "flights to Paris", "names_differing", 0),
        ("the cat sat", "the cat sat on the mat", "content_only_query", 1),
        ("the cat sat", "the cat sat", "content_jaccard", 1.0),
        ("one two", "one two three four", "length_ratio", 0.5),
    ],
)
def test_lexical_cues(cached: str, query: str, feature: str, value: float) -> None:
    assert pair_features(cached, query, 0.9)[F[feature]] == pytest.approx(value)


def test_the_shipped_model_loads_and_separates_a_paraphrase_from_a_swap() -> None:
    verifier = TreeVerifier.load()
    assert verifier.embedding_model == "all-MiniLM-L6-v2"
    assert 0.0 < verifier.threshold < 1.0
    assert 0.0 < verifier.band[0] < verifier.band[1] < 1.0
    same = Candidate("How do I reset my password?", "How can I reset my password?", 0.95)
    other = Candidate("Revenue of Acme in 2019", "Revenue of Acme in 2021", 0.95)
    p_same, p_other = verifier.verify([same, other])
    assert p_same > p_other
    assert verifier.verify([]).shape == (0,)


def _model_doc() -> dict[str, object]:
    doc = orjson.loads(
        (Path(__file__).parents[2] / "cachepolicy/models/verifier-minilm-v1.json").read_bytes()
    )
    assert isinstance(doc, dict)
    return doc


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"format": "semcached-verifier/0"}, "format"),
        ({"features": ["cosine"]}, "other features"),
        ({"trees": {"tree_info": "nope"}}, "damaged"),
        ({"threshold": None}, "damaged"),
        ({"band": [0.9]}, "damaged"),
        ({"band": [0.9, 0.5]}, "out of range"),
        ({"threshold": 1.5}, "out of range"),
    ],
)
def test_a_model_file_of_another_version_or_damaged_is_refused(
    change: dict[str, object], message: str
) -> None:
    doc = _model_doc() | change
    with pytest.raises(VerifierModelError, match=message):
        TreeVerifier.from_bytes(orjson.dumps(doc))


def test_a_missing_or_non_json_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(VerifierModelError, match="cannot read"):
        TreeVerifier.load(tmp_path / "absent.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(VerifierModelError, match="not JSON"):
        TreeVerifier.load(tmp_path / "bad.json")
    assert VERIFIER_FORMAT.endswith("/1")
