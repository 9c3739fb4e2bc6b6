"""Semantic index search: hnswlib, faiss-cpu and faiss-gpu side by side, recall@1 vs exact.

    python bench/vector_search.py                          # 1M entries, 384-d
    python bench/vector_search.py --n 200000 --queries 1000
    python bench/vector_search.py --n 5000 --queries 200   # a smoke run

One run, one table. The data are the clustered synthetic vectors of the semantic
benchmarks (bench/_synthetic.py: topic centres made anisotropic like sentence
embeddings, Zipf-like topic popularity, a spread per topic; unit rows), because real
embeddings cluster and uniform random vectors make every index look worse (and every
neighbour equally far) than it is. Queries (``--queries``): half noisy copies of stored
entries (hits, cosine 0.86 to 1 to their source), half fresh draws of the mixture.

Each backend is the product's own class, built as the daemon builds it
(``index.backend``, service/semantic/component.py):

- **hnswlib** (CPU): ``HnswlibIndex`` with the daemon's M, ef_construction, ef_search
  (``IndexSettings`` defaults unless given); a search call uses one thread;
- **faiss-cpu**: ``FaissIndex`` (exact flat inner product), one OpenMP thread per call
  as in the daemon;
- **faiss-gpu**: ``FaissIndex(gpu=0)`` on CUDA device 0, when faiss sees one (its build
  is the ``faiss-gpu`` extra); otherwise a line says there is none.

Throughput: each of ``--batch`` sizes, ``--threads`` callers (default: one per core, as
the daemon's search pool) each search their share of the queries in calls of that many
rows at once; queries/s is all queries over the wall time, the best of ``--repeats``.
A GPU index serialises its calls, as in the daemon. Recall@1: the share of queries
whose top-1 is the exact top-1 (numpy in blocks of float32 products, independent of
faiss), counting a tie of similarity (within 1e-6) as right. Build: seconds to add all
entries (hnswlib with one thread per core).

The issue's goal (#16): at batch >= 16, faiss-gpu at least 5x hnswlib's queries/s at
recall >= 0.99. An hnswlib index of 1M entries takes about half an hour to build on two
cores; use ``--n`` to fit the time you have.
"""

from __future__ import annotations

import argparse
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from _synthetic import Mixture, normalise, vector_queries

from semcached.index.faiss_index import FaissIndex, gpu_count
from semcached.index.hnsw import HnswlibIndex
from semcached.index.vector_index import VectorIndex
from semcached.service.config import IndexSettings

Matrix = np.ndarray


@dataclass(slots=True)
class Row:
    backend: str
    batch: int
    build_s: float
    qps: float
    recall: float


def make_data(n: int, dim: int, queries: int, centroids: int, seed: int) -> tuple[Matrix, Matrix]:
    mixture = Mixture.create(centroids, seed, dim)
    vectors = np.empty((n, dim), dtype=np.float32)
    chunk = 65_536
    for i, lo in enumerate(range(0, n, chunk)):
        hi = min(lo + chunk, n)
        vectors[lo:hi] = mixture.draw(hi - lo, np.random.default_rng([seed, 1, i]))
    q, _ = vector_queries(vectors, 0, queries, mixture, seed)
    return vectors, normalise(q)


def exact_top1(vectors: Matrix, queries: Matrix, block: int = 65_536) -> tuple[Matrix, Matrix]:
    """Row and similarity of each query's nearest vector: numpy, blocks of ``block`` rows."""
    best = np.full(len(queries), -np.inf, dtype=np.float32)
    where = np.zeros(len(queries), dtype=np.int64)
    for lo in range(0, len(vectors), block):
        sims = queries @ vectors[lo : lo + block].T
        top = sims.argmax(axis=1)
        value = sims[np.arange(len(queries)), top]
        better = value > best
        best[better], where[better] = value[better], top[better] + lo
    return where, best


def build(factory: Callable[[], VectorIndex], vectors: Matrix) -> tuple[VectorIndex, float]:
    index = factory()
    started = time.perf_counter()
    for lo in range(0, len(vectors), 65_536):
        chunk = vectors[lo : lo + 65_536]
        index.add(np.arange(lo, lo + len(chunk), dtype=np.uint64), chunk)
    return index, time.perf_counter() - started


