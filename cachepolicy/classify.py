"""Which category a prompt that names none belongs to: nearest configured examples.

The operator lists a few example prompts per category (``examples = [...]`` in a
``[categories.<name>]`` table); the daemon embeds them once with its own embedder, and
this module decides from the query vector alone (the vector the lookup computes
anyway, so classifying costs no model call).

The rule, per category ``c`` with examples ``E_c`` (unit rows) and query ``q``:

1. ``score_c`` = the mean of the ``neighbours`` highest cosine similarities
   ``E_c · q`` (all of them when the category has fewer examples). A mean of a few
   nearest examples, not the single nearest, so that one stray example does not
   capture queries; per category, not one global k-nearest vote, so that a category
   with fifty examples does not outvote one with five by sheer number.
2. ``confidence`` = the softmax probability of the best category,
   ``exp(scale·score_best) / Σ_c exp(scale·score_c)``. Sentence embeddings put
   unrelated prompts at cosines of 0.0 to 0.3 and related ones only a little higher, so
   the *gap* between categories carries the signal, not the absolute similarity; the
   softmax turns gaps into a probability among the configured categories. ``scale``
   20 is the inverse temperature sentence-transformers models such as MiniLM were
   trained with (their contrastive loss), so a gap of 0.05 reads as odds of e:1.
   A prompt like none of the examples scores about equally everywhere and gets a
   confidence near ``1 / categories``.
3. Below ``min_confidence``, or when two categories tie for the best score, the
   request goes to the default category (``source`` ``"default"``): a wrong category
   applies a wrong threshold and TTL, while the default's are the safe middle.

Cost: one matrix-vector product over all N examples (``O(N·d)``: 256 examples of
384 dimensions is about 100k multiply-adds, tens of microseconds) and one partial sort
of a (categories x most examples) grid (``O(C·n_max)``, ``O(N)`` when categories have
similar counts); memory ``O(N·d)`` floats.

Pure: vectors and numbers in, a decision out; no I/O, no clock, no model.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import NDArray

from semcached.protocol.semantic import CategorySource as Source

__all__ = [
    "DEFAULT_MIN_CONFIDENCE",
    "DEFAULT_NEIGHBOURS",
    "DEFAULT_SCALE",
    "Classification",
    "ExampleClassifier",
    "Source",
]

Matrix = NDArray[np.float32]

DEFAULT_NEIGHBOURS = 3
DEFAULT_SCALE = 20.0
DEFAULT_MIN_CONFIDENCE = 0.5


@dataclass(frozen=True, slots=True)
class Classification:
    """The decision for one query.

    ``category`` is the one to use (the default category when ``source`` is
    ``"default"``); ``nearest`` the best-scoring category whatever the confidence (what
    a below-floor request would have been); ``confidence`` the softmax probability of
    ``nearest``.
    """

    category: str
    source: Literal["inferred", "default"]
    confidence: float
    nearest: str


class ExampleClassifier:
    """Nearest-examples classifier over fixed, already embedded example vectors.

    Immutable once built (the daemon swaps a whole new one in on reload), so it is
    safe to call from any thread.
    """

    def __init__(
        self,
        examples: Mapping[str, Matrix],
        *,
        default: str,
        neighbours: int = DEFAULT_NEIGHBOURS,
        scale: float = DEFAULT_SCALE,
        min_confidence: float = DEFAULT_MIN_CONFIDENCE,
    ) -> None:
        """``examples``: category name -> ``(n, d)`` unit rows (categories with no rows
        are left out). Raises ``ValueError`` on mismatched dimensions or bad numbers."""
        if neighbours < 1:
            raise ValueError("neighbours must be at least 1")
        if not (np.isfinite(scale) and scale > 0):
            raise ValueError("scale must be a positive number")
        if not 0.0 <= min_confidence <= 1.0:
            raise ValueError("min_confidence must be within [0, 1]")
        kept = {name: rows for name, rows in sorted(examples.items()) if len(rows)}
        dims = {np.asarray(rows).shape[1] for rows in kept.values()}
        if len(dims) > 1:
            raise ValueError(f"example vectors differ in dimension: {sorted(dims)}")
        self.default = default
        self.neighbours = neighbours
        self.scale = float(scale)
        self.min_confidence = float(min_confidence)
        self.categories: tuple[str, ...] = tuple(kept)
        self.dim: int | None = dims.pop() if dims else None
        self._matrix: Matrix = (
            np.concatenate([np.asarray(r, dtype=np.float32) for r in kept.values()])
            if kept
            else np.empty((0, 0), dtype=np.float32)
        )
        counts = [len(r) for r in kept.values()]
        self.example_counts: dict[str, int] = dict(zip(self.categories, counts, strict=True))
        # Category c's similarities gathered into row c of a (categories, most examples)
        # grid; short rows point at a -inf sentinel past the last example. One gather, one
        # partial sort and one sum score every category (a numpy call per category costs
        # more than the arithmetic).
        width = max(counts, default=0)
        sentinel = sum(counts)
        self._gather = np.full((len(counts), width), sentinel, dtype=np.intp)
        start = 0
        for row, n in enumerate(counts):
            self._gather[row, :n] = np.arange(start, start + n)
            start += n
        self._k = min(neighbours, width)
        self._short = any(n < self._k for n in counts)  # some rows hold sentinels in the top k
        self._divisor = np.minimum(np.asarray(counts, dtype=np.float64), neighbours)

    @property
    def enabled(self) -> bool:
        """Whether any category has examples (else every query goes to the default)."""
        return bool(self.categories)

    def scores(self, query: Matrix) -> dict[str, float]:
        """Each category's score: the mean of its ``neighbours`` best cosine similarities."""
        return dict(zip(self.categories, self._scores(query).tolist(), strict=True))

    def _scores(self, query: Matrix) -> NDArray[np.float64]:
        sims = np.empty(len(self._matrix) + 1, dtype=np.float64)
        sims[:-1] = self._matrix @ np.asarray(query, dtype=np.float32)
        sims[-1] = -np.inf
        grid = sims[self._gather]
        width = grid.shape[1]
        top = np.partition(grid, width - self._k, axis=1)[:, width - self._k :]
        if self._short:  # a category with fewer than k examples: its own only
            top[np.isneginf(top)] = 0.0
        scores: NDArray[np.float64] = top.sum(axis=1) / self._divisor
        return scores

    def classify(self, query: Matrix) -> Classification:
        """The category for a unit ``query`` vector of the examples' dimension."""
        if not self.categories:
            return Classification(self.default, "default", 0.0, self.default)
        # The categories are few: plain floats beat numpy calls here.
        values = self._scores(query).tolist()
        top = max(values)
        best = values.index(top)  # the first of equal maxima: names are sorted
        # Shifted by the maximum: exp never overflows, whatever the scale.
        confidence = 1.0 / sum(math.exp(self.scale * (v - top)) for v in values)
        nearest = self.categories[best]
        tied = values.count(top) > 1
        if tied or confidence < self.min_confidence:
            return Classification(self.default, "default", confidence, nearest)
        return Classification(nearest, "inferred", confidence, nearest)
