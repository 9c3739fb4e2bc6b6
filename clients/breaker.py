"""A circuit breaker: stop calling a daemon that keeps failing, then probe it.

Closed, it lets every call through and counts consecutive failures; at
``failures_to_open`` it opens and refuses calls for ``cooldown_s``; then it is
half-open and lets one call through as a probe: a success closes it, a failure opens it
for another cool-down. A caller asks :meth:`CircuitBreaker.allow` before each call and
reports how the call went with :meth:`~CircuitBreaker.success` or
:meth:`~CircuitBreaker.failure` (every allowed call must report one of them, or a
half-open breaker waits for its probe forever).

It holds a lock only for a few comparisons, so the same breaker serves threads and an
event loop alike.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Literal

__all__ = ["BreakerState", "CircuitBreaker"]

BreakerState = Literal["closed", "open", "half_open"]


class CircuitBreaker:
    """See the module docstring. ``clock`` is monotonic seconds (injectable for tests)."""

    def __init__(
        self,
        failures_to_open: int = 5,
        cooldown_s: float = 5.0,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if failures_to_open < 1:
            raise ValueError("failures_to_open must be at least 1")
        if cooldown_s < 0:
            raise ValueError("cooldown_s must not be negative")
        self.failures_to_open = failures_to_open
        self.cooldown_s = cooldown_s
        self._clock = clock
        self._lock = threading.Lock()
        self._failures = 0
        self._open_until: float | None = None  # set while open or half-open
        self._probing = False  # half-open: the one probe is out
        self.opens = 0  # times it opened (from closed or after a failed probe)

    @property
    def state(self) -> BreakerState:
        with self._lock:
            if self._open_until is None:
                return "closed"
            return "half_open" if self._clock() >= self._open_until else "open"

    def allow(self) -> bool:
        """Whether to make the call now; in the half-open state, True for one probe."""
        with self._lock:
            if self._open_until is None:
                return True
            if self._clock() < self._open_until or self._probing:
                return False
            self._probing = True
            return True

    def rejecting(self) -> bool:
        """Whether a call now would be refused, without taking the half-open probe."""
        with self._lock:
            if self._open_until is None:
                return False
            return self._clock() < self._open_until or self._probing

    def success(self) -> None:
        with self._lock:
            self._failures = 0
            self._open_until = None
            self._probing = False

    def failure(self) -> bool:
        """Count a failed call; True if the breaker opened because of it."""
        with self._lock:
            if self._open_until is not None:
                if not self._probing:
                    return False  # a call that started before it opened
                self._probing = False  # the probe failed: another cool-down
            else:
                self._failures += 1
                if self._failures < self.failures_to_open:
                    return False
            self._open_until = self._clock() + self.cooldown_s
            self.opens += 1
            return True