def measure(
    index: VectorIndex, queries: Matrix, batch: int, threads: int, repeats: int
) -> tuple[float, Matrix, Matrix]:
    """Queries/s (best of ``repeats``) and each query's top-1 id and similarity."""
    ids = np.zeros(len(queries), dtype=np.int64)
    sims = np.zeros(len(queries), dtype=np.float32)
    shares = np.array_split(np.arange(len(queries)), threads)

    def caller(rows: Matrix) -> None:
        for lo in range(0, len(rows), batch):
            part = rows[lo : lo + batch]
            for row, (found, sim) in zip(part, index.search(queries[part], 1), strict=True):
                ids[row], sims[row] = int(found[0]), float(sim[0])

    best = 0.0
    for _ in range(repeats):
        workers = [threading.Thread(target=caller, args=(s,)) for s in shares if len(s)]
        started = time.perf_counter()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        best = max(best, len(queries) / (time.perf_counter() - started))
    return best, ids, sims


def recall_at_1(ids: Matrix, sims: Matrix, exact_ids: Matrix, exact_sims: Matrix) -> float:
    right = (ids == exact_ids) | (sims >= exact_sims - 1e-6)
    return float(right.mean())


def main(argv: list[str] | None = None) -> list[Row]:
    defaults = IndexSettings()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=1_000_000, help="entries")
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--batch", type=int, nargs="+", default=[1, 16, 256])
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="callers")
    p.add_argument("--repeats", type=int, default=2, help="timed runs; the best is kept")
    p.add_argument("--centroids", type=int, default=4096)
    p.add_argument("--m", type=int, default=defaults.hnsw_m)
    p.add_argument("--ef-construction", type=int, default=defaults.hnsw_ef_construction)
    p.add_argument("--ef-search", type=int, default=defaults.hnsw_ef_search)
    p.add_argument("--skip", nargs="*", default=[], choices=["hnswlib", "faiss-cpu", "faiss-gpu"])
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)

    started = time.perf_counter()
    vectors, queries = make_data(a.n, a.dim, a.queries, a.centroids, a.seed)
    exact_ids, exact_sims = exact_top1(vectors, queries)
    print(
        f"{a.n} entries of dim {a.dim}, {a.queries} queries, {a.threads} caller threads; "
        f"data and exact top-1 (numpy) in {time.perf_counter() - started:.1f} s",
        flush=True,
    )
    cores = max(1, os.cpu_count() or 1)
    backends: list[tuple[str, Callable[[], VectorIndex]]] = []
    if "hnswlib" not in a.skip:
        backends.append(
            (
                f"hnswlib (CPU, M={a.m}, ef_search={a.ef_search})",
                lambda: HnswlibIndex(
                    a.dim,
                    m=a.m,
                    ef_construction=a.ef_construction,
                    ef_search=a.ef_search,
                    initial_capacity=a.n,
                    num_threads=cores,
                ),
            )
        )
    if "faiss-cpu" not in a.skip:
        backends.append(("faiss-cpu (flat)", lambda: FaissIndex(a.dim)))
    gpus = gpu_count()
    if "faiss-gpu" not in a.skip and gpus:
        backends.append(("faiss-gpu (flat, device 0)", lambda: FaissIndex(a.dim, gpu=0)))

    rows: list[Row] = []
    for name, factory in backends:
        index, build_s = build(factory, vectors)
        for batch in a.batch:
            qps, ids, sims = measure(index, queries, batch, a.threads, a.repeats)
            recall = recall_at_1(ids, sims, exact_ids, exact_sims)
            rows.append(Row(name, batch, build_s, qps, recall))
            print(f"  {name}, batch {batch}: {qps:.0f} queries/s", flush=True)
        del index

    print()
    print("| backend | batch | build s | queries/s | recall@1 |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r.backend} | {r.batch} | {r.build_s:.1f} | {r.qps:,.0f} | {r.recall:.4f} |")
    if "faiss-gpu" not in a.skip and not gpus:
        print("\nfaiss-gpu: no rows: faiss sees no GPU here (needs the `faiss-gpu` extra and a "
              "CUDA device)")  # fmt: skip
    hnsw = {r.batch: r.qps for r in rows if r.backend.startswith("hnswlib")}
    for r in rows:
        if r.backend.startswith("faiss-gpu") and r.batch >= 16 and r.batch in hnsw:
            ratio = r.qps / hnsw[r.batch]
            ok = ratio >= 5 and r.recall >= 0.99
            print(f"goal at batch {r.batch}: {ratio:.1f}x hnswlib, recall {r.recall:.4f}: "
                  f"{'met' if ok else 'NOT met'}")  # fmt: skip
    return rows


if __name__ == "__main__":
    main()
