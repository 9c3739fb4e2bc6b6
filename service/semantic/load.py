"""The semantic cache's load adaptation: who reported which model's load, and the
relaxed hit rule and TTL that follow from it.

A gateway reports its downstream model's load (``POST /v1/semantic/load``, or the
``X-Semcached-Model-Load`` header on a lookup) for a namespace; a lookup or insert
that names the model (``model``) then uses that model's relaxation level
(:class:`~semcached.cachepolicy.load.LoadTracker`) in its own namespace only: a
report never relaxes another namespace, hence never another tenant's cache.

- **Bounded.** Each owner (the reporting tenant) may have at most ``max_models``
  (namespace, model) pairs tracked at once; a new one beyond that first pushes out the
  owner's stale ones (not reported for ``stale_s``), else is refused with 429
  ``too_many_models``. Memory: O(owners x max_models).
- **The hit rule.** A lookup's threshold (a request's own threshold wins, unrelaxed)
  is lowered by the level toward the category's floor
  (:attr:`~semcached.cachepolicy.categories.CategoryPolicy.load_floor`), narrowed by
  :func:`~semcached.cachepolicy.load.certified_floor` when the category has a
  ``load_max_false_hit_rate``; that floor is recomputed only when the category's
  feedback changed. A default TTL grows by up to ``load_ttl_factor``.

Threading: loop-only, like the engine. Every method is O(1) except the floor's
recomputation after new feedback (O(bands)).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from semcached.cachepolicy.calibration import Calibration, Calibrator
from semcached.cachepolicy.categories import CategoryPolicy
from semcached.cachepolicy.load import (
    LoadSettings,
    LoadTarget,
    LoadTracker,
    certified_floor,
    relaxed_threshold,
    relaxed_ttl,
)
from semcached.errors import BadRequestError, TooManyRequestsError
from semcached.protocol.codes import ErrorCode

__all__ = ["LoadBook", "LoadCounts", "ModelLoad"]

DEFAULT_MAX_MODELS = 64


@dataclass(frozen=True, slots=True)
class ModelLoad:
    """One model's load in one namespace, as of ``now``."""

    namespace: str
    model: str
    pressure: float  # smoothed load over target (0 when stale)
    level: float  # relaxation, 0 to 1
    engaged: bool


@dataclass(slots=True)
class LoadCounts:
    """Per category since start: lookups whose threshold load lowered, and the hits
    among them that the unrelaxed threshold would have missed."""

    relaxed_lookups: int = 0
    relaxed_hits: int = 0


