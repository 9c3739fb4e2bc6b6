"""Hit thresholds calibrated to a false-hit budget from feedback on served hits.

A category may state ``max_false_hit_rate``: of the semantic hits it serves, at most
that fraction may be wrong. Gateways report whether served hits were right
(``POST /v1/semantic/feedback``); each report is an observation ``(score, correct)``
where the *score* is whatever the hit decision compared with the threshold: a float in
[0, 1], higher meaning more likely right (the cosine similarity today; a verifier's
probability where one decides). Nothing here knows which.

The estimate. Observations are counted in fixed score bands (:data:`BANDS` of width
1/BANDS). For a candidate threshold ``t`` (a band's lower edge), let ``n(t)`` be the
observed hits with score >= t and ``k(t)`` the wrong ones among them. The false-hit
rate of hits served at or above ``t`` is bounded above, with confidence
``1 - alpha``, by the one-sided **Clopper-Pearson** bound::

    U(k, n) = BetaInv(1 - alpha; k + 1, n - k)        (U = 1 when k = n)

Why Clopper-Pearson: it is exact (never below its nominal coverage for any true
rate and any n, unlike the Wald or Wilson intervals, which undercover near 0 -- where
every budget lives), needs no prior (a Beta posterior would need one, and its
choice dominates at the few wrong hits a small budget allows), and costs one
vectorised ``betaincinv`` per recalibration. Conformal risk control would give a
marginal guarantee of the same kind but adds nothing here: the loss is 0/1, for
which it reduces to a binomial bound.

The choice. Thresholds are tested from the top down in a fixed sequence (the
"learn then test" fixed-sequence procedure): start at the highest band edge with
enough hits above it to pass at all, step down one band while ``U(k(t), n(t)) <=
budget``, and stop at the first failure. Testing in an order fixed before the data is
seen controls the chance of choosing any threshold whose true rate exceeds the budget
at ``alpha``, with no multiplicity correction. The chosen threshold is never below the
lowest band that has observations (nothing is known about hits never served), and is
always clamped to the category's ``[min_threshold, max_threshold]``. With too little
feedback to pass even the first test (fewer hits than ``ln(alpha) / ln(1 - budget)``,
149 at a 2% budget and alpha 0.05) the configured threshold stays. When the feedback
shows that even the best-supported band misses the budget, the threshold goes one band
above the highest wrong hit reported (at most ``max_threshold``): nothing there is
certified yet, but nothing there was seen wrong, and the hits it serves bring the
reports that may certify it. (Going straight to ``max_threshold`` would stop the hits,
hence the feedback, for good.)

Bounded memory and drift: each category holds ``2 * BANDS`` counters, whatever the
traffic. When a category's observations exceed ``window`` they are all halved
(rounding down), so old feedback fades geometrically and the estimate follows a
workload that changes, at the cost of some confidence.

Per-entry thresholds (after vCache, arXiv 2502.03771): an entry reported wrong is
removed at once, so what an entry accumulates is confirmations. An entry confirmed
right at least :data:`ENTRY_MIN_CONFIRMATIONS` times may answer down to the lowest
score at which it was confirmed, never below the category's ``min_threshold`` nor
above the category's threshold in force.

Pure: numbers in, decisions out; no I/O, no clock.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "BANDS",
    "DEFAULT_CONFIDENCE",
    "DEFAULT_WINDOW",
    "ENTRY_MIN_CONFIRMATIONS",
    "Calibration",
    "CalibrationSource",
    "Calibrator",
    "EntryEvidence",
    "band_of",
    "clopper_pearson_upper",
    "min_hits_to_pass",
]

BANDS = 200
"""Score bands over [0, 1] (width 0.005): the resolution of a calibrated threshold."""
DEFAULT_CONFIDENCE = 0.95
DEFAULT_WINDOW = 20_000
"""Observations a category keeps at full weight before all its counts are halved."""
ENTRY_MIN_CONFIRMATIONS = 3

CalibrationSource = Literal["off", "configured", "calibrated", "budget_unmet"]
Counts = NDArray[np.int64]


def band_of(score: float) -> int:
    """The band of a score; scores outside [0, 1] (a cosine below 0) are clipped. O(1)."""
    if not math.isfinite(score):
        raise ValueError(f"score must be finite, got {score!r}")
    return min(BANDS - 1, max(0, int(score * BANDS)))


def _edge(band: int) -> float:
    return band / BANDS


def clopper_pearson_upper(
    wrong: NDArray[np.int64] | int, total: NDArray[np.int64] | int, alpha: float
) -> NDArray[np.float64]:
    """One-sided Clopper-Pearson upper bound of a binomial rate at confidence ``1 - alpha``
    (element-wise; 1 where ``total`` is 0 or every observation was wrong)."""
    k = np.asarray(wrong, dtype=np.float64)
    n = np.asarray(total, dtype=np.float64)
    # Imported here, at the first recalibration: scipy.special takes 0.3 s to import,
    # which every daemon start (the config imports this module) would pay otherwise.
    from scipy.special import betaincinv

    out = np.ones(np.broadcast(k, n).shape, dtype=np.float64)
    ok = (n > 0) & (k < n)
    kk, nn = np.broadcast_to(k, out.shape)[ok], np.broadcast_to(n, out.shape)[ok]
    out[ok] = betaincinv(kk + 1.0, nn - kk, 1.0 - alpha)
    return out


def min_hits_to_pass(budget: float, alpha: float) -> int:
    """The fewest observations with no wrong hit whose bound is within ``budget``:
    ``(1 - budget) ** n <= alpha``."""
    if not 0.0 < budget < 1.0:
        raise ValueError("budget must be in (0, 1)")
    return math.ceil(math.log(alpha) / math.log1p(-budget))


@dataclass(frozen=True, slots=True)
class Calibration:
    """A category's decision rule as calibrated, and the evidence behind it.

    ``threshold``: in force for lookups that ask none (``configured``: the category's
    own, ``budget``: its ``max_false_hit_rate``); ``source``: ``off`` (no budget),
    ``configured`` (too little feedback), ``calibrated``, ``budget_unmet`` (even the
    best-supported band exceeds the budget: above every wrong hit seen). ``estimate`` and
    ``upper_bound``: the false-hit rate observed among hits at or above ``threshold``
    and its bound (None with no such observation); ``hits_above``: how many.
    """

    threshold: float
    source: CalibrationSource
    configured: float
    budget: float
    observations: int
    false_hits: int
    hits_above: int
    estimate: float | None
    upper_bound: float | None


class Calibrator:
    """The feedback of one category and the threshold it supports.

    ``observe`` is O(1) and marks the rule stale; ``calibration`` recomputes it at most
    once per change, in O(BANDS) (one vectorised bound over every band edge).
    """

    def __init__(
        self,
        *,
        configured: float,
        min_threshold: float,
        max_threshold: float,
        budget: float,
        confidence: float = DEFAULT_CONFIDENCE,
        window: int = DEFAULT_WINDOW,
        counts: tuple[Counts, Counts] | None = None,
    ) -> None:
        """``budget``: the category's ``max_false_hit_rate`` (0: no calibration);
        ``counts``: (right, wrong) per band, as :attr:`counts` gave them (a restart)."""
        if not 0.0 <= budget < 1.0:
            raise ValueError("max_false_hit_rate must be in [0, 1)")
        if not 0.5 <= confidence < 1.0:
            raise ValueError("confidence must be in [0.5, 1)")
        if window < 2:
            raise ValueError("window must be at least 2")
        self.configured = configured
        self.min_threshold = min_threshold
        self.max_threshold = max_threshold
        self.budget = budget
        self.alpha = 1.0 - confidence
        self.window = window
        self._right = np.zeros(BANDS, dtype=np.int64)
        self._wrong = np.zeros(BANDS, dtype=np.int64)
        if counts is not None:
            right, wrong = counts
            if right.shape != (BANDS,) or wrong.shape != (BANDS,):
                raise ValueError(f"counts must have {BANDS} bands")
            self._right[:] = right
            self._wrong[:] = wrong
        self._total = int(self._right.sum() + self._wrong.sum())
        self._cached: Calibration | None = None

    @property
    def counts(self) -> tuple[Counts, Counts]:
        """(right, wrong) per band: copies, to persist."""
        return self._right.copy(), self._wrong.copy()

    @property
    def observations(self) -> int:
        return self._total

    def observe(self, score: float, correct: bool) -> None:
        """Count one report on a hit served at ``score``; halves every count past the window."""
        band = band_of(score)
        if correct:
            self._right[band] += 1
        else:
            self._wrong[band] += 1
        self._total += 1
        if self._total > self.window:
            self._right //= 2
            self._wrong //= 2
            self._total = int(self._right.sum() + self._wrong.sum())
        self._cached = None

    def threshold(self) -> float:
        """The threshold in force for lookups that ask none."""
        return self.calibration().threshold

    def calibration(self) -> Calibration:
        if self._cached is None:
            self._cached = self._calibrate()
        return self._cached

    def _clamp(self, value: float) -> float:
        return min(max(value, self.min_threshold), self.max_threshold)

    def _calibrate(self) -> Calibration:
        # Cumulative from the top: n[b], k[b] = hits and wrong hits with band >= b.
        n = np.cumsum((self._right + self._wrong)[::-1])[::-1]
        k = np.cumsum(self._wrong[::-1])[::-1]
        if self.budget <= 0.0:
            return self._evidence(self.configured, "off", n, k)
        # Bands whose edge the category's bounds allow, and that have hits at or above.
        lo, hi = band_of(self.min_threshold), band_of(self.max_threshold)
        enough = np.flatnonzero(n[lo : hi + 1] >= min_hits_to_pass(self.budget, self.alpha))
        if enough.size == 0:
            return self._evidence(self.configured, "configured", n, k)
        start = lo + int(enough[-1])  # the highest edge with enough hits above it
        bounds = clopper_pearson_upper(k[lo : start + 1], n[lo : start + 1], self.alpha)
        if bounds[-1] > self.budget:
            above_wrong = _edge(int(np.flatnonzero(self._wrong)[-1]) + 1)
            return self._evidence(self._clamp(above_wrong), "budget_unmet", n, k)
        # Fixed sequence: step down while the bound holds, never below the lowest
        # band with an observation (nothing is known of hits never served).
        floor = max(lo, int(np.flatnonzero(self._right + self._wrong)[0]))
        chosen = start
        while chosen > floor and bounds[chosen - 1 - lo] <= self.budget:
            chosen -= 1
        return self._evidence(self._clamp(_edge(chosen)), "calibrated", n, k)

    def _evidence(
        self,
        threshold: float,
        source: CalibrationSource,
        n: Counts,
        k: Counts,
    ) -> Calibration:
        band = band_of(threshold)
        # Hits at or above a threshold that is not a band edge: count its band too
        # (slightly pessimistic: they include hits just below it).
        above, bad = int(n[band]), int(k[band])
        total, wrong = int(n[0]), int(k[0])
        return Calibration(
            threshold=threshold,
            source=source,
            configured=self.configured,
            budget=self.budget,
            observations=total,
            false_hits=wrong,
            hits_above=above,
            estimate=bad / above if above else None,
            upper_bound=float(clopper_pearson_upper(bad, above, self.alpha)) if above else None,
        )


@dataclass(frozen=True, slots=True)
class EntryEvidence:
    """Feedback on one entry: how often it was confirmed right, and the lowest score at
    which it was. (A wrong report removes the entry, so there is no wrong count.)"""

    confirmations: int = 0
    lowest_confirmed: float = 1.0

    def confirm(self, score: float | None) -> EntryEvidence:
        """One more confirmation; ``score`` None (a report by entry id) counts it without
        a score."""
        lowest = self.lowest_confirmed if score is None else min(self.lowest_confirmed, score)
        return EntryEvidence(self.confirmations + 1, lowest)

    def threshold(self, category_threshold: float, min_threshold: float) -> float:
        """The entry's own threshold: the category's, or, once confirmed often enough,
        down to its lowest confirmed score (never below ``min_threshold``)."""
        if self.confirmations < ENTRY_MIN_CONFIRMATIONS:
            return category_threshold
        return max(min_threshold, min(category_threshold, self.lowest_confirmed))
