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
threshold and TTL within bounds the operator sets. Pure: numbers and times in,
numbers out; O(1) per report and per query.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

__all__ = ["LoadSettings", "LoadTracker", "relaxed_threshold", "relaxed_ttl"]


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


def relaxed_threshold(threshold: float, floor: float, level: float) -> float:
    """``threshold`` lowered toward ``floor`` (the lowest the operator allows under
    load) by ``level``; never below ``floor``, never above ``threshold``."""
    floor = min(floor, threshold)
    return threshold - min(1.0, max(0.0, level)) * (threshold - floor)


def relaxed_ttl(ttl_s: float, factor: float, max_ttl_s: float, level: float) -> float:
    """``ttl_s`` lengthened by up to ``factor`` (>= 1) at full ``level``, within ``max_ttl_s``."""
    longer = ttl_s * (1.0 + min(1.0, max(0.0, level)) * (max(1.0, factor) - 1.0))
    return min(max(ttl_s, longer), max(ttl_s, max_ttl_s))
