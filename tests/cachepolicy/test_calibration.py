"""Thresholds calibrated to a false-hit budget: tables of feedback in, thresholds out."""

from __future__ import annotations

import math

import numpy as np
import pytest

from semcached.cachepolicy.calibration import (
    BANDS,
    ENTRY_MIN_CONFIRMATIONS,
    Calibrator,
    EntryEvidence,
    band_of,
    clopper_pearson_upper,
    min_hits_to_pass,
)
from semcached.cachepolicy.categories import CategoryPolicy


def calibrator(budget: float = 0.02, **kw: float) -> Calibrator:
    bounds = {"configured": 0.85, "min_threshold": 0.5, "max_threshold": 1.0, **kw}
    return Calibrator(budget=budget, **bounds)  # type: ignore[arg-type]


def feed(c: Calibrator, score: float, right: int, wrong: int = 0) -> None:
    for _ in range(right):
        c.observe(score, True)
    for _ in range(wrong):
        c.observe(score, False)


def binomial_cdf(k: int, n: int, p: float) -> float:
    return sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k + 1))


@pytest.mark.parametrize(("k", "n"), [(0, 10), (0, 149), (3, 200), (10, 50), (49, 50)])
def test_clopper_pearson_upper_solves_the_binomial_tail(k: int, n: int) -> None:
    upper = float(clopper_pearson_upper(k, n, 0.05))
    assert binomial_cdf(k, n, upper) == pytest.approx(0.05, abs=1e-9)
    if k == 0:
        assert upper == pytest.approx(1 - 0.05 ** (1 / n))


def test_clopper_pearson_edges_and_min_hits() -> None:
    assert clopper_pearson_upper(np.array([0, 5]), np.array([0, 5]), 0.05).tolist() == [1.0, 1.0]
    assert min_hits_to_pass(0.02, 0.05) == 149
    assert float(clopper_pearson_upper(0, 149, 0.05)) <= 0.02 < clopper_pearson_upper(0, 148, 0.05)


def test_too_little_feedback_keeps_the_configured_threshold() -> None:
    c = calibrator()
    feed(c, 0.95, right=148)
    cal = c.calibration()
    assert (cal.threshold, cal.source, cal.observations) == (0.85, "configured", 148)


def test_no_budget_means_no_calibration_whatever_the_feedback() -> None:
    c = calibrator(budget=0.0)
    feed(c, 0.9, right=10, wrong=500)
    assert (c.threshold(), c.calibration().source) == (0.85, "off")


@pytest.mark.parametrize(
    ("table", "budget", "expected"),
    [
        # (score, right, wrong) rows -> threshold
        # clean above 0.90, 20% wrong in [0.86, 0.87): the threshold sits at 0.87.
        ([(0.95, 400, 0), (0.90, 200, 0), (0.865, 80, 20)], 0.02, 0.87),
        # a looser budget takes the band 20% wrong: 20 of 700 hits above, bound 4.1%.
        ([(0.95, 400, 0), (0.90, 200, 0), (0.865, 80, 20)], 0.05, 0.865),
        # but not when fewer clean hits above dilute it (20 of 320: bound 8.9%).
        ([(0.95, 100, 0), (0.90, 200, 0), (0.865, 80, 20)], 0.05, 0.87),
        # everything right: as low as hits were observed, no lower.
        ([(0.95, 300, 0), (0.80, 300, 0)], 0.02, 0.80),
        # just enough clean hits at 0.99 to pass; the band at 0.90 is 9% wrong, so the
        # threshold stops one band above it (no hit was seen in between).
        ([(0.99, 149, 0), (0.90, 100, 10)], 0.02, 0.905),
    ],
)
def test_threshold_tables(
    table: list[tuple[float, int, int]], budget: float, expected: float
) -> None:
    c = calibrator(budget)
    for score, right, wrong in table:
        feed(c, score, right, wrong)
    cal = c.calibration()
    assert cal.source == "calibrated"
    assert cal.threshold == pytest.approx(expected)
    assert cal.upper_bound is not None
    assert cal.upper_bound <= budget
    assert cal.hits_above >= min_hits_to_pass(budget, 0.05)


def test_an_unmet_budget_goes_above_every_wrong_hit_seen() -> None:
    c = calibrator(0.02, max_threshold=0.98)
    feed(c, 0.99, right=900, wrong=100)
    cal = c.calibration()
    assert (cal.threshold, cal.source, cal.false_hits) == (0.98, "budget_unmet", 100)
    # Below the cap: one band above the highest wrong hit, where the reports were clean
    # (too few to certify: 100 < 149), so that hits and reports keep coming.
    c = calibrator(0.02)
    feed(c, 0.95, right=900, wrong=100)
    feed(c, 0.975, right=100)
    cal = c.calibration()
    assert (cal.threshold, cal.source) == (pytest.approx(0.955), "budget_unmet")
    feed(c, 0.975, right=49)  # 149 clean reports above: certified
    assert (c.threshold(), c.calibration().source) == (pytest.approx(0.955), "calibrated")


