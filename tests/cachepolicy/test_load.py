"""Load-adaptive relaxation: hysteresis, smoothing, staleness and the bounds it keeps."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from semcached.cachepolicy.calibration import BANDS, band_of
from semcached.cachepolicy.load import (
    LoadSettings,
    LoadTarget,
    LoadTracker,
    certified_floor,
    relaxed_threshold,
    relaxed_ttl,
)

# A half-life so short that the smoothed pressure is the last report.
FOLLOW = LoadSettings(engage=1.0, release=0.7, saturate=2.0, half_life_s=1e-6, stale_s=60)


def test_relaxing_starts_at_engage_and_stops_only_below_release() -> None:
    tracker = LoadTracker(FOLLOW)
    levels = [
        tracker.report("m", queue, 10.0, now=float(t))
        for t, queue in enumerate([8.0, 11.0, 20.0, 8.0, 7.5, 6.9, 8.0, 9.9, 10.0])
    ]
    expected = [
        0.0,  # 0.8: below engage
        (1.1 - 0.7) / 1.3,  # engaged
        1.0,  # saturated
        (0.8 - 0.7) / 1.3,  # still engaged: 0.8 is above release
        (0.75 - 0.7) / 1.3,
        0.0,  # 0.69 < release: released
        0.0,  # 0.8 again: not engaged until it reaches 1.0
        0.0,
        (1.0 - 0.7) / 1.3,
    ]
    assert levels == pytest.approx(expected)


def test_reports_are_smoothed_with_the_half_life() -> None:
    tracker = LoadTracker(LoadSettings(half_life_s=10.0))
    tracker.report("m", 0.0, 1.0, now=0.0)
    tracker.report("m", 4.0, 1.0, now=10.0)  # one half-life later: halfway
    assert tracker.pressure("m", 10.0) == pytest.approx(2.0)
    tracker.report("m", 4.0, 1.0, now=10.0)  # no time passed: no weight
    assert tracker.pressure("m", 10.0) == pytest.approx(2.0)


def test_a_model_that_stops_reporting_is_not_left_relaxed() -> None:
    tracker = LoadTracker(FOLLOW)
    assert tracker.report("m", 30.0, 10.0, now=0.0) == 1.0
    assert tracker.level("m", 59.0) == 1.0
    assert tracker.level("m", 61.0) == 0.0
    assert tracker.pressure("m", 61.0) == 0.0
    assert tracker.level("other", 0.0) == 0.0
    # A report after a silence starts afresh instead of averaging with stale load.
    assert tracker.report("m", 1.0, 10.0, now=200.0) == 0.0


@pytest.mark.parametrize(
    ("load", "target"), [(-1.0, 1.0), (math.nan, 1.0), (math.inf, 1.0), (1.0, 0.0)]
)
def test_bad_reports_are_refused(load: float, target: float) -> None:
    with pytest.raises(ValueError, match="finite"):
        LoadTracker().report("m", load, target, now=0.0)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"release": 1.0, "engage": 1.0},
        {"engage": 3.0, "saturate": 2.0},
        {"half_life_s": 0.0},
        {"saturate": math.inf},
    ],
)
def test_settings_are_checked(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=r"need|positive"):
        LoadSettings(**kwargs)


def test_threshold_and_ttl_under_load() -> None:
    assert relaxed_threshold(0.9, 0.8, 0.0) == 0.9
    assert relaxed_threshold(0.9, 0.8, 0.5) == pytest.approx(0.85)
    assert relaxed_threshold(0.9, 0.8, 1.0) == pytest.approx(0.8)
    assert relaxed_threshold(0.9, 0.95, 1.0) == 0.9  # a floor above the threshold: no change
    assert relaxed_ttl(100.0, 3.0, 1e9, 0.5) == pytest.approx(200.0)
    assert relaxed_ttl(100.0, 3.0, 150.0, 1.0) == 150.0  # within the category's max TTL
    assert relaxed_ttl(100.0, 0.5, 1e9, 1.0) == 100.0  # never shortened


@given(
    reports=st.lists(
        st.tuples(st.floats(0, 1e6), st.floats(0, 100), st.floats(0.01, 100)), max_size=30
    ),
    threshold=st.floats(-1, 1),
    floor=st.floats(-1, 1),
)
def test_levels_and_relaxed_values_stay_in_bounds(
    reports: list[tuple[float, float, float]], threshold: float, floor: float
) -> None:
    tracker = LoadTracker()
    for now, load, target in sorted(reports):
        level = tracker.report("m", load, target, now)
        assert 0.0 <= level <= 1.0
        relaxed = relaxed_threshold(threshold, floor, level)
        assert min(floor, threshold) - 1e-12 <= relaxed <= threshold + 1e-12


def test_a_target_turns_reports_into_pressure() -> None:
    target = LoadTarget("m", queue_depth=10.0, latency_ms=1000.0)
    assert target.pressure(20.0, None) == 2.0
    assert target.pressure(None, 500.0) == 0.5
    assert target.pressure(5.0, 3000.0) == 3.0  # both: the busier signal
    assert target.pressure(None, None) == 0.0
    with pytest.raises(ValueError, match="queue_depth"):
        target.pressure(-1.0, None)
    with pytest.raises(ValueError, match="latency_ms"):
        target.pressure(None, math.inf)
    with pytest.raises(ValueError, match="latency_ms: model 'q' has no latency_ms target"):
        LoadTarget("q", latency_ms=0.0).pressure(1.0, 1.0)
    with pytest.raises(ValueError, match="targets"):
        LoadTarget("bad", queue_depth=-1.0)


def test_stale_models_can_be_told_and_forgotten() -> None:
    tracker = LoadTracker(FOLLOW)
    assert tracker.is_stale("m", 0.0)
    tracker.report("m", 30.0, 10.0, now=0.0)
    assert tracker.engaged("m", 1.0)
    assert not tracker.is_stale("m", 60.0)
    assert tracker.is_stale("m", 61.0)
    assert not tracker.engaged("m", 61.0)
    tracker.forget("m")
    assert tracker.models() == []
    assert tracker.level("m", 1.0) == 0.0


def _counts(*hits: tuple[float, bool]) -> tuple[np.ndarray, np.ndarray]:
    right = np.zeros(BANDS, dtype=np.int64)
    wrong = np.zeros(BANDS, dtype=np.int64)
    for score, correct in hits:
        (right if correct else wrong)[band_of(score)] += 1
    return right, wrong


def test_the_floor_without_a_budget_is_the_operators() -> None:
    right, wrong = _counts()
    args = {"threshold": 0.9, "floor": 0.8, "alpha": 0.05}
    assert certified_floor(right, wrong, budget=0.0, **args) == 0.8
    # A budget and no feedback: nothing certified, no relaxation.
    assert certified_floor(right, wrong, budget=0.05, **args) == 0.9
    assert certified_floor(right, wrong, budget=0.05, threshold=0.9, floor=0.95, alpha=0.05) == 0.9


def test_the_floor_stops_where_wrong_hits_push_the_bound_past_the_budget() -> None:
    # 400 right hits at 0.95; wrong ones pile up at 0.82 (served while relaxed).
    right, wrong = _counts(*[(0.95, True)] * 400, *[(0.82, False)] * 30)
    floor = certified_floor(right, wrong, threshold=0.9, floor=0.8, budget=0.05, alpha=0.05)
    assert floor == pytest.approx(0.825)  # just above the band of the wrong hits
    # Fewer wrong hits fit a looser budget: all the way down.
    right, wrong = _counts(*[(0.95, True)] * 400, *[(0.82, False)] * 3)
    assert certified_floor(right, wrong, threshold=0.9, floor=0.8, budget=0.05, alpha=0.05) == 0.8
    # Too many wrong hits even at the top: the threshold stays.
    right, wrong = _counts(*[(0.95, True)] * 100, *[(0.95, False)] * 20)
    assert certified_floor(right, wrong, threshold=0.9, floor=0.8, budget=0.05, alpha=0.05) == 0.9


@given(
    hits=st.lists(st.tuples(st.floats(0, 1), st.booleans()), max_size=300),
    threshold=st.floats(0, 1),
    floor=st.floats(0, 1),
    budget=st.floats(0, 0.5),
)
def test_the_certified_floor_lies_between_floor_and_threshold(
    hits: list[tuple[float, bool]], threshold: float, floor: float, budget: float
) -> None:
    right, wrong = _counts(*hits)
    got = certified_floor(right, wrong, threshold=threshold, floor=floor, budget=budget, alpha=0.05)
    assert min(floor, threshold) <= got <= threshold
