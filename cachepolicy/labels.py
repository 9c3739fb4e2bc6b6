"""The one-bit labels of a request trace ("Paging with Succinct Predictions").

Every bit in this package means the same thing: **1 = safe to evict**.

* *Discard* bits (:func:`discard_labels`): the bit of a request of item p is 1 when
  an offline optimum (Belady, capacity k) evicts p before p's next request, or p is
  never requested again. A cache that evicts only items whose latest bit is 1 while
  there are any (:class:`~semcached.cachepolicy.onebit.DiscardFollower`) then faults
  exactly as often as Belady.
* *Phase* bits (:func:`phase_labels`): split the trace into k-phases (a phase is a
  maximal run of requests to at most k distinct items; the request of the (k+1)-th
  distinct item starts the next one). The bit of a request of p in phase i is 1 when
  p is *not* requested in phase i + 1. MARK&PREDICT evicts such unmarked items first.

Both are O(n log n) for n requests.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from semcached.cachepolicy.belady import belady_sized, belady_unit, next_request

__all__ = ["discard_labels", "phase_ids", "phase_labels"]

BoolArray = npt.NDArray[np.bool_]


def discard_labels(
    keys: Sequence[int] | npt.ArrayLike,
    capacity: int,
    sizes: Sequence[int] | npt.ArrayLike | None = None,
) -> BoolArray:
    """Belady's discard bit of every request: 1 when the item is evicted (or never
    requested) before its next request. ``capacity`` is in items, or in bytes when
    ``sizes`` is given. O(n log n)."""
    arr = np.asarray(keys, dtype=np.int64)
    result = belady_unit(arr, capacity) if sizes is None else belady_sized(arr, sizes, capacity)
    labels: BoolArray = result.evicted_after | (next_request(arr) == len(arr))
    return labels


def phase_ids(keys: Sequence[int] | npt.ArrayLike, capacity: int) -> npt.NDArray[np.int64]:
    """The k-phase (k = ``capacity``) each request belongs to, numbered from 0. O(n)."""
    if capacity < 1:
        raise ValueError("capacity must be positive")
    key_list = np.asarray(keys, dtype=np.int64).tolist()
    out = np.empty(len(key_list), dtype=np.int64)
    phase = 0
    seen: set[int] = set()
    for i, key in enumerate(key_list):
        if key not in seen:
            if len(seen) == capacity:
                phase += 1
                seen = set()
            seen.add(key)
        out[i] = phase
    return out


def phase_labels(keys: Sequence[int] | npt.ArrayLike, capacity: int) -> BoolArray:
    """The phase bit of every request: 1 when its item is not requested in the next
    k-phase (always 1 in the last phase). O(n)."""
    arr = np.asarray(keys, dtype=np.int64)
    phases = phase_ids(arr, capacity)
    in_phase: set[tuple[int, int]] = set(zip(phases.tolist(), arr.tolist(), strict=True))
    labels = np.fromiter(
        ((p + 1, k) not in in_phase for p, k in zip(phases.tolist(), arr.tolist(), strict=True)),
        dtype=np.bool_,
        count=len(arr),
    )
    return labels