def test_the_calibrated_threshold_stays_within_the_bounds() -> None:
    low = calibrator(0.05, configured=0.93, min_threshold=0.9012, max_threshold=0.97)
    feed(low, 0.9, right=5000)  # all right, in the floor's band but below the floor
    feed(low, 0.6, right=5000)  # far below: no evidence about hits at or above the floor
    assert (low.threshold(), low.calibration().source) == (0.9012, "calibrated")
    high = calibrator(0.05, configured=0.93, min_threshold=0.9, max_threshold=0.97)
    feed(high, 0.99, right=5000)
    assert (high.threshold(), high.calibration().source) == (0.97, "calibrated")
    below = calibrator(0.05, configured=0.93, min_threshold=0.9, max_threshold=0.97)
    feed(below, 0.8, right=5000)
    assert (below.threshold(), below.calibration().source) == (0.93, "configured")


def test_the_window_halves_old_feedback() -> None:
    c = Calibrator(configured=0.85, min_threshold=0.5, max_threshold=1.0, budget=0.02, window=100)
    feed(c, 0.9, right=100)
    assert c.observations == 100
    c.observe(0.9, False)
    assert c.observations == 50  # 100 right, 1 wrong -> 50 right, 0 wrong
    right, wrong = c.counts
    restored = Calibrator(
        configured=0.85, min_threshold=0.5, max_threshold=1.0, budget=0.02, counts=(right, wrong)
    )
    assert restored.calibration() == c.calibration()


def test_scores_are_banded_and_clipped() -> None:
    assert band_of(-0.3) == 0
    assert band_of(1.0) == BANDS - 1
    assert band_of(0.8751) == int(0.8751 * BANDS)
    with pytest.raises(ValueError, match="finite"):
        band_of(float("nan"))


def true_rate_above(threshold: float, wrong_prob: np.ndarray, grid: np.ndarray) -> float:
    above = grid >= threshold
    return float(wrong_prob[above].mean()) if above.any() else 0.0


@pytest.mark.parametrize("budget", [0.02, 0.05])
def test_the_chosen_thresholds_true_false_hit_rate_stays_within_budget(budget: float) -> None:
    """Feedback drawn at a known false-hit rate per score: over many runs the chosen
    threshold's true rate exceeds the budget no more often than the confidence allows
    (5%; 10% tolerated for sampling), and the threshold is useful (not pinned at max)."""
    rng = np.random.default_rng(1234)
    grid = np.linspace(0.6, 1.0, 4001)
    wrong_prob = np.clip(0.6 * (0.93 - grid) / 0.33, 0.0, None)  # 60% at 0.6, 0 above 0.93
    runs, violations, thresholds = 200, 0, []
    for _ in range(runs):
        c = calibrator(budget, configured=0.6)
        scores = rng.uniform(0.6, 1.0, size=3000)
        wrong = rng.random(3000) < np.interp(scores, grid, wrong_prob)
        for s, w in zip(scores.tolist(), wrong.tolist(), strict=True):
            c.observe(s, not w)
        t = c.threshold()
        thresholds.append(t)
        violations += true_rate_above(t, wrong_prob, grid) > budget
    assert violations <= 0.10 * runs, violations
    # The lowest threshold that truly meets the budget, and how close we come to it.
    best = min(t for t in grid if true_rate_above(t, wrong_prob, grid) <= budget)
    assert float(np.median(thresholds)) < best + 0.06


def test_entry_evidence_relaxes_only_after_enough_confirmations() -> None:
    e = EntryEvidence()
    for score in (0.84, 0.82, 0.83)[: ENTRY_MIN_CONFIRMATIONS - 1]:
        e = e.confirm(score)
    assert e.threshold(0.9, 0.5) == 0.9
    e = e.confirm(None)
    assert e.confirmations == ENTRY_MIN_CONFIRMATIONS
    assert e.threshold(0.9, 0.5) == pytest.approx(0.82)
    assert e.threshold(0.9, 0.85) == 0.85  # never below the category's floor
    assert e.threshold(0.8, 0.5) == 0.8  # never above the category's threshold


def test_category_policy_checks_the_budget() -> None:
    with pytest.raises(ValueError, match="max_false_hit_rate"):
        CategoryPolicy("x", threshold=0.9, ttl_s=1, max_entries=1, max_bytes=1,
                       max_false_hit_rate=1.5)  # fmt: skip
