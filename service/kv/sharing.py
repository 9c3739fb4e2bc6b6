"""The chunk KV cache's shared tier: Redis below the local disk tier, seen from the engine.

:class:`SharedKv` wraps a :class:`~semcached.index.shared.kv_blobs.KvBlobStore` with
what a daemon needs around it:

- **Writes in the background.** A put is acknowledged after its local commit; its
  variant is queued (key and metadata record only: the writer reads the bytes back from
  the local store when their turn comes) and one writer thread ships the queue in
  order. The queue is bounded by ``max_pending_bytes``; a put past it is not shared
  (counted). A variant gone locally by its turn (evicted, deleted) is skipped.
- **Outages.** The first failure to reach Redis opens the breaker: one warning is
  logged, reads answer "not shared" at once (a local miss) and the writer keeps its
  queue and probes Redis with growing pauses (``probe_s`` to ``max_probe_s``). The
  first answer closes it (one line logged) and the queue drains. A daemon that could
  not reach Redis at start runs the same way until the first answer.
- **Deletes** are synchronous when Redis answers (the count includes variants only
  Redis had); queued writes of the deleted variants are dropped first, and a write of
  them in progress is waited for, so no write lands after the delete. While Redis is
  unreachable the delete is queued behind the writes, like one.

Counters are kept in a :class:`~semcached.index.kv_tiers.TierStats` row named
``shared``: ``hits``/``misses`` of reads that reached this tier, ``promotions``
(variants fetched and stored locally), ``written_bytes`` and ``errors`` (reads that
failed: unreachable, corrupt or unusable records), plus :class:`SharedCounters`.

(About 430 lines, a third of them docstrings, over the house's 400: the queue, the
writer, the breaker and the reads share one condition variable and its invariants.)
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar, cast

from semcached.index.kv_meta import VariantMeta
from semcached.index.kv_tiers import TierStats
from semcached.index.shared.kv_blobs import KvBlobStore, SharedTierDown
from semcached.index.shared.target import SharedTierError

__all__ = ["SharedCounters", "SharedKv"]

log = logging.getLogger(__name__)

T = TypeVar("T")

_DELETE_COST = 256  # bytes a queued delete counts against the pending bound


@dataclass(slots=True)
class SharedCounters:
    """What the shared tier did beyond hits and misses (monotone but ``pending_*``)."""

    written_bytes: int = 0
    writes: int = 0
    write_errors: int = 0  # writes Redis refused (not outages: those are retried)
    unshared: int = 0  # puts not shared: the queue was at max_pending_bytes
    fetch_errors: int = 0  # reads that failed to reach Redis or were refused
    corrupt: int = 0  # records or blobs skipped: corrupt, or unusable by this daemon
    outages: int = 0
    pending_bytes: int = 0
    pending: int = 0


@dataclass(frozen=True, slots=True)
class _Op:
    """A queued write (``record`` set) or delete (``variant`` None: every variant)."""

    stored_chunk: bytes
    variant: bytes | None
    record: bytes = b""
    meta: VariantMeta | None = None
    cost: int = _DELETE_COST

    def touches(self, stored_chunk: bytes, variant: bytes | None) -> bool:
        return self.stored_chunk == stored_chunk and (
            variant is None or self.variant is None or self.variant == variant
        )


class _Flight:
    """A :meth:`SharedKv.once` in progress; later callers wait for its result."""

    __slots__ = ("done", "ok", "result")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.ok = False
        self.result: object = None


class SharedKv:
    """The shared tier of one engine. ``connect`` makes the store (resolving the target:
    it may raise, e.g. while Redis is down); ``read_local`` (given to :meth:`start`)
    reads a variant's bytes back from the local store by record key."""

    def __init__(
        self,
        connect: Callable[[], KvBlobStore],
        *,
        max_pending_bytes: int,
        where: str = "Redis",
        probe_s: float = 0.25,
        max_probe_s: float = 5.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._connect = connect
        self.max_pending_bytes = max_pending_bytes
        self.where = where
        self._probe_s = probe_s
        self._max_probe_s = max_probe_s
        self._monotonic = monotonic
        self._cv = threading.Condition()
        self._store: KvBlobStore | None = None
        self._down_since: float | None = None
        self._queue: collections.deque[_Op] = collections.deque()
        self._current: _Op | None = None
        self._flights: dict[bytes, _Flight] = {}
        self._closing = False
        self._full = False  # the queue refused a put since it was last empty (logged once)
        self._thread: threading.Thread | None = None
        self._read_local: Callable[[bytes], bytes | None] = lambda key: None
        self.stats = TierStats()
        self.counters = SharedCounters()

    # -- lifecycle -------------------------------------------------------------------------

    def start(self, read_local: Callable[[bytes], bytes | None]) -> None:
        """Try Redis once now (a failure is logged, not raised) and start the writer."""
        self._read_local = read_local
        self._probe(first=True)
        self._thread = threading.Thread(target=self._run, name="shared KV writer", daemon=True)
        self._thread.start()

    def close(self, drain_s: float = 5.0) -> None:
        """Stop the writer after it shipped the queue, or after ``drain_s`` seconds."""
        self.flush(drain_s)
        with self._cv:
            self._closing = True
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join()
        store = self._store
        if store is not None:
            store.close()

    def flush(self, timeout: float) -> bool:
        """Wait until the queue is shipped (True), Redis is down or ``timeout`` passed."""
        deadline = self._monotonic() + timeout
        with self._cv:
            while self._queue and self._down_since is None and not self._closing:
                left = deadline - self._monotonic()
                if left <= 0:
                    break
                self._cv.wait(left)
            return not self._queue

    @property
    def up(self) -> bool:
        with self._cv:
            return self._store is not None and self._down_since is None

    def wait_up(self, timeout: float) -> bool:
        """Wait until Redis answers (after an outage or a start without it)."""
        deadline = self._monotonic() + timeout
        with self._cv:
            while self._down_since is not None or self._store is None:
                left = deadline - self._monotonic()
                if left <= 0 or self._closing:
                    return False
                self._cv.wait(left)
            return True

    # -- writes ----------------------------------------------------------------------------

    def share(self, meta: VariantMeta, record: bytes) -> bool:
        """Queue a committed variant for Redis; False when the queue is full. O(1)."""
        op = _Op(meta.stored_chunk, meta.variant, record, meta, meta.nbytes)
        return self._enqueue(op)

    def delete(self, scope: bytes, chunk: bytes, variant: bytes | None) -> set[bytes]:
        """Remove the shared copies (see the module docstring); the variant keys Redis
        held. Never raises for Redis: an outage queues the delete."""
        stored = scope + chunk
        with self._cv:
            dropped = [op for op in self._queue if op.touches(stored, variant)]
            if dropped:
                self._queue = collections.deque(
                    op for op in self._queue if not op.touches(stored, variant)
                )
                for op in dropped:
                    self._account(-op.cost, -1)
            while self._current is not None and self._current.touches(stored, variant):
                self._cv.wait()
            store = self._usable()
        op = _Op(stored, variant)
        if store is None:
            self._enqueue(op)
            return set()
        try:
            return store.delete(scope, chunk, variant)
        except SharedTierDown as exc:
            self._failed(exc)
            self._enqueue(op)
        except SharedTierError as exc:
            log.warning("the shared KV tier refused a delete: %s", exc)
        return set()

    # -- reads -----------------------------------------------------------------------------

    def fetch(
        self,
        scope: bytes,
        chunk: bytes,
        variant: bytes | None,
        accept: Callable[[VariantMeta], bool],
    ) -> tuple[VariantMeta, bytes] | None:
        """A verified variant and its bytes from Redis, or None (a miss: absent,
        corrupt, not ``accept``-able, or Redis unreachable; each counted)."""
        return self._fetch(scope, chunk, variant, accept)

    def once(self, key: bytes, work: Callable[[], T]) -> T:
        """``work()``, run once for concurrent callers with the same ``key``: the others
        wait for the first one's result (so that a hot chunk on a new host is read from
        Redis and promoted once, not once per waiting request). Its exception, if any,
        is raised to the first caller only; the others then get ``work()`` of their own."""
        with self._cv:
            flight = self._flights.get(key)
            if flight is None:
                flight = self._flights[key] = _Flight()
                leader = True
            else:
                leader = False
        if not leader:
            flight.done.wait()  # bounded: the first caller's reads end within timeouts
            if flight.ok:
                return cast(T, flight.result)
            return work()
        try:
            result = work()
            flight.result, flight.ok = result, True
            return result
        finally:
            with self._cv:
                del self._flights[key]
            flight.done.set()

    def _fetch(
        self,
        scope: bytes,
        chunk: bytes,
        variant: bytes | None,
        accept: Callable[[VariantMeta], bool],
    ) -> tuple[VariantMeta, bytes] | None:
        store = self._usable()
        if store is None:
            self._count(misses=1)
            return None
        try:
            found = store.fetch(scope, chunk, variant)
        except SharedTierError as exc:
            self._read_failed(exc)
            return None
        if found is not None and not accept(found[0].meta):
            self._note_skipped(1)
            found = None
        if found is None:
            self._count(misses=1)
            return None
        self._count(hits=1)
        return found[0].meta, found[1]

    def lookup(
        self, stored_chunks: Sequence[bytes], accept: Callable[[VariantMeta], bool]
    ) -> dict[bytes, list[VariantMeta]]:
        """The ``accept``-able variants Redis holds for each scoped chunk (for a plan);
        empty when Redis is unreachable. Counts nothing: the plan counts its choices."""
        store = self._usable()
        if store is None or not stored_chunks:
            return {}
        try:
            found = store.lookup(stored_chunks)
        except SharedTierError as exc:
            self._read_failed(exc)
            return {}
        usable: dict[bytes, list[VariantMeta]] = {}
        rejected = 0
        for stored, records in found.items():
            metas = [r.meta for r in records if accept(r.meta)]
            rejected += len(records) - len(metas)
            if metas:
                usable[stored] = metas
        self._note_skipped(rejected)
        return usable

    def count(self, *, hits: int = 0, misses: int = 0, promotions: int = 0) -> None:
        self._count(hits=hits, misses=misses, promotions=promotions)

    def tier_stats(self) -> TierStats:
        corrupt = self.snapshot().corrupt
        with self._cv:
            s = self.stats
            return TierStats(
                bytes=self.counters.pending_bytes,
                entries=self.counters.pending,
                hits=s.hits,
                misses=s.misses,
                promotions=s.promotions,
                written_bytes=self.counters.written_bytes,
                errors=self.counters.fetch_errors + corrupt,
            )

    def snapshot(self) -> SharedCounters:
        """A copy of the counters (``corrupt`` includes what the store skipped)."""
        store = self._store
        with self._cv:
            copy = SharedCounters(
                **{name: getattr(self.counters, name) for name in SharedCounters.__slots__}
            )
        copy.corrupt += 0 if store is None else store.skipped
        return copy

    # -- internals -------------------------------------------------------------------------

    def _usable(self) -> KvBlobStore | None:
        with self._cv:
            return self._store if self._down_since is None else None

    def _count(self, *, hits: int = 0, misses: int = 0, promotions: int = 0) -> None:
        with self._cv:
            self.stats.hits += hits
            self.stats.misses += misses
            self.stats.promotions += promotions

    def _note_skipped(self, n: int) -> None:
        if n:
            with self._cv:
                self.counters.corrupt += n

    def _read_failed(self, exc: SharedTierError) -> None:
        with self._cv:
            self.counters.fetch_errors += 1
            self.stats.misses += 1
        if isinstance(exc, SharedTierDown):
            self._failed(exc)
        else:
            log.warning("the shared KV tier refused a read: %s", exc)

    def _account(self, nbytes: int, ops: int) -> None:
        self.counters.pending_bytes += nbytes
        self.counters.pending += ops
        if not self.counters.pending:
            self._full = False

    def _enqueue(self, op: _Op) -> bool:
        with self._cv:
            if self._closing:
                return False
            if self.counters.pending_bytes + op.cost > self.max_pending_bytes:
                if not self._full:
                    self._full = True
                    log.warning(
                        "shared KV queue full (%d bytes pending, shared.kv_max_pending_bytes "
                        "= %d): changes are kept local only until it drains (counted in "
                        "semcached_kv_shared_unshared_total)",
                        self.counters.pending_bytes,
                        self.max_pending_bytes,
                    )
                self.counters.unshared += 1
                return False
            self._queue.append(op)
            self._account(op.cost, 1)
            self._cv.notify_all()
            return True

    def _failed(self, exc: Exception) -> None:
        """Open the breaker: one log line per outage, not per request."""
        with self._cv:
            if self._down_since is not None:
                return
            self._down_since = self._monotonic()
            self.counters.outages += 1
            self._cv.notify_all()
        log.warning(
            "shared KV tier at %s unreachable (%s): serving from local state only, "
            "retrying in the background",
            self.where,
            exc,
        )

    def _probe(self, *, first: bool = False) -> bool:
        """Try Redis (connecting first if never connected); closes the breaker on success."""
        try:
            store = self._store if self._store is not None else self._connect()
            store.ping()
        except Exception as exc:  # whatever connecting raised: still down
            if not first:
                self._failed(exc)  # logs only if it was up
                return False
            with self._cv:
                self._down_since = self._monotonic()
                self.counters.outages += 1
            log.warning(
                "shared KV tier at %s unreachable at start (%s): running local-only "
                "until it answers",
                self.where,
                exc,
            )
            return False
        with self._cv:
            was_down = self._down_since
            self._store = store
            self._down_since = None
            self._cv.notify_all()
        if was_down is not None:
            log.warning(
                "shared KV tier at %s reachable again after %.1f s",
                self.where,
                self._monotonic() - was_down,
            )
        return True

    def _run(self) -> None:
        """The writer: ship the queue in order; while Redis is down, probe it."""
        pause = self._probe_s
        while True:
            with self._cv:
                while not self._closing and self._down_since is None and not self._queue:
                    self._cv.wait()
                if self._closing:
                    return
                down = self._down_since is not None or self._store is None
                op = None if down else self._queue[0]
                self._current = op
                store = self._store
            if op is None or store is None:
                if self._probe():
                    pause = self._probe_s
                else:
                    with self._cv:
                        if not self._closing:
                            self._cv.wait(pause)
                    pause = min(pause * 2, self._max_probe_s)
                continue
            done = self._apply(store, op)
            with self._cv:
                self._current = None
                if done and self._queue and self._queue[0] is op:
                    self._queue.popleft()
                    self._account(-op.cost, -1)
                self._cv.notify_all()

    def _apply(self, store: KvBlobStore, op: _Op) -> bool:
        """Ship one op; False when Redis is down (the op stays first in the queue)."""
        try:
            if op.meta is None:
                store.delete(op.stored_chunk[:-16], op.stored_chunk[-16:], op.variant)
                return True
            data = self._read_local(op.meta.key)
            if data is None:  # evicted or deleted since: nothing to share
                return True
            written = store.put(op.meta, data, record=op.record)
            with self._cv:
                self.counters.written_bytes += written
                self.counters.writes += 1
            return True
        except SharedTierDown as exc:
            self._failed(exc)
            return False
        except SharedTierError as exc:
            with self._cv:
                self.counters.write_errors += 1
                first = self.counters.write_errors == 1
            if first or self.counters.write_errors % 1000 == 0:
                log.warning(
                    "the shared KV tier refused a write (%d so far): %s",
                    self.counters.write_errors,
                    exc,
                )
            return True
