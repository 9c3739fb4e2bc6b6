"""Wiring the semantic cache into the daemon: components, shared state, metrics.

At set-up (:func:`install_semantic_cache`, called by the ``semantic`` route group with
the daemon's :class:`~semcached.service.context.DaemonContext`) two components are
registered behind the core's data directory: the embedding model (slow to load) and
the engine (loads its indexes from ``<data_dir>/snapshots`` and reconciles them with
LMDB, and embeds the categories' example prompts). Handlers reach the engine through
a :class:`Slot`, which answers 503 until the engine is open. A configuration reload
(SIGHUP) re-embeds the example prompts (:mod:`.classification`).
"""

from __future__ import annotations

import gc
import os
import re
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from semcached.cachepolicy.calibration import BANDS
from semcached.cachepolicy.verify import VERIFIER_MIN_THRESHOLD
from semcached.errors import ConfigError
from semcached.index.docstore import DocumentStore
from semcached.index.feedback import FeedbackStore
from semcached.index.hnsw import HnswlibIndex
from semcached.index.shared.outbox import Outbox
from semcached.index.vector_index import VectorIndex
from semcached.service.config import IndexSettings, Settings
from semcached.service.context import DaemonContext
from semcached.service.lifecycle import FunctionComponent, Slot
from semcached.service.semantic.classification import CategoryClassifier
from semcached.service.semantic.embedding import EmbeddingStats, create_embedder
from semcached.service.semantic.engine import SemanticCache
from semcached.service.semantic.feedback import FeedbackBook
from semcached.service.semantic.load import LoadBook
from semcached.service.semantic.snapshots import SnapshotDirectory
from semcached.service.semantic.verification import choose_verifier

__all__ = ["SemanticCollector", "index_backend", "install_semantic_cache", "milvus_uri"]


def index_backend(
    settings: IndexSettings, *, data_dir: Path | None = None
) -> tuple[Callable[[int], VectorIndex], Callable[[Path, int], VectorIndex]]:
    """The (new index, load snapshot) pair of ``settings.backend``.

    faiss is imported here, at start, so that a missing extra or a missing GPU is a
    startup error naming what to install (:class:`FaissUnavailableError`,
    :class:`GpuUnavailableError`), never a failure at the first insert; likewise
    pymilvus, and Milvus is connected to (:class:`MilvusUnavailableError`). A snapshot
    written by another backend is refused by its kind, and that index is rebuilt
    from LMDB (:mod:`.restore`), so switching backends loses no entry.
    ``data_dir`` places milvus-lite's default database (``<data_dir>/milvus.db``).
    """
    if settings.backend == "milvus":
        return _milvus_backend(settings, milvus_uri(settings, data_dir))
    if settings.backend == "hnswlib":

        def new_hnsw(dim: int) -> VectorIndex:
            return HnswlibIndex(
                dim,
                m=settings.hnsw_m,
                ef_construction=settings.hnsw_ef_construction,
                ef_search=settings.hnsw_ef_search,
                # Adds (a rebuild at start, insert_many) use every core; searches run
                # on one thread each and the search pool runs several at once.
                num_threads=max(1, os.cpu_count() or 1),
            )

        def load_hnsw(path: Path, dim: int) -> VectorIndex:
            return HnswlibIndex.load(path, dim=dim, ef_search=settings.hnsw_ef_search)

        return new_hnsw, load_hnsw
    from semcached.index.faiss_index import FaissIndex, import_faiss

    gpu = settings.backend == "faiss-gpu"
    try:
        import_faiss()
        if gpu:
            FaissIndex(1, gpu=True)  # fails now, with the reason, if there is no usable GPU
    except ConfigError as exc:
        raise type(exc)(f"index.backend = {settings.backend!r}: {exc}") from exc

    # One OpenMP thread per search call (FaissIndex's default): the search pool
    # already runs one batch per core.
    def new_faiss(dim: int) -> VectorIndex:
        return FaissIndex(dim, gpu=gpu)

    def load_faiss(path: Path, dim: int) -> VectorIndex:
        return FaissIndex.load(path, dim=dim, gpu=gpu)

    return new_faiss, load_faiss


def milvus_uri(settings: IndexSettings, data_dir: Path | None) -> str:
    """``index.milvus_uri``, or milvus-lite's database in the data directory."""
    if settings.milvus_uri:
        return settings.milvus_uri
    if data_dir is None:
        raise ConfigError("index.milvus_uri is empty and there is no data directory to use")
    return str(data_dir / "milvus.db")


