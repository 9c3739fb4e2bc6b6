"""Where one-bit policies get their bits: the :class:`BitPredictor` protocol and the
oracle (precomputed labels, optionally corrupted) that benchmarks and tests use.

A one-bit policy calls :meth:`BitPredictor.observe` once per access, in request
order, and keeps the :class:`Observation` it returns with the item. When the bit is
already known (an oracle) the observation carries it; otherwise the policy collects
the observations of items whose bit it has not needed yet and asks
:meth:`BitPredictor.predict` for all of them at once when it picks a victim, so a
learned model runs in batches, not once per request.

Bit 1 means "safe to evict" (see :mod:`semcached.cachepolicy.labels`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
import numpy.typing as npt

from semcached.index.eviction import AccessFeatures

__all__ = ["BitPredictor", "Observation", "OracleBits"]


class Observation:
    """One access as a predictor saw it: its bit if known, else its feature row."""

    __slots__ = ("bit", "row")

    def __init__(self, bit: bool | None = None, row: list[float] | None = None) -> None:
        self.bit = bit
        self.row = row


class BitPredictor(Protocol):
    """Emits the bit of each access."""

    def observe(
        self, key: int, size: int, features: AccessFeatures | None, capacity: int
    ) -> Observation:
        """Record one access (``capacity``: items the cache holds when full, as far as
        the policy knows) and return what :meth:`predict` needs for its bit."""
        ...

    def predict(self, observations: Sequence[Observation]) -> list[bool]:
        """The bits of observations whose ``bit`` is None, in order."""
        ...


class OracleBits:
    """Replays precomputed labels, one per access in request order.

    ``flip`` corrupts each bit independently with that probability (seeded);
    ``invert`` corrupts every bit (always wrong). O(1) per access.
    """

    def __init__(
        self,
        labels: Sequence[bool] | npt.ArrayLike,
        *,
        flip: float = 0.0,
        invert: bool = False,
        seed: int = 0,
    ) -> None:
        bits = np.asarray(labels, dtype=np.bool_)
        if flip > 0:
            bits = bits ^ (np.random.default_rng(seed).random(len(bits)) < flip)
        if invert:
            bits = ~bits
        self._bits: list[bool] = bits.tolist()
        self._next = 0

    def observe(
        self, key: int, size: int, features: AccessFeatures | None, capacity: int
    ) -> Observation:
        i = self._next
        if i >= len(self._bits):
            raise IndexError("more accesses than labels")
        self._next = i + 1
        return Observation(bit=self._bits[i])

    def predict(self, observations: Sequence[Observation]) -> list[bool]:
        return [bool(o.bit) for o in observations]