class LoadBook:
    """Load trackers per (namespace, model), bounded per owner; see the module docstring."""

    def __init__(
        self,
        settings: LoadSettings | None = None,
        *,
        targets: Callable[[str], LoadTarget] = LoadTarget,
        max_models: int = DEFAULT_MAX_MODELS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``targets``: a model's targets by name (default: :class:`LoadTarget`'s);
        ``clock``: the time of reports and states when none is given (the engine's)."""
        self.clock = clock
        self._settings = settings or LoadSettings()
        self._targets = targets
        self._max_models = max_models
        self._trackers: dict[str, LoadTracker] = {}  # by namespace
        self._owners: dict[str, dict[tuple[str, str], None]] = {}  # owner -> its pairs
        self._owner_of: dict[tuple[str, str], str] = {}
        # category -> (the calibration it was computed from, the policy, the floor)
        self._floors: dict[str, tuple[Calibration, CategoryPolicy, float]] = {}
        self.counts: dict[str, LoadCounts] = {}

    def configure(
        self,
        settings: LoadSettings,
        targets: Callable[[str], LoadTarget],
        max_models: int,
    ) -> None:
        """New settings (a reload): kept reports are read with them from now on."""
        self._settings, self._targets, self._max_models = settings, targets, max_models
        for tracker in self._trackers.values():
            tracker.settings = settings

    # -- reports -----------------------------------------------------------------------

    def report(
        self,
        namespace: str,
        model: str,
        *,
        queue_depth: float | None = None,
        latency_ms: float | None = None,
        owner: str = "",
        now: float | None = None,
    ) -> ModelLoad:
        """Record a report of ``model``'s load for ``namespace``; its state after it.
        Raises BadRequestError naming the field for a bad value, TooManyRequestsError
        when ``owner`` already tracks its most models."""
        if queue_depth is None and latency_ms is None:
            raise BadRequestError(
                ErrorCode.MISSING_FIELD, "give queue_depth, latency_ms or both", field="queue_depth"
            )
        try:
            pressure = self._targets(model).pressure(queue_depth, latency_ms)
        except ValueError as exc:
            field = str(exc).split(":", 1)[0]
            raise BadRequestError(ErrorCode.INVALID_FIELD, str(exc), field=field) from None
        now = self.clock() if now is None else now
        self._admit(namespace, model, owner, now)
        tracker = self._trackers.get(namespace)
        if tracker is None:
            tracker = self._trackers[namespace] = LoadTracker(self._settings)
        tracker.report(model, pressure, 1.0, now)
        return self.state(namespace, model, now)

    def _admit(self, namespace: str, model: str, owner: str, now: float) -> None:
        """Count (namespace, model) against ``owner``'s bound, pushing out its stale pairs
        when full."""
        key = (namespace, model)
        if key in self._owner_of:
            return
        owned = self._owners.setdefault(owner, {})
        if len(owned) >= self._max_models:
            for stale in [k for k in owned if self._tracker_of(k).is_stale(k[1], now)]:
                self._drop(stale)
        if len(owned) >= self._max_models:
            raise TooManyRequestsError(
                ErrorCode.TOO_MANY_MODELS,
                f"model: at most {self._max_models} models' load tracked at once "
                "(load.max_models); one not reported for load.stale_s gives its place up",
                field="model",
                headers={"Retry-After": str(max(1, math.ceil(self._settings.stale_s)))},
            )
        owned[key] = None
        self._owner_of[key] = owner

    def _tracker_of(self, key: tuple[str, str]) -> LoadTracker:
        return self._trackers.get(key[0]) or LoadTracker(self._settings)

    def _drop(self, key: tuple[str, str]) -> None:
        owner = self._owner_of.pop(key)
        self._owners[owner].pop(key, None)
        tracker = self._trackers.get(key[0])
        if tracker is not None:
            tracker.forget(key[1])
            if not tracker.models():
                del self._trackers[key[0]]

    # -- what a lookup or insert uses ----------------------------------------------------

    def level(self, namespace: str, model: str | None, now: float | None = None) -> float:
        """The relaxation level for a request of ``namespace`` naming ``model`` (0 with no
        model, or none reported lately)."""
        if not model:
            return 0.0
        tracker = self._trackers.get(namespace)
        return (
            0.0 if tracker is None else tracker.level(model, self.clock() if now is None else now)
        )

    def threshold(
        self,
        policy: CategoryPolicy,
        base: float,
        level: float,
        calibrator: Calibrator,
        *,
        requested: float | None = None,
        score: float | None = None,
    ) -> float:
        """``base`` (the threshold feedback says is in force) relaxed by ``level`` within
        the category's certified floor; unrelaxed when the request asked its own
        ``requested`` threshold. ``score``: the candidate's, to count a hit owed to
        the relaxation."""
        if level <= 0.0 or requested is not None or policy.load_floor >= policy.threshold:
            return base
        relaxed = relaxed_threshold(base, self._floor(policy, calibrator), level)
        if relaxed < base:
            counts = self.counts.setdefault(policy.name, LoadCounts())
            counts.relaxed_lookups += 1
            counts.relaxed_hits += score is not None and relaxed <= score < base
        return relaxed

    def _floor(self, policy: CategoryPolicy, calibrator: Calibrator) -> float:
        calibration = calibrator.calibration()  # a new object after each new report
        cached = self._floors.get(policy.name)
        if cached is not None and cached[0] is calibration and cached[1] is policy:
            return cached[2]
        right, wrong = calibrator.counts
        floor = certified_floor(
            right,
            wrong,
            threshold=calibration.threshold,
            floor=policy.load_floor,
            budget=policy.load_max_false_hit_rate,
            alpha=calibrator.alpha,
        )
        self._floors[policy.name] = (calibration, policy, floor)
        return floor

    def ttl(self, policy: CategoryPolicy, requested_s: float | None, level: float) -> float:
        """A new entry's lifetime: the request's (clamped, never lengthened), or the
        category's lengthened by up to ``load_ttl_factor`` at full load."""
        if requested_s is not None or level <= 0.0:
            return policy.ttl(requested_s)
        return relaxed_ttl(policy.ttl_s, policy.load_ttl_factor, policy.max_ttl_s, level)

    # -- introspection -------------------------------------------------------------------

    def state(self, namespace: str, model: str, now: float | None = None) -> ModelLoad:
        now = self.clock() if now is None else now
        tracker = self._trackers.get(namespace) or LoadTracker(self._settings)
        return ModelLoad(
            namespace,
            model,
            tracker.pressure(model, now),
            tracker.level(model, now),
            tracker.engaged(model, now),
        )

    def models(self, now: float | None = None) -> list[ModelLoad]:
        """Every tracked (namespace, model), stale ones included (at level 0)."""
        now = self.clock() if now is None else now
        return [
            self.state(namespace, model, now)
            for namespace, tracker in sorted(self._trackers.items())
            for model in tracker.models()
        ]
