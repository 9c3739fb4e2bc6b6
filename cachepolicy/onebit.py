"""Eviction driven by one bit per request ("Paging with Succinct Predictions",
Antoniadis et al., ICML 2023), with a robustness guard (Chen et al., NeurIPS 2025).

Bit 1 means "safe to evict" (:mod:`semcached.cachepolicy.labels`); the bits come
from a :class:`~semcached.cachepolicy.bits.BitPredictor`.

* :class:`DiscardFollower` — evict a cached item whose latest *discard* bit is 1
  (least recently used among them), else the least recently used item. With
  Belady's bits it faults exactly as often as Belady.
* ``DiscardFollower(guard=True)`` — the same inside marking-style phases. A phase
  starts, on a fault, when no *old unvisited* item is left (old: cached when the phase
  began; visited: requested since). A fault on an item evicted earlier in the phase is
  a detected prediction error: the item is *guarded* (never a predictor's victim until
  the phase ends) and the victim is a uniformly random old unvisited item instead.
  Wrong bits then cost a bounded factor over marking (the authors prove
  O(log k)-robustness), while right bits still give Belady's misses.
* :class:`QueueFollower` — the unguarded discard follower on two recency queues, for
  predictors whose bit is known at once (:class:`~semcached.cachepolicy.bucket_bits.
  BucketBits`): O(1) per call, what ``eviction = "onebit"`` runs inside the
  :class:`~semcached.cachepolicy.lru_guard.LruGuard`.
* :class:`MarkAndPredict` — randomized marking with *phase* bits: on a fault with no
  unmarked item, unmark everything (a new phase); evict a random unmarked item whose
  bit says "not requested next phase", else a random unmarked item.

All three follow the :class:`~semcached.index.eviction.EvictionPolicy`
protocol. Predictions are batched: an access stores its observation, and the bits
still unknown are predicted together when a victim is chosen.
"""

from __future__ import annotations

import random
from collections import OrderedDict
from typing import Literal

from semcached.cachepolicy.bits import BitPredictor, Observation
from semcached.cachepolicy.randset import RandomSet
from semcached.ext.bskiplist import BSkipList
from semcached.index.eviction import AccessFeatures, EvictionPolicy

__all__ = ["DiscardFollower", "MarkAndPredict", "QueueFollower"]


