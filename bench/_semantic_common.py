"""Shared pieces of the semantic cache benchmarks (bench/semantic_http.py, semantic_restart.py).

Not a benchmark itself. It holds what turns a synthetic data set (bench/_synthetic.py)
into a daemon's state, and an in-process engine:

- :func:`populate` — writes a daemon data directory in-process with the engine's own
  :class:`~semcached.index.docstore.DocumentStore` (large ``put_many`` batches), so the
  daemon finds it at start exactly as if its clients had inserted the entries;
- :func:`write_index_snapshot` — builds the daemon's HNSW index of those entries
  in-process with the engine's own index class and saves it as the data directory's
  snapshot, so the daemon starts from it instead of rebuilding; the snapshot's hnswlib
  file also serves the bare baseline (one build, where an index of 1M entries takes
  tens of minutes on two cores);
- :func:`embed_with_tokens` — MiniLM vectors and packed token embeddings of prompts
  through the daemon's own embedder, for stores whose entries the hit verifier reads
  (what an insert keeps in ``sem.tokens`` when verification is on);
- :func:`minilm_engine` — an in-process engine with MiniLM, for the benchmarks that
  need real embeddings but no HTTP (semantic_quality.py, the eviction trace);
  :func:`minilm_vectors` embeds texts ahead with the same settings.

The child server processes and the parsing of their ``/metrics`` are in bench/_server.py.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from _synthetic import CHUNK, DIM, Matrix

from semcached.cachepolicy.calibration import BANDS
from semcached.cachepolicy.categories import CategoryTable
from semcached.cachepolicy.token_codec import DEFAULT_MAX_TOKENS
from semcached.cachepolicy.verify import VERIFIER_MIN_THRESHOLD, Verifier
from semcached.index.datadir import DataDirectory
from semcached.index.docstore import Document, DocumentStore
from semcached.index.feedback import FeedbackStore
from semcached.index.hnsw import SNAPSHOT_KIND, HnswlibIndex
from semcached.index.lmdb_env import LmdbEnvironment
from semcached.index.snapshot import read_snapshot
from semcached.index.vector_index import VectorIndex
from semcached.service.config import EmbeddingSettings, VerificationSettings
from semcached.service.semantic.embedding import create_embedder
from semcached.service.semantic.embedding.base import TokenSource
from semcached.service.semantic.engine import SemanticCache
from semcached.service.semantic.feedback import FeedbackBook
from semcached.service.semantic.snapshots import SnapshotDirectory

NAMESPACE = "bench"
CATEGORY = "bench"
TTL_S = 30 * 86_400.0
GiB = 1 << 30


# -- the data directory ---------------------------------------------------------------------


def response_bytes(entry_id: int) -> bytes:
    return b'{"answer":"cached answer %d"}' % entry_id


def populate(
    data_dir: Path,
    vectors: Matrix,
    prompts: Sequence[str],
    batch: int = 8192,
    *,
    tokens: Sequence[bytes] = (),
) -> float:
    """Write ``len(vectors)`` entries (ids 1..n; row i is id i + 1) with the engine's store.

    The first ``len(prompts)`` entries carry those prompts; the rest ``synthetic prompt
    <id>``. The first ``len(tokens)`` entries also carry those packed token embeddings
    (:func:`embed_with_tokens`), as a daemon with verification on keeps them at insert;
    the rest none, as a daemon with it off. Returns the seconds taken.
    """
    started = time.perf_counter()
    n = len(vectors)
    per_entry = 4 * DIM + 512 + (sum(map(len, tokens)) // n if n else 0)
    initial = max(64 << 20, 1 << math.ceil(math.log2(n * per_entry * 1.5)))
    directory = DataDirectory(data_dir, initial_map_bytes=initial, max_map_bytes=64 * GiB)
    directory.open()
    try:
        store = DocumentStore(directory.env, group_commit=False)
        now = time.time()
        for lo in range(0, n, batch):
            hi = min(lo + batch, n)
            block = np.asarray(vectors[lo:hi])
            items = []
            for row in range(lo, hi):
                entry_id = row + 1
                prompt = prompts[row] if row < len(prompts) else f"synthetic prompt {entry_id}"
                doc = Document(
                    entry_id=entry_id,
                    namespace=NAMESPACE,
                    category=CATEGORY,
                    partition="",
                    model="",
                    prompt=prompt,
                    response=response_bytes(entry_id),
                    response_format="json",
                    created_at=now,
                    expires_at=now + TTL_S,
                    hit_count=0,
                    last_hit_at=0.0,
                    vector_dim=DIM,
                    tokens=tokens[row] if row < len(tokens) else b"",
                )
                items.append((doc, block[row - lo]))
            store.put_many(items)
    finally:
        directory.close()
    return time.perf_counter() - started


def write_index_snapshot(
    data_dir: Path, vectors: Matrix, *, m: int, ef_construction: int, threads: int = 2
) -> tuple[float, Path]:
    """Index ``vectors`` (ids 1..n, as :func:`populate` wrote them) and save the snapshot
    the daemon loads at start; return (build seconds, the snapshot's hnswlib file).

    The index is the engine's :class:`HnswlibIndex` with the daemon's parameters and
    the snapshot is written by the engine's own :class:`SnapshotDirectory`, so the
    daemon reconciles it with LMDB (finding nothing to add) as after any shutdown.
    The hnswlib part is plain ``save_index`` output, which ``load_index`` reads as is.
    """
    started = time.perf_counter()
    n = len(vectors)
    index = HnswlibIndex(
        DIM,
        m=m,
        ef_construction=ef_construction,
        ef_search=64,
        initial_capacity=n,
        num_threads=threads,
    )
    for lo in range(0, n, CHUNK):
        hi = min(lo + CHUNK, n)
        index.add(np.arange(lo + 1, hi + 1, dtype=np.uint64), np.asarray(vectors[lo:hi]))
    seconds = time.perf_counter() - started
    directory = _snapshots(data_dir)
    key = (NAMESPACE, CATEGORY)
    directory.save(key, index)
    directory.write_catalog([key], next_id=n + 1)
    return seconds, snapshot_hnsw_file(data_dir)


def _snapshots(data_dir: Path) -> SnapshotDirectory:
    return SnapshotDirectory(
        data_dir / "snapshots", lambda path, dim: HnswlibIndex.load(path, dim=dim)
    )


def snapshot_hnsw_file(data_dir: Path) -> Path:
    """The hnswlib file of the bench index's snapshot in ``data_dir`` (verified)."""
    path = _snapshots(data_dir).path_for((NAMESPACE, CATEGORY))
    _, parts = read_snapshot(path, kind=SNAPSHOT_KIND)
    return parts["hnsw"]


async def embed_with_tokens(
    texts: Sequence[str], *, max_tokens: int = DEFAULT_MAX_TOKENS, chunk: int = 256
) -> tuple[Matrix, list[bytes]]:
    """Unit MiniLM vectors of ``texts`` and their packed token embeddings (the first
    ``max_tokens``), both from one forward pass per text through the daemon's own
    embedder with its token cache on, as a daemon with verification on embeds them."""
    rows: list[Matrix] = []
    packed: list[bytes] = []
    with ThreadPoolExecutor(2) as executor:
        embedder = create_embedder(
            EmbeddingSettings(backend="minilm"),
            executor,
            token_cache_bytes=1 << 30,
            max_tokens=max_tokens,
        )
        if not isinstance(embedder, TokenSource):
            raise RuntimeError("the MiniLM embedder keeps no token embeddings")
        await embedder.open()
        try:
            for lo in range(0, len(texts), chunk):
                part = texts[lo : lo + chunk]
                rows.append(await embedder.embed(part))
                found = await embedder.tokens(part)  # kept by the call above: no second pass
                if any(p is None for p in found):
                    raise RuntimeError("the MiniLM embedder kept no token embeddings")
                packed += [p for p in found if p is not None]
        finally:
            await embedder.close()
    vectors = np.concatenate(rows) if rows else np.empty((0, DIM), dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.maximum(norms, 1e-12)).astype(np.float32), packed


def cache_key(size: int, *, texts: int, seed: int, centroids: int, m: int, efc: int) -> str:
    """The folder name under ``--cache`` of one size's data directory, vectors and index."""
    return f"n{size}-texts{texts}-seed{seed}-centroids{centroids}-m{m}-efc{efc}"


def minilm_settings(runtime: str = "onnx", *, threads: int = 0) -> EmbeddingSettings:
    """The embedding settings of :func:`minilm_engine`, one place for both it and
    :func:`minilm_vectors`, so that vectors embedded ahead match the engine's own.
    ``threads``: the model's intra-op threads (0: the daemon's default)."""
    return EmbeddingSettings(
        backend="minilm",
        runtime="torch" if runtime == "torch" else "onnx",
        onnx_int8=runtime == "onnx-int8",
        torch_threads=threads,
    )


async def minilm_vectors(
    texts: Sequence[str], *, runtime: str = "onnx", threads: int = 1, chunk: int = 256
) -> Matrix:
    """Unit vectors of ``texts`` from the embedder :func:`minilm_engine` uses (same
    settings), for benchmarks that replay many requests of few distinct texts: each
    text is embedded once here and its vector sent with every request."""
    rows: list[Matrix] = []
    with ThreadPoolExecutor(1, thread_name_prefix="bench-embed") as executor:
        embedder = create_embedder(
            minilm_settings(runtime, threads=threads),
            executor,
            token_cache_bytes=0,
            max_tokens=VerificationSettings().max_tokens,
        )
        await embedder.open()
        try:
            for lo in range(0, len(texts), chunk):
                rows.append(np.asarray(await embedder.embed(texts[lo : lo + chunk])))
        finally:
            await embedder.close()
    vectors = np.concatenate(rows) if rows else np.empty((0, DIM), dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    unit: Matrix = (vectors / np.maximum(norms, 1e-12)).astype(np.float32)
    return unit


@contextlib.asynccontextmanager
async def minilm_engine(
    workdir: Path,
    categories: CategoryTable,
    *,
    threads: int = 2,
    verifier: Verifier | None = None,
    runtime: str = "onnx",
) -> AsyncIterator[SemanticCache]:
    """An open in-process :class:`SemanticCache` embedding with MiniLM, its LMDB under
    ``workdir``, HNSW at M=16, ef_construction 200, ef_search 128, and ``verifier``
    judging its grey band (with the daemon's default token settings); closed on exit.
    ``runtime``: ``onnx`` (the default), ``onnx-int8`` or ``torch``."""
    executor = ThreadPoolExecutor(threads, thread_name_prefix="bench")
    env = LmdbEnvironment(workdir / "lmdb", initial_map_bytes=64 << 20, max_map_bytes=4 << 30)
    tokens = VerificationSettings()
    embedder = create_embedder(
        minilm_settings(runtime),
        executor,
        token_cache_bytes=tokens.token_cache_bytes if verifier is not None else 0,
        max_tokens=tokens.max_tokens,
    )
    await embedder.open()

    def new_index(dim: int) -> VectorIndex:
        return HnswlibIndex(dim, m=16, ef_construction=200, ef_search=128)

    engine = SemanticCache(
        store=DocumentStore(env),
        index_factory=new_index,
        embedder=embedder,
        categories=categories,
        dim=embedder.dim,
        executor=executor,
        verifier=verifier,
        feedback=FeedbackBook(
            categories,
            FeedbackStore(env, bands=BANDS),
            verifier_threshold=VERIFIER_MIN_THRESHOLD if verifier is None else verifier.threshold,
        ),
    )
    await engine.open()
    try:
        yield engine
    finally:
        await engine.close()
        await embedder.close()
        env.close()
        executor.shutdown()


def write_config(path: Path, threshold: float) -> Path:
    """A settings file with the bench category: the threshold, quotas above any size."""
    path.write_text(
        f"[categories.{CATEGORY}]\n"
        f"threshold = {threshold}\nmin_threshold = -1.0\nmax_threshold = 1.0\n"
        f"ttl_s = {TTL_S}\nmax_entries = 100000000\nmax_bytes = {1 << 40}\n"
    )
    return path