def _milvus_backend(
    settings: IndexSettings, uri: str
) -> tuple[Callable[[int], VectorIndex], Callable[[Path, int], VectorIndex]]:
    from semcached.index.milvus_index import MilvusIndex, connect, is_local_uri

    prefix = settings.milvus_collection_prefix
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,200}", prefix):  # Milvus's rule for names
        raise ConfigError(
            f"index.milvus_collection_prefix {prefix!r}: Milvus collection names take letters, "
            "digits and underscores, and start with a letter or an underscore"
        )
    local = is_local_uri(uri)
    if local:  # milvus-lite creates the database, not the directory around it
        Path(uri).parent.mkdir(parents=True, exist_ok=True)
    try:  # at start: a missing extra or an unreachable Milvus stops the daemon here
        # One client for every index (gRPC channels are thread-safe); making an index
        # then costs no round trip, as the engine makes them on its event loop.
        client = connect(uri, token=settings.milvus_token, timeout_s=settings.milvus_timeout_s)
    except ConfigError as exc:
        raise type(exc)(f"index.backend = 'milvus': {exc}") from exc
    flush_rows = settings.milvus_flush_rows
    if flush_rows < 0:
        flush_rows = 1024 if local else 0
    token, ef_search, timeout_s = (
        settings.milvus_token,
        settings.hnsw_ef_search,
        settings.milvus_timeout_s,
    )

    def new_milvus(dim: int) -> VectorIndex:
        return MilvusIndex(
            dim,
            uri=uri,
            token=token,
            index_type=settings.milvus_index_type,
            m=settings.hnsw_m,
            ef_construction=settings.hnsw_ef_construction,
            ef_search=ef_search,
            flush_rows=flush_rows,
            timeout_s=timeout_s,
            prefix=prefix,
            client=client,
        )

    def load_milvus(path: Path, dim: int) -> VectorIndex:
        return MilvusIndex.load(
            path,
            dim=dim,
            uri=uri,
            token=token,
            ef_search=ef_search,
            flush_rows=flush_rows,
            timeout_s=timeout_s,
            client=client,
        )

    return new_milvus, load_milvus


def install_semantic_cache(daemon: DaemonContext) -> Slot[SemanticCache]:
    """Register the embedder and the engine as components; the slot the engine opens in."""
    settings = daemon.settings
    slot: Slot[SemanticCache] = Slot("semantic cache")
    embedding_stats = EmbeddingStats()
    verification = settings.verification
    embedder = create_embedder(
        settings.embedding,
        daemon.executor,
        stats=embedding_stats,
        token_cache_bytes=verification.token_cache_bytes if verification.enabled else 0,
        max_tokens=verification.max_tokens,
        model_cache_dir=settings.storage.data_dir / "models",
    )
    choice = choose_verifier(verification, settings.embedding, embedder.name)
    if choice.degraded and choice.reason is not None:
        daemon.components.readiness.degrade("verification", choice.reason)
    index_settings = settings.index
    new_index, load_index = index_backend(index_settings, data_dir=settings.storage.data_dir)
    # Searches get threads of their own, so that a slow LMDB commit or model call in
    # the shared pool never queues a lookup behind it.
    search_threads = max(1, os.cpu_count() or 1)
    searches = ThreadPoolExecutor(max_workers=search_threads, thread_name_prefix="semcached-search")
    # A GPU searches one batch at a time (faiss's GPU resources take one thread at a
    # time): while it runs, concurrent lookups queue and leave together as the next batch.
    batches_in_flight = 1 if index_settings.backend == "faiss-gpu" else search_threads

    shared = settings.shared

    async def open_engine() -> None:
        # With a shared tier, inserts and deletes also go to an outbox, in their own
        # transaction, for service.shared's shipper.
        outbox = (
            Outbox(daemon.data_dir.env, max_records=shared.outbox_max_records)
            if shared.redis_url and shared.semantic
            else None
        )
        engine = SemanticCache(
            store=DocumentStore(daemon.data_dir.env, outbox=outbox),
            index_factory=new_index,
            embedder=embedder,
            categories=settings.categories,
            dim=embedder.dim,
            executor=daemon.executor,
            search_executor=searches,
            search_batches_in_flight=batches_in_flight,
            candidates=settings.semantic.candidates,
            sweep_interval_s=settings.semantic.sweep_interval_s,
            snapshots=SnapshotDirectory(daemon.data_dir.path / "snapshots", load_index),
            snapshot_interval_s=index_settings.snapshot_interval_s,
            feedback=FeedbackBook(
                settings.categories,
                FeedbackStore(daemon.data_dir.env, bands=BANDS, outbox=outbox),
                verifier_threshold=(
                    VERIFIER_MIN_THRESHOLD if choice.verifier is None else choice.verifier.threshold
                ),
            ),
            classifier=CategoryClassifier(embedder, settings.categories, settings.classification),
            verifier=choice.verifier,
            verification_off_reason=choice.reason,
            load=LoadBook(
                settings.load.tracker(),
                targets=settings.load_target,
                max_models=settings.load.max_models,
            ),
        )
        await engine.open()
        # The restored bookkeeping lives as long as the daemon: move it out of the
        # cyclic collector's reach, so full collections do not walk a million entries
        # (a pause on the request path) to find nothing.
        gc.freeze()
        slot.set(engine)

    async def close_engine() -> None:
        engine = slot.get()
        slot.set(None)
        await engine.close()
        searches.shutdown(wait=True)
        if index_settings.backend == "milvus":  # after the last snapshot's descriptors
            from semcached.index.milvus_index import stop_local_server

            stop_local_server(milvus_uri(index_settings, settings.storage.data_dir))

    async def reload_examples(new: Settings) -> bool:
        if not slot.is_set:  # the engine embeds them when it opens
            return True
        return await slot.get().classifier.reload(new.categories, new.classification)

    async def reload_load(new: Settings) -> bool:
        if slot.is_set:  # else the engine opens with the new settings
            slot.get().load.configure(new.load.tracker(), new.load_target, new.load.max_models)
        return True

    daemon.reloads.add("category examples", reload_examples)
    daemon.reloads.add("load adaptation", reload_load)
    daemon.components.add(FunctionComponent("embedding model", embedder.open, embedder.close))
    daemon.components.add(FunctionComponent("semantic cache", open_engine, close_engine))
    daemon.components.readiness.watch_storage(
        "semantic", lambda: slot.is_set and slot.get().storage_full
    )
    daemon.registry.register(SemanticCollector(slot, embedding_stats))
    return slot


