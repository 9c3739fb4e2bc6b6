"""Load-adaptive relaxation: how far to relax the hit rule while the model is busy.

When the downstream model is overloaded, every miss queues behind the others; a
slightly looser cache then saves more than it costs ("Category-Aware Semantic
Caching for Heterogeneous LLM Workloads", adaptive load-based policies). A gateway
reports its model's load (queue depth, latency, any number with a configured
target); :class:`LoadTracker` smooths the reports per model and turns them into a
*relaxation level* in [0, 1] with hysteresis, so that the cache does not flap at
the boundary:

* the smoothed pressure ``p`` is the report divided by its target, averaged with an
  exponential decay of half-life ``half_life_s`` (irregular report times handled);
* relaxing starts when ``p`` reaches ``engage`` and stops only when it falls below
  ``release`` (< ``engage``); while engaged, the level grows linearly from 0 at
  ``release`` to 1 at ``saturate``;
* reports older than ``stale_s`` count as no load: a gateway that stops reporting
  never leaves the cache relaxed.

:func:`relaxed_threshold` and :func:`relaxed_ttl` apply a level to a category's
threshold and TTL within bounds the operator sets; :func:`certified_floor` narrows
those bounds to what the category's feedback shows keeps wrong hits within a budget.
A :class:`LoadTarget` says what a model's numbers mean (queue depth, latency).
Pure: numbers and times in, numbers out; O(1) per report and per query
(:func:`certified_floor`: O(bands), once per change of feedback).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from semcached.cachepolicy.calibration import BANDS, band_of, clopper_pearson_upper

__all__ = [
    "LoadSettings",
    "LoadTarget",
    "LoadTracker",
    "certified_floor",
    "relaxed_threshold",
    "relaxed_ttl",
]


@dataclass(frozen=True, slots=True)
class LoadSettings:
    """How reports become a level; see the module docstring."""

    engage: float = 1.0
    release: float = 0.7
    saturate: float = 2.0
    half_life_s: float = 10.0
    stale_s: float = 60.0

    def __post_init__(self) -> None:
        if not (0.0 <= self.release < self.engage <= self.saturate) or math.isinf(self.saturate):
            raise ValueError("need 0 <= release < engage <= saturate, all finite")
        if not (self.half_life_s > 0 and self.stale_s > 0):
            raise ValueError("half_life_s and stale_s must be positive")


@dataclass(frozen=True, slots=True)
class LoadTarget:
    """What a model's reports are measured against: the queue depth and the latency (ms)
    at which it counts as fully busy (pressure 1; 0: that signal is not accepted)."""

    model: str
    queue_depth: float = 16.0
    latency_ms: float = 2000.0

    def __post_init__(self) -> None:
        if not all(math.isfinite(t) and t >= 0 for t in (self.queue_depth, self.latency_ms)):
            raise ValueError(f"model {self.model!r}: targets must be finite and >= 0")

    def pressure(self, queue_depth: float | None, latency_ms: float | None) -> float:
        """The report over its target; with both signals the busier one. Raises
        ValueError naming the signal when it is negative, not finite, or has no target."""
        worst = 0.0
        for name, value, target in (
            ("queue_depth", queue_depth, self.queue_depth),
            ("latency_ms", latency_ms, self.latency_ms),
        ):
            if value is None:
                continue
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name}: must be a finite number >= 0")
            if target <= 0:
                raise ValueError(f"{name}: model {self.model!r} has no {name} target")
            worst = max(worst, value / target)
        return worst


@dataclass(slots=True)
class _Model:
    pressure: float = 0.0
    at: float = -math.inf
    engaged: bool = False


@dataclass(slots=True)
class LoadTracker:
    """Smoothed pressure and relaxation level per downstream model."""

    settings: LoadSettings = field(default_factory=LoadSettings)
    _models: dict[str, _Model] = field(default_factory=dict)

    def report(self, model: str, load: float, target: float, now: float) -> float:
        """Record ``load`` (e.g. queue depth) against its ``target`` at time ``now``;
        returns the model's relaxation level after it. Raises ValueError on a negative
        or non-finite load or a non-positive target."""
        if not (math.isfinite(load) and load >= 0 and math.isfinite(target) and target > 0):
            raise ValueError("need a finite load >= 0 and a finite target > 0")
        state = self._models.setdefault(model, _Model())
        sample = load / target
        if now - state.at > self.settings.stale_s:
            state.pressure = sample  # nothing recent to average with
        else:
            # A report at (or, out of order, before) the last one's time has no weight.
            keep = 0.5 ** (max(0.0, now - state.at) / self.settings.half_life_s)
            state.pressure = keep * state.pressure + (1 - keep) * sample
        state.at = max(state.at, now)
        if state.pressure >= self.settings.engage:
            state.engaged = True
        elif state.pressure < self.settings.release:
            state.engaged = False
        return self.level(model, now)

    def pressure(self, model: str, now: float) -> float:
        """The smoothed load over target (0 for a model never or not lately reported)."""
        state = self._models.get(model)
        if state is None or now - state.at > self.settings.stale_s:
            return 0.0
        return state.pressure

    def level(self, model: str, now: float) -> float:
        """How far to relax, 0 (not at all) to 1 (to the category's load bounds)."""
        state = self._models.get(model)
        if state is None or not state.engaged or now - state.at > self.settings.stale_s:
            return 0.0
        s = self.settings
        span = s.saturate - s.release
        if span <= 0:
            return 1.0
        return min(1.0, max(0.0, (state.pressure - s.release) / span))

    def models(self) -> list[str]:
        return sorted(self._models)

    def engaged(self, model: str, now: float) -> bool:
        """Whether relaxing is on (pressure reached ``engage`` and has not yet fallen
        below ``release``, and the last report is not stale)."""
        state = self._models.get(model)
        return state is not None and state.engaged and now - state.at <= self.settings.stale_s

    def is_stale(self, model: str, now: float) -> bool:
        """True for a model never or not lately reported (it counts as no load)."""
        state = self._models.get(model)
        return state is None or now - state.at > self.settings.stale_s

    def forget(self, model: str) -> None:
        self._models.pop(model, None)


def relaxed_threshold(threshold: float, floor: float, level: float) -> float:
    """``threshold`` lowered toward ``floor`` (the lowest the operator allows under
    load) by ``level``; never below ``floor``, never above ``threshold``."""
    floor = min(floor, threshold)
    return threshold - min(1.0, max(0.0, level)) * (threshold - floor)


def relaxed_ttl(ttl_s: float, factor: float, max_ttl_s: float, level: float) -> float:
    """``ttl_s`` lengthened by up to ``factor`` (>= 1) at full ``level``, within ``max_ttl_s``."""
    longer = ttl_s * (1.0 + min(1.0, max(0.0, level)) * (max(1.0, factor) - 1.0))
    return min(max(ttl_s, longer), max(ttl_s, max_ttl_s))


def certified_floor(
    right: NDArray[np.int64],
    wrong: NDArray[np.int64],
    *,
    threshold: float,
    floor: float,
    budget: float,
    alpha: float,
) -> float:
    """How far below ``threshold`` load may take it when wrong hits must stay within
    ``budget``: the lowest of ``floor`` and the band edges in between such that, for it
    and every edge above it, the one-sided Clopper-Pearson bound (confidence
    ``1 - alpha``) of the false-hit rate among reported hits scored at or above it is
    within ``budget``. Tested from the top down, stopping at the first failure (the
    fixed sequence of :mod:`~semcached.cachepolicy.calibration`); ``right`` and
    ``wrong`` are a calibrator's counts per band. With too few reports to pass the
    first test, ``threshold``: no relaxation. ``budget`` 0: ``floor``, unchecked.

    The rate is of every reported hit at or above the edge, so hits served while
    relaxed count in it as soon as they are reported: wrong ones there stop the
    relaxation where they push the bound past the budget. O(BANDS).
    """
    floor = min(floor, threshold)
    if budget <= 0.0 or floor >= threshold:
        return floor
    top = band_of(threshold)
    if top / BANDS >= threshold:  # the threshold is an edge: start one band lower
        top -= 1
    bottom = band_of(floor)
    if top < bottom:
        return threshold
    n = np.cumsum((right + wrong)[::-1])[::-1]
    k = np.cumsum(wrong[::-1])[::-1]
    bounds = clopper_pearson_upper(k[bottom : top + 1], n[bottom : top + 1], alpha)
    chosen = threshold
    for band in range(top, bottom - 1, -1):
        if bounds[band - bottom] > budget:
            break
        chosen = max(floor, band / BANDS)
    return chosen