class DiscardFollower(EvictionPolicy):
    """Follow discard bits, LRU among them, LRU when none; optionally guarded.

    ``admit``, ``record_access`` and ``forget`` are O(log n) (B-skiplist updates);
    ``choose_victim`` is O(log n), plus, once per batch of accesses, one model call
    for the batch (:meth:`_batch_size`). A phase change (guard only) costs O(n) once
    per phase, which lasts at least as many faults as there are old items, so O(1)
    amortised.
    """

    def __init__(
        self,
        predictor: BitPredictor,
        *,
        guard: bool = False,
        error_victim: Literal["random", "lru"] = "random",
        seed: int = 0,
    ) -> None:
        self._predictor = predictor
        self.guard = guard
        self.error_victim = error_victim
        self._rng = random.Random(seed)
        self._clock = 0
        self._tick_of: dict[int, int] = {}  # every tracked key -> tick of its last access
        self._bit: dict[int, bool] = {}  # keys whose latest bit is known
        self._pending: dict[int, Observation] = {}  # keys whose latest bit is not
        # All keys by recency, and the unguarded keys whose latest bit is 1.
        self._lru = BSkipList()
        self._discard = BSkipList()
        self._incoming: int | None = None  # admitted last: not a victim while others exist
        self._chosen: int | None = None  # what choose_victim named since the last change
        # Guard state.
        self._old_unvisited = RandomSet()
        self._guarded: set[int] = set()
        self._phase_evicted: set[int] = set()
        self._error_pending = False
        self.phases = 0
        self.detected_errors = 0

    def __len__(self) -> int:
        return len(self._tick_of)

    # -- the protocol --------------------------------------------------------------------

    def admit(self, key: int, size: int, features: AccessFeatures | None = None) -> None:
        if key in self._tick_of:
            self.record_access(key, features)
            return
        if self.guard:
            if not self._old_unvisited:
                self._new_phase()
            if key in self._phase_evicted:
                self.detected_errors += 1
                self._error_pending = True
                self._guarded.add(key)
        capacity = max(len(self._tick_of), 1)
        self._access(key, self._predictor.observe(key, size, features, capacity))
        self._incoming = key

    def record_access(self, key: int, features: AccessFeatures | None = None) -> None:
        if key not in self._tick_of:
            return
        self._old_unvisited.discard(key)
        capacity = len(self._tick_of)
        self._access(key, self._predictor.observe(key, 1, features, capacity))

    def forget(self, key: int) -> None:
        tick = self._tick_of.pop(key, None)
        if tick is None:
            return
        if key == self._chosen and self.guard:
            self._phase_evicted.add(key)
            self._error_pending = False
        self._chosen = None
        if key == self._incoming:
            self._incoming = None
        self._lru.delete(tick)
        if self._bit.pop(key, False):
            self._discard.delete(tick)
        self._pending.pop(key, None)
        self._old_unvisited.discard(key)
        self._guarded.discard(key)

    def choose_victim(self) -> int | None:
        if self._chosen is not None:
            return self._chosen
        if not self._tick_of:
            return None
        incoming = self._incoming if len(self._tick_of) > 1 else None
        victim: int | None = None
        if self._error_pending:
            if self.error_victim == "random":
                victim = self._old_unvisited.choice(self._rng, exclude=incoming)
            else:  # the least recent item is old and unvisited while any such is left
                victim = self._oldest(self._lru, incoming)
        if victim is None:
            if len(self._pending) >= self._batch_size():
                self._flush()
            victim = self._oldest(self._discard, incoming)
        if victim is None:
            victim = self._oldest(self._lru, incoming)
        if victim is None:  # only the incoming key is tracked
            victim = next(iter(self._tick_of))
        self._chosen = victim
        return victim

    # -- internals -----------------------------------------------------------------------

    def _access(self, key: int, observation: Observation) -> None:
        self._chosen = None
        old = self._tick_of.get(key)
        if old is not None:
            self._lru.delete(old)
            if self._bit.pop(key, False):
                self._discard.delete(old)
        self._clock += 1
        tick = self._tick_of[key] = self._clock
        guarded = key in self._guarded
        self._lru.insert(tick, key)
        if observation.bit is None:
            self._pending[key] = observation
        else:
            self._pending.pop(key, None)
            self._bit[key] = observation.bit
            if observation.bit and not guarded:
                self._discard.insert(tick, key)

    def _batch_size(self) -> int:
        """Accesses whose bits are predicted together: up to 64, at most 1/8 of the
        cache, so that at most that share of (the most recent) items waits for its
        bit, counting as 0 meanwhile."""
        return max(1, min(64, len(self._tick_of) // 8))

    def _flush(self) -> None:
        """Predict every bit still unknown, in one batch."""
        if not self._pending:
            return
        keys = list(self._pending)
        bits = self._predictor.predict(list(self._pending.values()))
        self._pending.clear()
        for key, bit in zip(keys, bits, strict=True):
            self._bit[key] = bit
            if bit and key not in self._guarded:
                self._discard.insert(self._tick_of[key], key)

    @staticmethod
    def _oldest(order: BSkipList, exclude: int | None) -> int | None:
        if not order:
            return None
        tick = order.min()
        key = order.get(tick)
        if key == exclude:
            nxt = order.successor(tick + 1)  # successor() is inclusive
            return None if nxt is None else order.get(nxt)
        return key

    def _new_phase(self) -> None:
        self.phases += 1
        self._old_unvisited.clear()
        for key in self._tick_of:
            self._old_unvisited.add(key)
        for key in self._guarded:
            if self._bit.get(key, False):
                self._discard.insert(self._tick_of[key], key)
        self._guarded.clear()
        self._phase_evicted.clear()
        self._error_pending = False

    def _check(self) -> None:
        """Invariants between the maps, the orders and the guard sets."""
        tracked = set(self._tick_of)
        assert set(self._bit).isdisjoint(self._pending)
        assert set(self._bit) | set(self._pending) == tracked
        assert self._guarded <= tracked
        assert set(self._old_unvisited) <= tracked
        lru = dict(self._lru.items())
        assert len(lru) == len(self._lru)
        assert self._tick_of == {k: t for t, k in lru.items()}
        discard = {k: t for t, k in self._discard.items()}
        assert discard == {
            k: self._tick_of[k] for k, b in self._bit.items() if b and k not in self._guarded
        }
        if not self.guard:
            assert not self._guarded
            assert not self._old_unvisited
        assert self._incoming is None or self._incoming in tracked
        assert self._chosen is None or self._chosen in tracked
        self._old_unvisited._check()


class QueueFollower(EvictionPolicy):
    """Evict the least recent item whose latest bit is 1, else the least recent item.

    The same victims as ``DiscardFollower(guard=False)`` when every bit is known at
    its access (an oracle, :class:`~semcached.cachepolicy.bucket_bits.BucketBits`),
    on two ordered dicts instead of two skiplists: ``admit``, ``record_access``,
    ``forget`` and ``choose_victim`` are O(1). Observations whose bit is not known
    yet are predicted at once, one at a time.
    """

    def __init__(self, predictor: BitPredictor) -> None:
        self._predictor = predictor
        self._observe = predictor.observe  # bound once: it runs on every access
        # A sized predictor labels in bytes, so it is told the cached bytes.
        self._sized = bool(getattr(predictor, "sized", False))
        self._discard: OrderedDict[int, None] = OrderedDict()  # bit 1, oldest first
        self._keep: OrderedDict[int, None] = OrderedDict()  # bit 0, oldest first
        self._size: dict[int, int] = {}
        self._bytes = 0
        self._incoming: int | None = None

    def __len__(self) -> int:
        return len(self._size)

    def admit(self, key: int, size: int, features: AccessFeatures | None = None) -> None:
        if key in self._size:
            self.record_access(key, features)
            return
        size = max(size, 1)
        self._size[key] = size
        self._bytes += size
        self._incoming = key
        self._place(key, size, features)

    def record_access(self, key: int, features: AccessFeatures | None = None) -> None:
        size = self._size.get(key)
        if size is None:
            return
        # Inline (this runs on every hit): out of its queue, then placed by its new bit.
        if key in self._discard:
            del self._discard[key]
        else:
            del self._keep[key]
        self._place(key, size, features)

    def forget(self, key: int) -> None:
        size = self._size.pop(key, None)
        if size is None:
            return
        self._bytes -= size
        if key in self._discard:
            del self._discard[key]
        else:
            del self._keep[key]
        if key == self._incoming:
            self._incoming = None

    def choose_victim(self) -> int | None:
        incoming = self._incoming if len(self._size) > 1 else None
        for queue in (self._discard, self._keep):
            for key in queue:
                if key != incoming:
                    return key
                break
            if len(queue) > 1:  # the oldest was the incoming key: take the next
                keys = iter(queue)
                next(keys)
                return next(keys)
        return self._incoming

    def _place(self, key: int, size: int, features: AccessFeatures | None) -> None:
        observation = self._observe(
            key, size, features, self._bytes if self._sized else len(self._size)
        )
        bit = observation.bit
        if bit is None:
            bit = self._predictor.predict([observation])[0]
        if bit:
            self._discard[key] = None
        else:
            self._keep[key] = None

    def _check(self) -> None:
        assert set(self._discard).isdisjoint(self._keep)
        assert set(self._discard) | set(self._keep) == set(self._size)
        assert self._bytes == sum(self._size.values())
        assert self._incoming is None or self._incoming in self._size


class MarkAndPredict(EvictionPolicy):
    """Randomized marking with phase bits. O(1) per access (expected);
    ``choose_victim`` is O(1) plus one batched prediction, and a phase change is
    O(n) once per phase of at least n faults."""

    def __init__(self, predictor: BitPredictor, *, seed: int = 0) -> None:
        self._predictor = predictor
        self._rng = random.Random(seed)
        self._marked: set[int] = set()
        self._unmarked = RandomSet()
        self._unmarked_discard = RandomSet()  # unmarked keys whose latest bit is 1
        self._bit: dict[int, bool] = {}
        self._pending: dict[int, Observation] = {}
        self._incoming: int | None = None
        self._chosen: int | None = None
        self.phases = 0

    def __len__(self) -> int:
        return len(self._marked) + len(self._unmarked)

    def admit(self, key: int, size: int, features: AccessFeatures | None = None) -> None:
        if key in self._marked or key in self._unmarked:
            self.record_access(key, features)
            return
        capacity = max(len(self), 1)
        self._mark(key, self._predictor.observe(key, size, features, capacity))
        self._incoming = key

    def record_access(self, key: int, features: AccessFeatures | None = None) -> None:
        if key not in self._marked and key not in self._unmarked:
            return
        self._mark(key, self._predictor.observe(key, 1, features, len(self)))

    def forget(self, key: int) -> None:
        if key in self._marked:
            self._marked.discard(key)
        elif key in self._unmarked:
            self._unmarked.discard(key)
            self._unmarked_discard.discard(key)
        else:
            return
        self._bit.pop(key, None)
        self._pending.pop(key, None)
        self._chosen = None
        if key == self._incoming:
            self._incoming = None

    def choose_victim(self) -> int | None:
        if self._chosen is not None:
            return self._chosen
        if not len(self):
            return None
        if len(self) == 1:
            self._chosen = next(iter(self._marked or self._unmarked))
            return self._chosen
        if not self._unmarked:
            self._new_phase()
        victim = self._unmarked_discard.choice(self._rng)
        if victim is None:
            victim = self._unmarked.choice(self._rng)
        self._chosen = victim
        return victim

    def _mark(self, key: int, observation: Observation) -> None:
        self._chosen = None
        self._unmarked.discard(key)
        self._unmarked_discard.discard(key)
        self._marked.add(key)
        self._bit.pop(key, None)
        self._pending.pop(key, None)
        if observation.bit is None:
            self._pending[key] = observation
        else:
            self._bit[key] = observation.bit

    def _new_phase(self) -> None:
        """Unmark every key but the one that faulted; their bits are needed now."""
        self.phases += 1
        if self._pending:
            keys = list(self._pending)
            for key, bit in zip(
                keys, self._predictor.predict(list(self._pending.values())), strict=True
            ):
                self._bit[key] = bit
            self._pending.clear()
        keep = self._incoming
        for key in self._marked:
            if key == keep:
                continue
            self._unmarked.add(key)
            if self._bit[key]:
                self._unmarked_discard.add(key)
        self._marked = {keep} if keep is not None and keep in self._marked else set()

    def _check(self) -> None:
        assert self._marked.isdisjoint(set(self._unmarked))
        tracked = self._marked | set(self._unmarked)
        assert set(self._unmarked_discard) <= set(self._unmarked)
        assert set(self._bit) | set(self._pending) == tracked
        assert set(self._bit).isdisjoint(self._pending)
        assert {k for k in self._unmarked if self._bit.get(k)} == set(self._unmarked_discard)
        assert all(k in self._bit for k in self._unmarked)
        assert self._incoming is None or self._incoming in tracked
        assert self._chosen is None or self._chosen in tracked
        self._unmarked._check()
        self._unmarked_discard._check()
