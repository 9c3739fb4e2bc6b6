"""The learned predictor: feature rows, a planted pattern learned by both models,
background training, and the follower with learned bits against LRU."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from semcached.cachepolicy.bits import Observation
from semcached.cachepolicy.features import (
    EDC_HALF_LIVES,
    FEATURE_NAMES,
    GAPS,
    FeatureTracker,
)
from semcached.cachepolicy.lru import LruPolicy
from semcached.cachepolicy.onebit import DiscardFollower
from semcached.cachepolicy.predictor import LearnedBits, LogisticModel, fit_model
from semcached.cachepolicy.replay import replay
from semcached.index.eviction import AccessFeatures


def test_feature_rows() -> None:
    tracker = FeatureTracker()
    row = tracker.access(7, 100, None)
    assert len(row) == len(FEATURE_NAMES)
    assert all(math.isnan(x) for x in row[:GAPS])  # no earlier gap
    assert row[GAPS : GAPS + len(EDC_HALF_LIVES)] == [1.0] * len(EDC_HALF_LIVES)
    tracker.access(8, 1, None)
    tracker.access(8, 1, None)
    row = tracker.access(7, None, AccessFeatures(now=10.0, expires_at=25.0, similarity=0.9))
    assert row[0] == pytest.approx(math.log1p(3))  # 3 accesses since 7's last one
    assert math.isnan(row[1])
    edc16 = row[GAPS]
    assert edc16 == pytest.approx(1 + 2 ** (-3 / 16))
    names = dict(zip(FEATURE_NAMES, row, strict=True))
    assert names["log_count"] == pytest.approx(math.log(2))
    assert names["log_size"] == pytest.approx(math.log(100))
    assert names["log_age"] == pytest.approx(math.log1p(3))
    assert names["ttl_left_s"] == 15.0
    assert names["similarity"] == 0.9
    assert math.isnan(names["category"])


def test_prune_drops_idle_items() -> None:
    tracker = FeatureTracker(horizon=10)
    tracker.access(1, 1, None)
    for _ in range(20):
        tracker.access(2, 1, None)
    assert tracker.prune() == 1
    assert len(tracker) == 1


def planted_stream(n: int, seed: int) -> list[tuple[int, int]]:
    """(key, category): half the requests go to 100 hot keys (category 1), half are
    one-off scan keys (category 3) never requested again."""
    rng = random.Random(seed)
    fresh = 10_000
    out = []
    for _ in range(n):
        if rng.random() < 0.5:
            out.append((rng.randrange(100), 1))
        else:
            fresh += 1
            out.append((fresh, 3))
    return out


@pytest.mark.parametrize("model", ["logistic", "lightgbm"])
def test_learns_a_planted_pattern(model: str) -> None:
    bits = LearnedBits(model=model, background=False, window=4096, retrain_every=4096)  # type: ignore[arg-type]
    stream = planted_stream(30_000, seed=1)
    for key, category in stream[:25_000]:
        bits.observe(key, 1, AccessFeatures(category=category), capacity=150)
    assert bits.fits >= 2
    held_out: list[tuple[Observation, int]] = [
        (bits.observe(k, 1, AccessFeatures(category=c), 150), c) for k, c in stream[25_000:]
    ]
    predicted = bits.predict([o for o, _ in held_out])
    scan = [p for p, (_, c) in zip(predicted, held_out, strict=True) if c == 3]
    hot = [p for p, (_, c) in zip(predicted, held_out, strict=True) if c == 1]
    assert sum(scan) >= 0.95 * len(scan)  # one-off items: safe to evict
    assert sum(hot) <= 0.05 * len(hot)  # the hot set fits and stays


def test_untrained_predictor_says_keep() -> None:
    bits = LearnedBits(background=False)
    obs = [bits.observe(k, 1, None, 10) for k in range(5)]
    assert not bits.trained
    assert bits.predict(obs) == [False] * 5


def test_background_training_swaps_in_a_model() -> None:
    bits = LearnedBits(model="logistic", background=True, window=2048, first_fit=512)
    for key, category in planted_stream(6000, seed=2):
        bits.observe(key, 1, AccessFeatures(category=category), capacity=150)
        bits.wait()
    bits.wait()
    assert bits.trained
    assert bits.fits >= 1


def test_fit_model_edge_cases() -> None:
    rows = np.zeros((4, len(FEATURE_NAMES)))
    assert fit_model("logistic", rows[:0], np.zeros(0, dtype=bool)) is None
    constant = fit_model("lightgbm", rows, np.ones(4, dtype=bool))
    assert constant is not None
    assert constant.probabilities(rows).tolist() == [1.0] * 4


def test_logistic_model_separates_a_threshold() -> None:
    rng = np.random.default_rng(0)
    rows = rng.normal(size=(2000, len(FEATURE_NAMES)))
    rows[:, 0][rng.random(2000) < 0.2] = np.nan
    labels = np.nan_to_num(rows[:, 5]) > 0.3
    model = LogisticModel.fit(rows, labels)
    accuracy = ((model.probabilities(rows) >= 0.5) == labels).mean()
    assert accuracy > 0.97


def test_learned_follower_beats_lru_on_a_scan_polluted_trace() -> None:
    keys = [k for k, _ in planted_stream(40_000, seed=3)]
    follower = DiscardFollower(LearnedBits(background=False, seed=1), guard=True, seed=1)
    learned = replay(follower, keys, 120, check=None)
    lru = replay(LruPolicy(), keys, 120)
    assert learned < 0.85 * lru
