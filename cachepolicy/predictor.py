"""A learned one-bit predictor: labels from the cache's own recent history.

:class:`LearnedBits` turns every access into a feature row
(:class:`~semcached.cachepolicy.features.FeatureTracker`: recent gaps, decayed
counters, count, size, age, and what the cache passed in) and keeps the last
``window`` accesses. Each time half a window of new accesses has arrived it labels
the older half: Belady is replayed over the whole window with the cache's current
capacity, and an access gets bit 1 when Belady evicts its item before the next
request (*discard* bits) — or, with ``label="phase"``, when its item is not
requested in the next k-phase. Accesses in the newer half are labelled in the next
round, once their future is in the window. Labelled rows go to a bounded training
set; every ``retrain_every`` (8 k) new labels a model is fitted to it and replaces the
current one. Until the first model exists every bit is 0 (the follower is LRU).

Models (``model=``):

* ``"lightgbm"`` — a small gradient-boosted tree ensemble (LightGBM, one thread);
* ``"logistic"`` — L2-regularised logistic regression fitted by Newton's method in
  numpy (no dependency).

With ``background=True`` labelling and fitting run in one worker thread shared by
all predictors of the process; the request path only appends the row (O(1)) and the
model swap is one reference assignment. Predictions are made in batches
(:meth:`LearnedBits.predict`), when the policy picks a victim.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from concurrent.futures import Future
from typing import TYPE_CHECKING, Literal, Protocol

import numpy as np
import numpy.typing as npt

from semcached.cachepolicy.bits import Observation
from semcached.cachepolicy.features import FEATURE_NAMES, GAPS, FeatureTracker
from semcached.cachepolicy.labels import discard_labels, phase_labels
from semcached.cachepolicy.training import training_worker
from semcached.index.eviction import AccessFeatures

if TYPE_CHECKING:
    import lightgbm as lgb

__all__ = ["LearnedBits", "LogisticModel", "fit_model"]

Matrix = npt.NDArray[np.float64]
ModelKind = Literal["lightgbm", "logistic"]
LabelKind = Literal["discard", "phase"]


class _Model(Protocol):
    def probabilities(self, rows: Matrix) -> npt.NDArray[np.float64]: ...


class LogisticModel:
    """Logistic regression on standardised features; a missing value (NaN) becomes
    the column's fill value (a long gap for gaps, 0 otherwise) plus nothing else.
    Fitting is O(iterations * n * d^2); predicting O(n * d)."""

    def __init__(self, fill: Matrix, mean: Matrix, scale: Matrix, weights: Matrix) -> None:
        self._fill = fill
        self._mean = mean
        self._scale = scale
        self._weights = weights  # last entry: the intercept

    @classmethod
    def fit(
        cls, rows: Matrix, labels: npt.NDArray[np.bool_], *, l2: float = 1e-2, iterations: int = 12
    ) -> LogisticModel:
        fill = np.zeros(rows.shape[1])
        fill[:GAPS] = math.log1p(1 << 20)  # no earlier gap: as if very long ago
        x = np.where(np.isnan(rows), fill, rows)
        mean = x.mean(axis=0)
        scale = x.std(axis=0)
        scale[scale == 0] = 1.0
        x = np.hstack([(x - mean) / scale, np.ones((len(x), 1))])
        y = labels.astype(np.float64)
        w = np.zeros(x.shape[1])
        ridge = l2 * len(x) * np.eye(x.shape[1])
        ridge[-1, -1] = 0.0
        for _ in range(iterations):
            p = 1.0 / (1.0 + np.exp(-np.clip(x @ w, -30, 30)))
            grad = x.T @ (p - y) + ridge @ w
            hess = (x * (p * (1 - p))[:, None]).T @ x + ridge + 1e-9 * np.eye(x.shape[1])
            step = np.linalg.solve(hess, grad)
            w -= step
            if float(np.abs(step).max()) < 1e-6:
                break
        return cls(fill, mean, scale, w)

    def probabilities(self, rows: Matrix) -> npt.NDArray[np.float64]:
        x = (np.where(np.isnan(rows), self._fill, rows) - self._mean) / self._scale
        z = x @ self._weights[:-1] + self._weights[-1]
        out: npt.NDArray[np.float64] = 1.0 / (1.0 + np.exp(-np.clip(z, -30, 30)))
        return out


class _GbdtModel:
    """A LightGBM booster (imported only when this model kind is used)."""

    def __init__(self, booster: lgb.Booster) -> None:
        self._booster = booster

    @classmethod
    def fit(cls, rows: Matrix, labels: npt.NDArray[np.bool_], *, seed: int) -> _GbdtModel:
        import lightgbm as lgb

        params = {
            "objective": "binary",
            "num_leaves": 31,
            "learning_rate": 0.1,
            "min_data_in_leaf": 50,
            "feature_fraction": 1.0,
            "num_threads": 1,
            "verbose": -1,
            "seed": seed,
            "deterministic": True,
        }
        data = lgb.Dataset(rows, labels.astype(np.float64), feature_name=list(FEATURE_NAMES))
        return cls(lgb.train(params, data, num_boost_round=40))

    def probabilities(self, rows: Matrix) -> npt.NDArray[np.float64]:
        out = self._booster.predict(rows, num_threads=1)
        return np.asarray(out, dtype=np.float64)


class _ConstantModel:
    """What a fit gives when every label is the same."""

    def __init__(self, probability: float) -> None:
        self._probability = probability

    def probabilities(self, rows: Matrix) -> npt.NDArray[np.float64]:
        return np.full(len(rows), self._probability)


def fit_model(
    kind: ModelKind, rows: Matrix, labels: npt.NDArray[np.bool_], *, seed: int = 0
) -> _Model | None:
    """A model of ``kind`` fitted to the rows (a constant when all labels are equal);
    None when there are no rows."""
    if len(labels) == 0:
        return None
    if labels.all() or not labels.any():
        return _ConstantModel(float(labels[0]))
    if kind == "logistic":
        return LogisticModel.fit(rows, labels)
    return _GbdtModel.fit(rows, labels, seed=seed)


class LearnedBits:
    """Bits from a model trained on Belady (or phase) labels of recent history.

    ``observe`` is O(1) plus, once per half window, the labelling of a window
    (O(window log window), in the worker when ``background``) and, once per
    ``retrain_every`` labels, a fit. ``predict`` is one vectorised model call for the
    whole batch.

    ``window``: accesses kept for labelling; None scales it with the capacity
    (``window_factor`` * capacity, within ``[min_window, max_window]``).
    """

    def __init__(
        self,
        *,
        model: ModelKind = "lightgbm",
        label: LabelKind = "discard",
        window: int | None = None,
        window_factor: int = 8,
        min_window: int = 4096,
        max_window: int = 1 << 17,
        train_rows: int = 1 << 16,
        retrain_every: int = 1 << 13,
        first_fit: int = 2048,
        threshold: float = 0.5,
        background: bool = True,
        seed: int = 0,
    ) -> None:
        self.model_kind: ModelKind = model
        self.label_kind: LabelKind = label
        self._fixed_window = window
        self._window_factor = window_factor
        self._min_window = min_window
        self._max_window = max_window
        self._train_rows = train_rows
        self._retrain_every = retrain_every
        self._first_fit = first_fit
        self._threshold = threshold
        self._background = background
        self._seed = seed
        self._tracker = FeatureTracker()
        self._keys: list[int] = []
        self._rows: list[list[float]] = []
        self._capacity = 1
        # Written by the trainer (worker thread or inline), read on the request path.
        self._model: _Model | None = None
        self._train_x: list[Matrix] = []
        self._train_y: list[npt.NDArray[np.bool_]] = []
        self._train_len = 0
        self._since_fit = 0
        self._job: Future[None] | None = None
        # Counters: fits done, rows labelled, model calls and their time and rows.
        self.fits = 0
        self.labelled = 0
        self.observed = 0
        self.predict_calls = 0
        self.predicted_rows = 0
        self.predict_seconds = 0.0
        self.train_seconds = 0.0

    @property
    def window(self) -> int:
        if self._fixed_window is not None:
            return self._fixed_window
        return min(max(self._window_factor * self._capacity, self._min_window), self._max_window)

    @property
    def trained(self) -> bool:
        return self._model is not None

    def observe(
        self, key: int, size: int, features: AccessFeatures | None, capacity: int
    ) -> Observation:
        row = self._tracker.access(key, size, features)
        self.observed += 1
        self._keys.append(key)
        self._rows.append(row)
        self._capacity = max(capacity, 1)
        if len(self._keys) >= self.window:
            self._slide()
        return Observation(row=row)

    def predict(self, observations: Sequence[Observation]) -> list[bool]:
        model = self._model
        if model is None or not observations:
            return [False] * len(observations)
        started = time.perf_counter()
        rows = np.array([o.row for o in observations], dtype=np.float64)
        bits: list[bool] = (model.probabilities(rows) >= self._threshold).tolist()
        self.predict_seconds += time.perf_counter() - started
        self.predict_calls += 1
        self.predicted_rows += len(bits)
        return bits

    def wait(self) -> None:
        """Block until background work in flight is done (tests, benchmarks)."""
        job = self._job
        if job is not None:
            job.result()

    # -- training --------------------------------------------------------------------------

    def _slide(self) -> None:
        """Hand the window to the trainer and keep its newer half."""
        keys, rows = self._keys, self._rows
        half = len(keys) // 2
        self._keys, self._rows = keys[half:], rows[half:]
        self._tracker.prune()
        capacity = self._capacity
        if not self._background:
            self._learn(keys, rows, half, capacity)
            return
        if self._job is not None and not self._job.done():
            return  # the trainer is behind: skip this window rather than queue up
        self._job = training_worker().submit(self._learn, keys, rows, half, capacity)

    def _learn(self, keys: list[int], rows: list[list[float]], half: int, capacity: int) -> None:
        started = time.perf_counter()
        try:
            self._label_and_fit(keys, rows, half, capacity)
        finally:
            self.train_seconds += time.perf_counter() - started

    def _label_and_fit(
        self, keys: list[int], rows: list[list[float]], half: int, capacity: int
    ) -> None:
        if self.label_kind == "discard":
            labels = discard_labels(keys, capacity)
        else:
            labels = phase_labels(keys, capacity)
        x = np.array(rows[:half], dtype=np.float64)
        y = labels[:half]
        self._train_x.append(x)
        self._train_y.append(y)
        self._train_len += len(y)
        while self._train_len - len(self._train_y[0]) >= self._train_rows:
            self._train_len -= len(self._train_y.pop(0))
            self._train_x.pop(0)
        self._since_fit += len(y)
        self.labelled += len(y)
        due = self._retrain_every if self._model is not None else self._first_fit
        if self._since_fit < due:
            return
        self._since_fit = 0
        model = fit_model(
            self.model_kind,
            np.vstack(self._train_x),
            np.concatenate(self._train_y),
            seed=self._seed,
        )
        if model is not None:
            self._model = model
            self.fits += 1
