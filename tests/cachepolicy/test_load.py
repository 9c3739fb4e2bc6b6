"""Load-adaptive relaxation: hysteresis, smoothing, staleness and the bounds it keeps."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from semcached.cachepolicy.load import LoadSettings, LoadTracker, relaxed_threshold, relaxed_ttl

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
