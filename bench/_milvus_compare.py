"""Local-replica HNSW vs the Milvus backend: build time, single-query latency, recall@1.

    python bench/_milvus_compare.py                        # 100k entries, 384-d, milvus-lite
    python bench/_milvus_compare.py --n 5000 --queries 200 # a smoke run
    python bench/_milvus_compare.py --uri http://milvus:19530 --token root:Milvus

The two ways a deployment can hold the semantic index (docs/milvus.md):

- **local HNSW**: ``HnswlibIndex`` with the daemon's defaults (``IndexSettings``: M,
  ef_construction, ef_search; adds on one thread per core), every sidecar holding
  every vector in its own memory;
- **Milvus**: ``MilvusIndex`` as ``index.backend = "milvus"`` builds it (HNSW with
  the same M / ef, COSINE, Strong consistency). Without ``--uri`` that is milvus-lite
  3.x, the pure-Python engine, running inside this process behind its loopback gRPC
  server: it measures the backend's code path and milvus-lite, not a Milvus cluster
  (whose C++ segments answer far faster, one network hop away); the table says which.

Data: the clustered synthetic vectors of bench/vector_search.py (its generator and
its numpy exact top-1). Build: seconds to add every entry in batches of 4096 (the
daemon's rebuild batch), then for Milvus a flush and the wait until every segment is
indexed (``settle s``; milvus-lite compacts segments and builds their indexes in a
background thread, searching unindexed ones by brute force meanwhile, see ``_settle``).
Latency: each query alone (``search(q, 1)``), one caller, p50 / p99 over all queries
after 20 warm-up ones.
Recall@1: the share of queries whose top-1 is the exact top-1 (a tie within 1e-6 counts).

``compare()`` returns the rows, for bench/scale_out.py; ``main()`` prints the table.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from vector_search import exact_top1, make_data, recall_at_1

from semcached.index.hnsw import HnswlibIndex
from semcached.index.milvus_index import MilvusIndex, is_local_uri, stop_local_server
from semcached.index.vector_index import VectorIndex
from semcached.service.config import IndexSettings

__all__ = ["Row", "compare", "main"]

Matrix = np.ndarray
_ADD_BATCH = 4096


@dataclass(frozen=True, slots=True)
class Row:
    backend: str
    n: int
    build_s: float  # adding every entry
    settle_s: float  # after the adds, until the index is fully built (Milvus only)
    p50_ms: float
    p99_ms: float
    recall: float


def _milvus_version() -> str:
    try:
        from importlib.metadata import version

        return version("milvus-lite")
    except Exception:  # pragma: no cover - shown in the title only
        return "?"


def _add_all(index: VectorIndex, vectors: Matrix) -> float:
    started = time.perf_counter()
    for lo in range(0, len(vectors), _ADD_BATCH):
        chunk = vectors[lo : lo + _ADD_BATCH]
        index.add(np.arange(lo, lo + len(chunk), dtype=np.uint64), chunk)
    return time.perf_counter() - started


def _settle(index: MilvusIndex, timeout_s: float) -> float:
    """Flush, then wait until the collection is fully indexed; the seconds it took.

    A Milvus server reports the rows it has not indexed yet (``pending_index_rows``).
    milvus-lite 3.2 reports every index as finished at all times, while its background
    thread still compacts segments and builds their HNSW indexes; for a local database
    this waits on that thread itself, through milvus-lite's private API (bench only).
    """
    started = time.perf_counter()
    index.flush()
    if is_local_uri(index.uri):
        from milvus_lite.server_manager import server_manager_instance

        _, db, _ = server_manager_instance._servers[str(Path(index.uri).resolve())]
        collection = db.get_collection(index.collection)
        for _ in range(2):  # a compaction may queue another
            collection._wait_for_bg(timeout=timeout_s)
        return time.perf_counter() - started
    quiet = 0
    while quiet < 2 and time.perf_counter() - started < timeout_s:
        quiet = quiet + 1 if index.pending_index_rows() == 0 else 0
        time.sleep(1.0)
    return time.perf_counter() - started


def _latencies(index: VectorIndex, queries: Matrix) -> tuple[Matrix, Matrix, Matrix]:
    """Each query alone: seconds, top-1 id and similarity. 20 warm-up queries first."""
    for q in queries[:20]:
        index.search(q[None], 1)
    seconds = np.zeros(len(queries))
    ids = np.zeros(len(queries), dtype=np.int64)
    sims = np.zeros(len(queries), dtype=np.float32)
    for i, q in enumerate(queries):
        started = time.perf_counter()
        ((found, sim),) = index.search(q[None], 1)
        seconds[i] = time.perf_counter() - started
        ids[i], sims[i] = int(found[0]), float(sim[0])
    return seconds, ids, sims


def compare(
    n: int = 100_000,
    dim: int = 384,
    queries: int = 1000,
    *,
    uri: str | None = None,
    token: str = "",
    centroids: int = 4096,
    seed: int = 0,
    settle_timeout_s: float = 900.0,
    skip: tuple[str, ...] = (),
    log: Callable[[str], None] | None = print,
) -> list[Row]:
    """Rows for local HNSW and the Milvus backend on the same data and queries.

    ``uri``: a Milvus server (``http://host:19530``), or None for a milvus-lite
    database in a temporary directory (removed afterwards). The collection is dropped
    at the end either way. ``skip``: ``"hnswlib"`` and/or ``"milvus"``.
    """
    say = log or (lambda _: None)
    defaults = IndexSettings()
    started = time.perf_counter()
    vectors, probe = make_data(n, dim, queries, centroids, seed)
    exact_ids, exact_sims = exact_top1(vectors, probe)
    say(f"{n} entries of dim {dim}, {queries} queries: data and exact top-1 "
        f"in {time.perf_counter() - started:.1f} s")  # fmt: skip
    rows: list[Row] = []

    def measure(name: str, index: VectorIndex, build_s: float, settle_s: float) -> None:
        seconds, ids, sims = _latencies(index, probe)
        p50, p99 = np.percentile(seconds, [50, 99]) * 1000
        rows.append(
            Row(name, n, build_s, settle_s, p50, p99, recall_at_1(ids, sims, exact_ids, exact_sims))
        )
        say(f"  {name}: build {build_s:.1f} s, p50 {p50:.2f} ms, p99 {p99:.2f} ms")

    if "hnswlib" not in skip:
        hnsw = HnswlibIndex(
            dim,
            m=defaults.hnsw_m,
            ef_construction=defaults.hnsw_ef_construction,
            ef_search=defaults.hnsw_ef_search,
            initial_capacity=n,
            num_threads=max(1, os.cpu_count() or 1),
        )
        measure(f"local HNSW (hnswlib, M={defaults.hnsw_m}, ef={defaults.hnsw_ef_search})",
                hnsw, _add_all(hnsw, vectors), 0.0)  # fmt: skip
        del hnsw

    if "milvus" not in skip:
        scratch = None if uri is not None else tempfile.mkdtemp(prefix="semcached-milvus-bench-")
        where = uri if uri is not None else os.path.join(scratch or "", "bench.db")
        what = (
            f"milvus-lite {_milvus_version()} in-process"
            if is_local_uri(where)
            else f"Milvus {where}"
        )
        index = MilvusIndex(
            dim,
            uri=where,
            token=token,
            m=defaults.hnsw_m,
            ef_construction=defaults.hnsw_ef_construction,
            ef_search=defaults.hnsw_ef_search,
            flush_rows=1024 if is_local_uri(where) else 0,
        )
        try:
            build_s = _add_all(index, vectors)
            say(f"  Milvus: {n} added in {build_s:.1f} s; waiting for its index")
            settle_s = _settle(index, settle_timeout_s)
            measure(f"Milvus backend ({what}, HNSW M={defaults.hnsw_m}, "
                    f"ef={defaults.hnsw_ef_search})", index, build_s, settle_s)  # fmt: skip
        finally:
            index.drop()
            index.close()
            stop_local_server(where)
            if scratch is not None:
                shutil.rmtree(scratch, ignore_errors=True)
    return rows


def table(rows: list[Row], title: str) -> str:
    lines = [
        title,
        "",
        "| backend | entries | build s | index settle s | p50 ms | p99 ms | recall@1 |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r.backend} | {r.n:,} | {r.build_s:.1f} | {r.settle_s:.1f} | {r.p50_ms:.2f} "
        f"| {r.p99_ms:.2f} | {r.recall:.4f} |"
        for r in rows
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[Row]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=100_000, help="entries")
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--centroids", type=int, default=4096)
    p.add_argument("--uri", default=None, help="a Milvus server; default: milvus-lite, temporary")
    p.add_argument("--token", default="")
    p.add_argument("--skip", nargs="*", default=[], choices=["hnswlib", "milvus"])
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    rows = compare(a.n, a.dim, a.queries, uri=a.uri, token=a.token, centroids=a.centroids,
                   seed=a.seed, skip=tuple(a.skip))  # fmt: skip
    where = "milvus-lite, in-process, pure Python" if a.uri is None else f"Milvus at {a.uri}"
    print()
    print(table(rows, f"Local HNSW vs Milvus backend ({where}): single-query latency, "
                      f"recall@1 vs exact, {a.n:,} x {a.dim}-d clustered vectors"))  # fmt: skip
    return rows


if __name__ == "__main__":
    main()
