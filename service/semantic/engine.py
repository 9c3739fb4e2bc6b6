"""The semantic response cache engine, usable in-process without HTTP.

(About 700 lines, over the house's 400: what is left here is the request paths and
their background upkeep, which share one set of loop-owned state; the bookkeeping is
in :mod:`~semcached.service.semantic.entries`, vectors in
:mod:`~semcached.service.semantic.vectors`, restore, snapshots and feedback in their
modules.)

A lookup tries the exact tier first (a hash of the normalised prompt within the
namespace and partition), then embeds the prompt if no vector came with it and
searches the HNSW index of its (namespace, category), the category being the request's
or, when it names none, the one that vector is classified into
(:mod:`~semcached.service.semantic.classification`); candidates from another
partition or past their expiry are dropped, and the best remaining one answers
the lookup if the category's policy says its similarity is high enough. With a
:class:`~semcached.cachepolicy.verify.Verifier`, a candidate in its grey band of
similarity is a hit only if the verifier, reading both prompts and their token
embeddings (kept with each entry, :mod:`~semcached.cachepolicy.token_codec`), says
so (:meth:`SemanticCache._decide`).

An insert is acknowledged only after its LMDB transaction has committed; the
in-memory structures (indexes, expiry order, eviction order, quota counts) are
derived from LMDB. When the store is full (its map at the cap, or the filesystem),
an insert evicts by the category policies and tries again; only when nothing is left
to evict, or the entry could never fit, does it fail with 507 ``store_full``. The
indexes are snapshotted in the background and at close
(:mod:`semcached.service.semantic.snapshots`) and at start loaded from their
snapshots and reconciled with LMDB (:mod:`semcached.service.semantic.restore`).

Threading (the contract of :mod:`semcached.service.blocking`): the engine is
loop-only. Every public method is a coroutine or a plain method to call on the event
loop, which alone mutates the in-memory structures (:class:`EntryTable`); index
searches and inserts, embedding and LMDB writes go to the executor through
``run_blocking`` (they release the GIL); hit verification, pure Python bounded by
``verification.max_tokens``, runs on the loop. ``get``, ``stats``, ``search_stats``,
``snapshot_stats`` and ``len`` are plain loop-only methods that never block.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
import math
import secrets
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np

from semcached.cachepolicy.calibration import Calibration
from semcached.cachepolicy.categories import CategoryPolicy, CategoryTable
from semcached.cachepolicy.token_codec import unpack_tokens
from semcached.cachepolicy.verify import Candidate, Verifier
from semcached.errors import BadRequestError, InsufficientStorageError
from semcached.index.docstore import Document, DocumentStore, EntryMeta, exact_key
from semcached.index.eviction import EvictionPolicy
from semcached.index.lmdb_env import StoreFullError
from semcached.index.shared.outbox import Outbox
from semcached.index.vector_index import VectorIndex
from semcached.protocol.codes import ErrorCode
from semcached.service.blocking import run_blocking
from semcached.service.semantic.classification import CategoryChoice, CategoryClassifier
from semcached.service.semantic.embedding.base import Embedder, TokenSource
from semcached.service.semantic.entries import EntryTable
from semcached.service.semantic.feedback import FeedbackBook
from semcached.service.semantic.load import LoadBook
from semcached.service.semantic.lookup_ids import SignedLookup
from semcached.service.semantic.restore import OpenReport, restore
from semcached.service.semantic.search_batch import SearchBatcher, SearchStats
from semcached.service.semantic.snapshots import SnapshotDirectory, SnapshotStats, SnapshotTracker
from semcached.service.semantic.types import (
    CategoryStats,
    FeedbackReport,
    FeedbackResult,
    Insert,
    InsertResult,
    Lookup,
    LookupResult,
    TenantQuota,
    Vector,
)
from semcached.service.semantic.vectors import VectorSource

__all__ = [
    "CategoryStats",
    "FeedbackReport",
    "FeedbackResult",
    "Insert",
    "InsertResult",
    "Lookup",
    "LookupResult",
    "OpenReport",
    "SemanticCache",
    "SnapshotStats",
    "TenantQuota",
]

log = logging.getLogger(__name__)

IndexFactory = Callable[[int], VectorIndex]  # dim -> a new empty index

_SHIPPED = frozenset({"deleted", "purged"})  # removals other daemons apply too


@dataclass(frozen=True, slots=True)
class _Decision:
    """A hit decision: ``document`` is the hit (None: a miss); ``score`` is what was
    compared with the threshold (the cosine, or the verifier's probability)."""

    similarity: float
    score: float
    document: Document | None
    verifier_score: float | None = None


def _verify_one(
    verifier: Verifier,
    cached: Document,
    query: str,
    similarity: float,
    query_tokens: bytes | None,
) -> float:
    """The verifier's probability for one candidate."""
    candidate = Candidate(
        cached=cached.prompt,
        query=query,
        cosine=similarity,
        cached_tokens=unpack_tokens(cached.tokens) if cached.tokens else None,
        query_tokens=None if query_tokens is None else unpack_tokens(query_tokens),
    )
    return float(verifier.verify([candidate])[0])


class SemanticCache:
    """The engine. Construct, ``await open()``, use, ``await close()``."""

    def __init__(
        self,
        *,
        store: DocumentStore,
        index_factory: IndexFactory,
        embedder: Embedder,
        categories: CategoryTable,
        dim: int,
        executor: Executor,
        search_executor: Executor | None = None,
        search_batches_in_flight: int = 1,
        eviction_factory: Callable[[], EvictionPolicy] | None = None,
        clock: Callable[[], float] = time.time,
        candidates: int = 8,
        sweep_interval_s: float = 1.0,
        sweep_batch: int = 1000,
        hit_flush_interval_s: float = 5.0,
        snapshots: SnapshotDirectory | None = None,
        snapshot_interval_s: float = 0.0,
        feedback: FeedbackBook | None = None,
        classifier: CategoryClassifier | None = None,
        verifier: Verifier | None = None,
        verification_off_reason: str | None = None,
        load: LoadBook | None = None,
    ) -> None:
        """``snapshots``: where index snapshots go (None: none, every start rebuilds);
        ``snapshot_interval_s``: how often changed indexes are snapshotted in the
        background (0: only at close); ``search_executor``: where index searches run
        (default ``executor``), batched per index by :class:`SearchBatcher`, with up to
        ``search_batches_in_flight`` batches of one index searching at once;
        ``feedback``: calibrated thresholds and lookup ids (default: kept in memory);
        ``classifier``: chooses the category of requests that name none (default: one
        over ``categories``' examples with default settings), loaded at open;
        ``verifier``: decides grey-band candidates (None: the threshold alone decides).
        It must have been built for ``embedder``'s model (ValueError otherwise): its
        scores mean nothing for another model's cosines; ``verification_off_reason``:
        why there is none, for the stats; ``load``: downstream models' reported load,
        which relaxes the similarity threshold and lengthens TTLs (default: with
        default settings)."""
        if verifier is not None and verifier.embedding_model != embedder.name:
            raise ValueError(
                f"the verifier {verifier.name} was built for {verifier.embedding_model}, "
                f"not {embedder.name}"
            )
        self.verifier = verifier
        self.verification_off_reason = None if verifier is not None else verification_off_reason
        self._tokens = embedder if isinstance(embedder, TokenSource) else None
        self._store = store
        self._index_factory = index_factory
        self._vectors = VectorSource(embedder, dim)
        self._categories = categories
        self.classifier = classifier or CategoryClassifier(embedder, categories)
        self.dim = dim
        self._executor = executor
        self._searches = SearchBatcher(
            search_executor or executor, max_in_flight=search_batches_in_flight
        )
        self._clock = clock
        self._candidates = candidates
        self._sweep_interval_s = sweep_interval_s
        self._sweep_batch = sweep_batch
        self._hit_flush_interval_s = hit_flush_interval_s
        self._feedback = feedback or FeedbackBook(categories)
        self.load = load or LoadBook(clock=clock)

        self._indexes: dict[tuple[str, str], VectorIndex] = {}
        self._table = EntryTable(categories, eviction_factory)
        self._entries = self._table.entries  # the same dict: lookups read it directly
        # Kept for the snapshot catalog's bound (data written when ids were sequential).
        self._next_id = 1
        self._maintenance: asyncio.Task[None] | None = None
        self._snapshots = SnapshotTracker(snapshots, executor)
        self._snapshot_interval_s = snapshot_interval_s
        self._snapshotter: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._expired_at_open: list[int] = []
        self._backlog_filler: asyncio.Task[None] | None = None
        self._making_room = asyncio.Lock()
        self.last_open: OpenReport | None = None
        # True from an insert refused for want of space until space is freed or an
        # insert fits again (what /readyz and the store-full gauge report).
        self.storage_full = False

    # -- lifecycle ---------------------------------------------------------------------

    async def open(self) -> None:
        """Restore the indexes (snapshots + LMDB) and bookkeeping; start background tasks."""
        # A restart creates an entry tuple per stored entry; with the cyclic collector
        # on, the collections those allocations trigger cost three times the work
        # itself (1.2 of 1.6 s at 1M entries, measured). Nothing restored is cyclic.
        collecting = gc.isenabled()
        gc.disable()
        try:
            restored = await restore(
                store=self._store,
                tracker=self._snapshots,
                index_factory=self._index_factory,
                dim=self.dim,
                now=self._clock(),
                account=self._table.restore_group,
                executor=self._executor,
            )
        finally:
            if collecting:
                gc.enable()
        self._indexes = restored.indexes
        self._next_id = restored.next_id
        self._expired_at_open = restored.expired
        report = self.last_open = restored.report
        log.info(
            "semantic cache: %d entries in %d indexes ready in %.2f s (%d indexes from "
            "snapshots, %d rebuilt; %d entries from snapshots, %d added from LMDB, "
            "%d removed; %d expired)",
            report.entries,
            len(self._indexes),
            report.seconds,
            report.indexes_loaded,
            report.indexes_rebuilt,
            report.entries_from_snapshot,
            report.entries_added,
            report.entries_removed,
            report.expired,
        )
        await self._feedback.open(self._executor, self._entries.__contains__)
        await self.classifier.load()
        self._stopping.clear()
        self._table.seal_restore()
        self._backlog_filler = asyncio.create_task(self._fill_backlog(), name="semantic-backlog")
        self._maintenance = asyncio.create_task(self._maintain(), name="semantic-maintenance")
        if self._snapshots.directory is not None and self._snapshot_interval_s > 0:
            self._snapshotter = asyncio.create_task(
                self._snapshot_periodically(), name="semantic-snapshots"
            )

    async def close(self) -> None:
        """Stop the background tasks, flush pending hit counts, snapshot changed indexes."""
        self._stopping.set()
        if self._snapshotter is not None:
            await self._snapshotter  # finishes a round under way rather than cut a save
            self._snapshotter = None
        for task in (self._maintenance, self._backlog_filler):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._maintenance = self._backlog_filler = None
        await self._flush_hits()
        await self.snapshot()

    async def snapshot(self) -> int:
        """Snapshot every index changed since its last snapshot; returns how many."""
        return await self._snapshots.save_changed(self._indexes, lambda: self._next_id)

    async def _snapshot_periodically(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self._snapshot_interval_s)
                return
            try:
                await self.snapshot()
            except Exception:
                log.exception("semantic cache snapshot round failed; retrying next round")

    # -- lookups -----------------------------------------------------------------------

    async def lookup(self, request: Lookup) -> LookupResult:
        given = self.classifier.given(request.category)
        if request.text is None and request.vector is None:
            raise BadRequestError(
                ErrorCode.MISSING_FIELD, "give text, vector or both", field="text"
            )
        now = self._clock()
        level = self.load.level(request.namespace, request.model)

        if request.text is not None:
            exact = self._exact(request, now)
            if exact is not None:
                self._table.counters(exact.category).hits += 1
                return exact
        if request.exact_only:
            return self._exact_miss(request, given)

        vector = await self._vectors.for_query(request.text, request.vector)
        # Only now, with the vector: the exact tier needs no category, and an unnamed
        # request is classified by the vector it had to compute anyway.
        choice = self.classifier.choose(given, vector)
        policy = choice.policy
        counters = self._table.counters(policy.name)
        index = self._indexes.get((request.namespace, policy.name))
        best: tuple[int, float] | None = None
        if index is not None and len(index):
            best = await self._best_candidate(index, vector, request, policy.name, now)
        decision = None if best is None else await self._decide(request, policy, *best, level)
        if decision is not None and decision.document is not None:
            document = decision.document
            counters.hits += 1
            self._table.record_hit(document.entry_id, policy.name, now)
            return LookupResult(
                hit=True,
                category=policy.name,
                similarity=decision.similarity,
                entry_id=document.entry_id,
                age_s=now - document.created_at,
                strategy="semantic",
                document=document,
                lookup_id=self._feedback.issue(
                    SignedLookup(
                        request.namespace,
                        policy.name,
                        document.entry_id,
                        decision.score,
                        False,
                        int(now),
                        verified=decision.verifier_score is not None,
                    )
                ),
                category_source=choice.source,
                category_confidence=choice.confidence,
                verifier_score=decision.verifier_score,
                load_level=level,
            )
        counters.misses += 1
        return LookupResult(
            hit=False,
            category=policy.name,
            similarity=None if best is None else best[1],
            category_source=choice.source,
            category_confidence=choice.confidence,
            verifier_score=None if decision is None else decision.verifier_score,
            load_level=level,
        )

    async def _decide(
        self,
        request: Lookup,
        policy: CategoryPolicy,
        entry_id: int,
        similarity: float,
        level: float,
    ) -> _Decision:
        """Whether the best candidate answers the lookup.

        Without verification (no verifier, the category opts out, or the request
        brings its own vector or threshold: those are cosines of the caller's making),
        its similarity must reach the threshold feedback calibrated. With it, the
        verifier's grey band ``[low, high)`` splits the similarity: from ``high`` (at
        least that threshold, so a strict category stays strict) it is a hit
        unverified, below ``low`` a miss, and in between a hit only if the verifier's
        probability reaches the category's verified threshold, also calibrated by
        feedback (on verified hits, apart from the others). Under load (``level``) the
        similarity threshold relaxes (:class:`LoadBook`); the grey band and the
        verifier's threshold do not.
        """
        threshold = self.load.threshold(
            policy,
            self._feedback.threshold(policy, entry_id, request.threshold),
            level,
            self._feedback.calibrator(policy),
            requested=request.threshold,
            score=similarity,
        )
        verifier = self.verifier
        if (
            verifier is None
            or not policy.verify
            or request.threshold is not None
            or request.vector is not None
            or request.text is None
        ):
            hit = similarity >= threshold
            return _Decision(similarity, similarity, self._store.get(entry_id) if hit else None)
        low, high = verifier.band
        if similarity >= max(high, threshold):
            return _Decision(similarity, similarity, self._store.get(entry_id))
        if similarity < max(low, policy.min_threshold):
            return _Decision(similarity, similarity, None)
        document = self._store.get(entry_id)
        if document is None:
            return _Decision(similarity, similarity, None)
        query_tokens = (
            None if self._tokens is None else (await self._tokens.tokens([request.text]))[0]
        )
        started = time.perf_counter()
        # On the loop, not a worker: the features are Python and hold the GIL, so a
        # thread would add a hand-off (measured 8 ms of queueing per candidate at 16
        # clients) and no parallelism. Bounded by max_tokens: 0.2 ms typical, ~1 ms
        # for two 64-token prompts.
        probability = _verify_one(verifier, document, request.text, similarity, query_tokens)
        counters = self._table.counters(policy.name)
        counters.verified += 1
        counters.verify_seconds += time.perf_counter() - started
        if probability < self._feedback.verified_threshold(policy):
            return _Decision(similarity, probability, None, verifier_score=probability)
        counters.verified_hits += 1
        return _Decision(similarity, probability, document, verifier_score=probability)

    async def lookup_many(self, requests: Sequence[Lookup]) -> list[LookupResult]:
        """Several lookups; text-only ones share model calls through the embedder's batching."""
        return list(await asyncio.gather(*(self.lookup(r) for r in requests)))

    def _exact_miss(self, request: Lookup, given: CategoryChoice | None) -> LookupResult:
        """An exact-only lookup the exact tier could not answer: a miss, with no vector
        to classify by (the category is the given one, else the default)."""
        if request.text is None:
            raise BadRequestError(
                ErrorCode.MISSING_FIELD, "exact_only needs the text", field="text"
            )
        choice = given or self.classifier.default()
        self._table.counters(choice.policy.name).misses += 1
        return LookupResult(hit=False, category=choice.policy.name, category_source=choice.source)

    def _exact(self, request: Lookup, now: float) -> LookupResult | None:
        assert request.text is not None
        entry_id = self._store.exact_lookup(
            exact_key(request.namespace, request.partition, request.text)
        )
        if entry_id is None:
            return None
        entry = self._entries.get(entry_id)
        if entry is None or CategoryPolicy.is_expired(entry.expires_at, now):
            return None
        document = self._store.get(entry_id)
        if document is None:
            return None
        self._table.record_hit(entry_id, entry.category, now)
        return LookupResult(
            hit=True,
            category=entry.category,
            similarity=1.0,
            entry_id=entry_id,
            age_s=now - document.created_at,
            strategy="exact",
            document=document,
            lookup_id=self._feedback.issue(
                SignedLookup(request.namespace, entry.category, entry_id, 1.0, True, int(now))
            ),
            category_source="entry",
        )

    async def _best_candidate(
        self, index: VectorIndex, vector: Vector, request: Lookup, category: str, now: float
    ) -> tuple[int, float] | None:
        """The most similar live entry of the request's partition, widening k if needed."""
        k = self._candidates
        while True:
            ids, sims = await self._searches.search(index, vector, k)
            for entry_id, similarity in zip(ids.tolist(), sims.tolist(), strict=True):
                entry = self._entries.get(entry_id)
                if (
                    entry is not None
                    and entry.partition == request.partition
                    and not CategoryPolicy.is_expired(entry.expires_at, now)
                ):
                    return entry_id, float(similarity)
            # Every candidate belonged to another partition or expired: look further,
            # up to the whole index (bounded: k at least doubles each round).
            if len(ids) < k or k >= len(index):
                return None
            k = min(k * 4, len(index))

    # -- inserts -----------------------------------------------------------------------

    async def insert(self, request: Insert) -> InsertResult:
        """Store an entry durably, index it, then evict while its category is over quota."""
        return (await self.insert_many([request]))[0]

    async def insert_many(self, requests: Sequence[Insert]) -> list[InsertResult]:
        given = [self.classifier.given(r.category) for r in requests]
        for r in requests:
            if not r.prompt:
                raise BadRequestError(
                    ErrorCode.INVALID_FIELD, "prompt must not be empty", field="prompt"
                )
            if r.ttl_s is not None and not (math.isfinite(r.ttl_s) and r.ttl_s > 0):
                raise BadRequestError(
                    ErrorCode.INVALID_FIELD, "ttl_s must be positive", field="ttl_s"
                )
        vectors = await self._vectors.for_inserts(requests)
        tokens = await self._tokens_for(requests)
        choices = [self.classifier.choose(g, v) for g, v in zip(given, vectors, strict=True)]
        now = self._clock()
        items: list[tuple[Document, Vector]] = []
        for request, choice, vector, packed in zip(requests, choices, vectors, tokens, strict=True):
            policy = choice.policy
            entry_id = self._new_id()
            document = Document(
                entry_id=entry_id,
                namespace=request.namespace,
                category=policy.name,
                partition=request.partition,
                model=request.model,
                prompt=request.prompt,
                response=request.response,
                response_format=request.response_format,
                created_at=now,
                expires_at=now
                + self.load.ttl(
                    policy, request.ttl_s, self.load.level(request.namespace, request.model)
                ),
                hit_count=0,
                last_hit_at=0.0,
                vector_dim=self.dim,
                tokens=packed or b"",
            )
            items.append((document, vector))
        quotas = {r.quota.tenant: r.quota for r in requests if r.quota is not None}
        await self._store_and_admit(items, quotas.values(), ship=True)
        return [
            InsertResult(d.entry_id, d.category, d.expires_at, c.source, c.confidence)
            for (d, _), c in zip(items, choices, strict=True)
        ]

    async def _store_and_admit(
        self,
        items: Sequence[tuple[Document, Vector]],
        quotas: Iterable[TenantQuota] = (),
        *,
        ship: bool,
    ) -> None:
        """Commit new entries, index them, then drop what they replace and evict
        while over quota. ``ship``: whether the commit goes to the shared tier's outbox."""
        replaced = [
            old
            for doc, _ in items
            if (
                old := self._store.exact_lookup(exact_key(doc.namespace, doc.partition, doc.prompt))
            )
            is not None
        ]
        await self._put_durably(items, ship=ship)
        await self._add_to_memory(items)
        try:
            # The same prompt inserted again replaces the older entry.
            stale = [i for i in replaced if i in self._entries]
            if stale:
                await self._remove(stale, reason="replaced")
            for category in {doc.category for doc, _ in items}:
                await self._enforce_quota(category)
            for quota in quotas:
                await self._enforce_tenant_quota(quota)
        except StoreFullError as exc:  # a full disk; the inserts are durable all the same
            log.warning("could not remove entries after an insert: %s", exc)

    # -- changes from other daemons (the shared tier) -----------------------------------

    async def apply_remote_puts(self, items: Sequence[tuple[Document, Vector]]) -> int:
        """Hold entries another daemon inserted, as if inserted here (but not shipped
        again); returns how many were new. Entries already held or already expired are
        skipped, so applying a change twice is harmless. Quotas are this daemon's own."""
        now = self._clock()
        fresh: dict[int, tuple[Document, Vector]] = {}
        for doc, vector in items:
            if doc.entry_id in self._entries or CategoryPolicy.is_expired(doc.expires_at, now):
                continue
            if vector.shape != (self.dim,):
                raise ValueError(f"entry {doc.entry_id} has a vector of another dimension")
            fresh[doc.entry_id] = (doc, vector)
        if fresh:
            await self._store_and_admit(list(fresh.values()), ship=False)
        return len(fresh)

    async def apply_remote_feedback(
        self, entry_id: int, category: str, score: float | None, correct: bool, verified: bool
    ) -> None:
        """Count a feedback report another daemon received (its calibration evidence;
        a wrong hit's entry is removed by the delete shipped with it)."""
        policy = self._categories.policies.get(category) or self._categories.resolve(None)
        await self._feedback.record(policy, entry_id, score, correct, verified=verified)

    async def apply_remote_deletes(self, entry_ids: Sequence[int]) -> int:
        """Remove entries another daemon deleted or purged (not shipped again)."""
        held = [i for i in entry_ids if i in self._entries]
        return await self._remove(held, reason="deleted", ship=False) if held else 0

    async def _tokens_for(self, requests: Sequence[Insert]) -> list[bytes | None]:
        """The packed token embeddings to keep with each new entry, for the verifier:
        those of prompts the daemon embedded (the embedder kept them from that call),
        none while there is no verifier or for prompts that came with a vector."""
        wanted = [i for i, r in enumerate(requests) if r.vector is None]
        out: list[bytes | None] = [None] * len(requests)
        if self.verifier is None or self._tokens is None or not wanted:
            return out
        found = await self._tokens.tokens([requests[i].prompt for i in wanted])
        for i, packed in zip(wanted, found, strict=True):
            out[i] = packed
        return out

    async def _put_durably(
        self, items: Sequence[tuple[Document, Vector]], *, ship: bool = False
    ) -> None:
        """Commit ``items`` to LMDB, evicting to make room while the store is full.

        One request makes room at a time, and tries again before it evicts, so that
        concurrent inserts that found the store full do not each evict for the others.
        """
        try:
            await run_blocking(
                self._executor, functools.partial(self._store.put_many, ship=ship), items
            )
            self.storage_full = False
            return
        except StoreFullError as exc:
            full = exc
        nbytes = sum(doc.size_bytes for doc, _ in items)
        if nbytes > self._store.capacity_bytes:
            raise self._refuse(
                "insert",
                f"the entries need {nbytes} bytes; the store holds at most "
                f"{self._store.capacity_bytes}",
                full,
            )
        async with self._making_room:
            while True:
                try:
                    await run_blocking(
                        self._executor, functools.partial(self._store.put_many, ship=ship), items
                    )
                    self.storage_full = False
                    return
                except StoreFullError as exc:
                    full = exc
                victims = self._table.victims_for_space(nbytes)
                if not victims:
                    raise self._refuse("insert", "nothing is left to evict", full)
                try:
                    await self._remove(victims, reason="evicted")
                except StoreFullError as exc:  # not even a delete fits: the disk is full
                    raise self._refuse("insert", "evicting failed too", exc) from None

    def _refuse(self, action: str, why: str, cause: StoreFullError) -> InsufficientStorageError:
        """The 507 answer to a write the full store could not take; marks it full."""
        self.storage_full = True
        log.warning("semantic cache refused to %s: %s (%s)", action, why, cause)
        where = "the filesystem is full" if cause.disk else "the store is at its size cap"
        return InsufficientStorageError(ErrorCode.STORE_FULL, f"{where}: {why}")

    def _new_id(self) -> int:
        """A random id, so that ids say nothing of when, or how many, entries were
        inserted by anyone (another tenant included).

        63 bits (every signed 64-bit integer type holds them), drawn again on the
        improbable collision with a live entry. What is not checked costs a chance of
        n / 2**63 per insert, n the ids at stake: inserts in flight, and ids a snapshot
        still holds for entries deleted since it was written (restore would keep the
        snapshot's vector) -- about 1e-13 with a million of them.
        """
        while True:
            entry_id = secrets.randbits(63)
            if entry_id and entry_id not in self._entries:
                return entry_id

    async def _add_to_memory(self, items: Sequence[tuple[Document, Vector]]) -> None:
        """Index and account entries already committed to LMDB."""
        by_index: dict[tuple[str, str], list[tuple[Document, Vector]]] = {}
        for doc, vec in items:
            by_index.setdefault((doc.namespace, doc.category), []).append((doc, vec))
        for key, group in by_index.items():
            index = self._indexes.get(key)
            if index is None:
                index = self._indexes[key] = self._index_factory(self.dim)
            ids = np.fromiter((d.entry_id for d, _ in group), dtype=np.uint64, count=len(group))
            try:
                await run_blocking(self._executor, index.add, ids, np.stack([v for _, v in group]))
            finally:
                self._snapshots.changed(key)
        for doc, _ in items:
            self._table.add(
                EntryMeta(
                    doc.entry_id,
                    doc.namespace,
                    doc.category,
                    doc.partition,
                    doc.created_at,
                    doc.expires_at,
                    doc.size_bytes,
                )
            )

    async def _fill_backlog(self, chunk: int = 1024) -> None:
        """Feed the restored entries to the expiry index and their eviction policies,
        ``chunk`` per loop turn, oldest first."""
        while self._table.backlog:
            self._table.fill_backlog(chunk)
            await asyncio.sleep(0)

    # -- removal -----------------------------------------------------------------------

    async def _enforce_quota(self, category: str) -> None:
        victims = self._table.victims(category)
        if victims:
            await self._remove(victims, reason="evicted")

    async def _enforce_tenant_quota(self, quota: TenantQuota) -> None:
        """Evict the tenant's oldest entries while it is over its quota."""
        if not (quota.max_entries or quota.max_bytes):
            return
        owned = [name for name in self._table.namespaces() if quota.owns(name)]
        victims = self._table.oldest_victims(owned, quota.max_entries, quota.max_bytes)
        if victims:
            await self._remove(victims, reason="evicted")

    def usage(self, owns: Callable[[str], bool]) -> tuple[int, int]:
        """Entries and bytes of the namespaces ``owns`` accepts (a tenant's usage)."""
        return self._table.usage([n for n in self._table.namespaces() if owns(n)])

    async def _remove(
        self, entry_ids: Sequence[int], *, reason: str, ship: bool | None = None
    ) -> int:
        """Remove entries from LMDB, then from every in-memory structure.

        Deletes and purges are shipped to the shared tier (``ship``, by default by
        ``reason``); evictions, expiries and replacements are each daemon's own.

        If LMDB cannot delete them all (:class:`StoreFullError`, a full disk), the ones
        it did delete are forgotten, evicted ones left are given back to their
        policies, and the error is raised.
        """
        ids = list(entry_ids)
        try:
            shipped = reason in _SHIPPED if ship is None else ship
            delete = functools.partial(self._store.delete_many, ship=shipped, at=self._clock())
            await run_blocking(self._executor, delete, ids)
        except StoreFullError:
            left = await run_blocking(self._executor, self._store.present, ids)
            await self._forget([i for i in ids if i not in left], reason)
            if reason == "evicted":
                self._table.readmit([i for i in ids if i in left])
            raise
        self.storage_full = False
        return await self._forget(ids, reason)

    async def _forget(self, entry_ids: Sequence[int], reason: str) -> int:
        """Drop entries deleted from LMDB from the table and the indexes."""
        by_index = self._table.remove(entry_ids, reason)
        for key, ids in by_index.items():
            index = self._indexes.get(key)
            if index is not None:
                try:
                    await run_blocking(
                        self._executor, index.remove, np.asarray(ids, dtype=np.uint64)
                    )
                finally:
                    self._snapshots.changed(key)
        return sum(map(len, by_index.values()))

    async def delete(self, entry_id: int) -> bool:
        """Remove one entry; False when there was none."""
        if entry_id not in self._entries:
            return False
        try:
            return await self._remove([entry_id], reason="deleted") == 1
        except StoreFullError as exc:  # deletes use the reserve: only a full disk gets here
            raise self._refuse("delete", "no room even to delete", exc) from None

    async def purge(
        self, namespace: str, category: str | None = None, partition: str | None = None
    ) -> int:
        """Remove every entry of a namespace, optionally only one category or partition."""
        if category is not None:
            category = self._categories.resolve(category).name
        ids = [
            entry_id
            for entry_id, e in self._entries.items()
            if e.namespace == namespace
            and (category is None or e.category == category)
            and (partition is None or e.partition == partition)
        ]
        if not ids:
            return 0
        try:
            return await self._remove(ids, reason="purged")
        except StoreFullError as exc:  # as in delete: only a full disk gets here
            raise self._refuse("purge", "no room even to delete", exc) from None

    async def feedback(
        self, report: FeedbackReport, owns: Callable[[str], bool]
    ) -> FeedbackResult | None:
        """Record whether a served hit was right; None when the lookup id or entry is
        unknown or in a namespace ``owns`` refuses (the caller's 404, never a 403).

        A report by lookup id of a semantic hit feeds its category's calibration once
        (a repeat counts nothing); by entry id, with no score, only the entry's own
        record. An entry reported wrong is deleted at once, durably.
        """
        score: float | None = None
        verified = False
        if report.lookup_id is not None:
            signed = self._feedback.resolve(report.lookup_id)
            if signed is None or not owns(signed.namespace):
                return None
            entry_id, name, verified = signed.entry_id, signed.category, signed.verified
            namespace = signed.namespace
            if not signed.exact and self._feedback.first_report(report.lookup_id):
                score = signed.score
        else:
            assert report.entry_id is not None
            entry_id = report.entry_id
            entry = self._entries.get(entry_id)
            if (
                entry is None
                or not owns(entry.namespace)
                or CategoryPolicy.is_expired(entry.expires_at, self._clock())
            ):
                return None
            name, namespace = entry.category, entry.namespace
        policy = self._categories.policies.get(name) or self._categories.resolve(None)
        removed = not report.correct and await self.delete(entry_id)
        try:
            await self._feedback.record(
                policy, entry_id, score, report.correct, verified=verified, share_in=namespace
            )
        except StoreFullError as exc:  # counted in memory; the next report persists it
            raise self._refuse("record feedback", "no room for the report", exc) from None
        if report.reason:
            log.info("feedback on entry %d (%s): %r", entry_id, name, report.reason[:200])
        return FeedbackResult(
            entry_id=entry_id,
            category=name,
            correct=report.correct,
            counted=score is not None,
            removed=removed,
            calibration=self._feedback.calibration(policy, verified=verified),
        )

    def calibrations(self) -> dict[str, Calibration]:
        """Each enabled category's calibrated threshold and the evidence behind it."""
        return self._feedback.calibrations()

    @property
    def token_bytes_held(self) -> int:
        """Bytes of recent prompts' token embeddings the embedder holds for the verifier."""
        return 0 if self._tokens is None else self._tokens.token_bytes_held

    def verified_calibrations(self) -> dict[str, Calibration]:
        """The same for verified hits (their score is the verifier's probability)."""
        return self._feedback.verified_calibrations()

    @property
    def feedback_confidence(self) -> float:
        """The confidence of the calibrations' upper bounds."""
        return self._feedback.confidence

    def feedback_reports(self) -> dict[tuple[str, bool], int]:
        """Reports received since start, by category and whether the hit was right."""
        return dict(self._feedback.reports)

    def get(self, entry_id: int) -> Document | None:
        """The stored entry, or None if absent or expired."""
        entry = self._entries.get(entry_id)
        if entry is None or CategoryPolicy.is_expired(entry.expires_at, self._clock()):
            return None
        return self._store.get(entry_id)

    # -- maintenance -------------------------------------------------------------------

    async def sweep_expired(self) -> int:
        """Remove up to one batch of expired entries; returns how many.

        The first call also deletes from LMDB what had expired when the cache opened.
        """
        if self._expired_at_open:
            await self._delete_expired_at_open()
        due = self._table.expired(self._clock(), self._sweep_batch)
        return await self._remove(due, reason="expired") if due else 0

    async def _delete_expired_at_open(self) -> None:
        """Delete from LMDB what had expired when the cache opened (never loaded)."""
        while self._expired_at_open:
            batch = self._expired_at_open[: self._sweep_batch]
            del self._expired_at_open[: len(batch)]  # before the await: sweeps may overlap
            await run_blocking(self._executor, self._store.delete_many, batch)

    async def _flush_hits(self) -> None:
        updates = self._table.take_hits()
        if not updates:
            return
        try:
            await run_blocking(self._executor, self._store.update_hits, updates)
        except StoreFullError as exc:  # hit counts are advisory: drop them, not the round
            log.info("dropped %d hit counts: %s", len(updates), exc)

    async def _maintain(self) -> None:
        last_flush = time.monotonic()
        while True:
            await asyncio.sleep(self._sweep_interval_s)
            try:
                swept = self._sweep_batch
                while swept == self._sweep_batch:  # a backlog: keep going between requests
                    swept = await self.sweep_expired()
                if time.monotonic() - last_flush >= self._hit_flush_interval_s:
                    await self._flush_hits()
                    last_flush = time.monotonic()
            except Exception:
                log.exception("semantic cache maintenance failed; retrying next round")

    # -- introspection -----------------------------------------------------------------

    def stats(self) -> dict[str, CategoryStats]:
        return self._table.stats()

    def search_stats(self) -> SearchStats:
        """Index search calls made and queries sent (their ratio: the mean batch)."""
        return self._searches.stats

    def snapshot_stats(self) -> SnapshotStats:
        """Index snapshots written and failed since start, and time spent on them."""
        return self._snapshots.stats

    @property
    def outbox(self) -> Outbox | None:
        """Where this engine's shipped changes wait (None: no shared tier)."""
        return self._store.outbox

    def __len__(self) -> int:
        return len(self._entries)