class SemanticCollector(Collector):
    """Exports the engine's own counters at scrape time (no second bookkeeping)."""

    def __init__(self, slot: Slot[SemanticCache], embedding: EmbeddingStats) -> None:
        self._slot = slot
        self._embedding = embedding

    def collect(self) -> Iterator[Metric]:
        yield from self._embedding_metrics()
        if not self._slot.is_set:
            return
        stats = self._slot.get().stats()
        lookups = CounterMetricFamily(
            "semcached_semantic_lookups",
            "Semantic cache lookups by category and result.",
            labels=["category", "result"],
        )
        entries = GaugeMetricFamily(
            "semcached_semantic_entries", "Entries cached, by category.", labels=["category"]
        )
        size = GaugeMetricFamily(
            "semcached_semantic_bytes",
            "Bytes counted against the category's quota.",
            labels=["category"],
        )
        removals = CounterMetricFamily(
            "semcached_semantic_removals",
            "Entries removed by the cache itself, by category and reason.",
            labels=["category", "reason"],
        )
        inserts = CounterMetricFamily(
            "semcached_semantic_inserts", "Entries inserted, by category.", labels=["category"]
        )
        for name, s in stats.items():
            lookups.add_metric([name, "hit"], s.hits)
            lookups.add_metric([name, "miss"], s.misses)
            entries.add_metric([name], s.entries)
            size.add_metric([name], s.bytes)
            removals.add_metric([name, "evicted"], s.evictions)
            removals.add_metric([name, "expired"], s.expirations)
            inserts.add_metric([name], s.inserts)
        yield from (lookups, entries, size, removals, inserts)
        searches = self._slot.get().search_stats()
        calls = CounterMetricFamily(
            "semcached_semantic_index_searches",
            "Index search calls; concurrent lookups of one index share one call.",
        )
        calls.add_metric([], searches.batches)
        queries = CounterMetricFamily(
            "semcached_semantic_index_queries", "Query vectors sent to index search calls."
        )
        queries.add_metric([], searches.queries)
        inline = CounterMetricFamily(
            "semcached_semantic_index_inline_searches",
            "Index search calls made on the event loop (a lone query of a fast, idle index).",
        )
        inline.add_metric([], searches.inline)
        yield from (calls, queries, inline)
        yield from self._feedback_metrics(self._slot.get())
        yield from self._classification_metrics(self._slot.get())
        yield from self._verification_metrics(self._slot.get())
        yield from self._load_metrics(self._slot.get())
        yield from self._restart_metrics(self._slot.get())

    @staticmethod
    def _feedback_metrics(engine: SemanticCache) -> Iterator[Metric]:
        threshold = GaugeMetricFamily(
            "semcached_semantic_threshold",
            "Score a semantic hit needs, by category, as feedback calibrated it.",
            labels=["category"],
        )
        estimate = GaugeMetricFamily(
            "semcached_semantic_false_hit_rate_estimate",
            "Wrong among reported hits at or above the threshold, by category "
            "(absent with no such report).",
            labels=["category"],
        )
        upper = GaugeMetricFamily(
            "semcached_semantic_false_hit_rate_upper_bound",
            f"Clopper-Pearson upper bound ({engine.feedback_confidence:.0%}) of that estimate.",
            labels=["category"],
        )
        observations = GaugeMetricFamily(
            "semcached_semantic_feedback_observations",
            "Reports on semantic hits the calibration keeps (windowed), by category.",
            labels=["category"],
        )
        for name, c in engine.calibrations().items():
            threshold.add_metric([name], c.threshold)
            observations.add_metric([name], c.observations)
            if c.estimate is not None and c.upper_bound is not None:
                estimate.add_metric([name], c.estimate)
                upper.add_metric([name], c.upper_bound)
        reports = CounterMetricFamily(
            "semcached_semantic_feedback_reports",
            "Feedback reports received, by category and whether the hit was right.",
            labels=["category", "correct"],
        )
        for (name, correct), count in sorted(engine.feedback_reports().items()):
            reports.add_metric([name, "true" if correct else "false"], count)
        yield from (threshold, estimate, upper, observations, reports)

    @staticmethod
    def _verification_metrics(engine: SemanticCache) -> Iterator[Metric]:
        enabled = GaugeMetricFamily(
            "semcached_semantic_verification_enabled",
            "1 while grey-band candidates are judged by the hit verifier.",
        )
        enabled.add_metric([], 0.0 if engine.verifier is None else 1.0)
        verdicts = CounterMetricFamily(
            "semcached_semantic_verifications",
            "Grey-band candidates the verifier judged, by category and verdict.",
            labels=["category", "verdict"],
        )
        seconds = CounterMetricFamily(
            "semcached_semantic_verify_seconds",
            "Time spent verifying candidates, by category.",
            labels=["category"],
        )
        for name, s in engine.stats().items():
            verdicts.add_metric([name, "hit"], s.verified_hits)
            verdicts.add_metric([name, "miss"], s.verified - s.verified_hits)
            seconds.add_metric([name], s.verify_seconds)
        threshold = GaugeMetricFamily(
            "semcached_semantic_verified_threshold",
            "Verifier probability a grey-band candidate needs, by category, as feedback "
            "on verified hits calibrated it.",
            labels=["category"],
        )
        upper = GaugeMetricFamily(
            "semcached_semantic_verified_false_hit_rate_upper_bound",
            f"Clopper-Pearson upper bound ({engine.feedback_confidence:.0%}) of the "
            "false-hit rate among verified hits above that threshold.",
            labels=["category"],
        )
        for name, c in engine.verified_calibrations().items():
            threshold.add_metric([name], c.threshold)
            if c.upper_bound is not None:
                upper.add_metric([name], c.upper_bound)
        yield from (enabled, verdicts, seconds, threshold, upper)

    @staticmethod
    def _classification_metrics(engine: SemanticCache) -> Iterator[Metric]:
        c = engine.classifier.stats
        classified = CounterMetricFamily(
            "semcached_semantic_classified",
            "Requests that named no category, by the nearest category by its examples and "
            "outcome: inferred (served under it) or below_floor (too unsure: served under "
            "default).",
            labels=["category", "outcome"],
        )
        for name, count in c.inferred.items():
            classified.add_metric([name, "inferred"], count)
        for name, count in c.below_floor.items():
            classified.add_metric([name, "below_floor"], count)
        unclassified = CounterMetricFamily(
            "semcached_semantic_unclassified",
            "Requests that named no category while classification was off (served under default).",
        )
        unclassified.add_metric([], c.unclassified)
        enabled = GaugeMetricFamily(
            "semcached_semantic_classification_enabled",
            "1 while requests that name no category are classified by example prompts.",
        )
        enabled.add_metric([], 1.0 if engine.classifier.current is not None else 0.0)
        reloads = CounterMetricFamily(
            "semcached_semantic_classification_reloads",
            "Reloads of the category examples, by outcome.",
            labels=["outcome"],
        )
        reloads.add_metric(["ok"], c.reloads - c.reload_failures)
        reloads.add_metric(["error"], c.reload_failures)
        yield from (classified, unclassified, enabled, reloads)

    @staticmethod
    def _load_metrics(engine: SemanticCache) -> Iterator[Metric]:
        level = GaugeMetricFamily(
            "semcached_semantic_load_level",
            "How far a downstream model's reported load relaxes its namespace's lookups (0 to 1).",
            labels=["namespace", "model"],
        )
        pressure = GaugeMetricFamily(
            "semcached_semantic_load_pressure",
            "A downstream model's smoothed load over its target (0 when stale).",
            labels=["namespace", "model"],
        )
        for m in engine.load.models():
            level.add_metric([m.namespace, m.model], m.level)
            pressure.add_metric([m.namespace, m.model], m.pressure)
        relaxed = CounterMetricFamily(
            "semcached_semantic_relaxed_lookups",
            "Lookups whose threshold a model's load lowered, by category.",
            labels=["category"],
        )
        hits = CounterMetricFamily(
            "semcached_semantic_relaxed_hits",
            "Hits that only the relaxed threshold made, by category.",
            labels=["category"],
        )
        for name, counts in sorted(engine.load.counts.items()):
            relaxed.add_metric([name], counts.relaxed_lookups)
            hits.add_metric([name], counts.relaxed_hits)
        yield from (level, pressure, relaxed, hits)

    @staticmethod
    def _restart_metrics(engine: SemanticCache) -> Iterator[Metric]:
        s = engine.snapshot_stats()
        snapshots = CounterMetricFamily(
            "semcached_semantic_snapshots",
            "Index snapshots written to disk, by outcome (one per index saved).",
            labels=["outcome"],
        )
        snapshots.add_metric(["ok"], s.written)
        snapshots.add_metric(["error"], s.failed)
        seconds = CounterMetricFamily(
            "semcached_semantic_snapshot_seconds", "Time spent writing index snapshots."
        )
        seconds.add_metric([], s.seconds)
        last = GaugeMetricFamily(
            "semcached_semantic_last_snapshot_timestamp_seconds",
            "Unix time of the last complete snapshot round (0: none since start).",
        )
        last.add_metric([], s.last_success_at)
        yield from (snapshots, seconds, last)
        report = engine.last_open
        if report is None:
            return
        open_seconds = GaugeMetricFamily(
            "semcached_semantic_open_seconds",
            "How long the last start took to restore the indexes and bookkeeping.",
        )
        open_seconds.add_metric([], report.seconds)
        open_entries = GaugeMetricFamily(
            "semcached_semantic_open_entries",
            "Entries restored at the last start, by where their vectors came from.",
            labels=["source"],
        )
        open_entries.add_metric(["snapshot"], report.entries_from_snapshot)
        open_entries.add_metric(["lmdb"], report.entries_added)
        open_indexes = GaugeMetricFamily(
            "semcached_semantic_open_indexes",
            "Indexes at the last start, by whether a snapshot was loaded or they were rebuilt.",
            labels=["outcome"],
        )
        open_indexes.add_metric(["loaded"], report.indexes_loaded)
        open_indexes.add_metric(["rebuilt"], report.indexes_rebuilt)
        yield from (open_seconds, open_entries, open_indexes)

    def _embedding_metrics(self) -> Iterator[Metric]:
        e = self._embedding
        texts = CounterMetricFamily(
            "semcached_embedding_texts",
            "Texts asked to be embedded, by whether the embedding cache had them.",
            labels=["cache"],
        )
        texts.add_metric(["hit"], e.cache_hits)
        texts.add_metric(["miss"], e.texts - e.cache_hits)
        calls = CounterMetricFamily(
            "semcached_embedding_model_calls",
            "Calls to the embedding model (one per micro-batch), by outcome.",
            labels=["outcome"],
        )
        calls.add_metric(["ok"], e.model_calls - e.model_errors)
        calls.add_metric(["error"], e.model_errors)
        seconds = CounterMetricFamily(
            "semcached_embedding_model_seconds", "Time spent in embedding model calls."
        )
        seconds.add_metric([], e.model_seconds)
        yield from (texts, calls, seconds)
