"""Restart: time from ``semcached serve`` to ``/readyz`` 200, beside hnswlib's load_index.

    python bench/semantic_restart.py                    # 100k and 1M entries
    python bench/semantic_restart.py --quick            # 100k only: the routine run
    python bench/semantic_restart.py --sizes 5000       # a smoke run
    python bench/semantic_restart.py --sizes 1000000 --rebuild-max 0 --cache /tmp/bc --csv F

For each size the script writes a data directory in-process with the engine's own
DocumentStore (the clustered synthetic vectors of bench/_semantic_common.py, dimension
384, embedding backend ``none``), then measures:

- **bare load_index**: ``hnswlib.Index.load_index`` of an index of the same vectors
  with the same parameters (M, ef_construction), built and saved by this script; the
  best of ``--repeats`` loads in this process (the file is in the page cache, as the
  daemon's LMDB is);
- **bare server**: the same load in a fresh process (bench/_bare_server.py: Python,
  aiohttp and hnswlib imported, index loaded, listening), process start to ``/readyz``;
- **semcached, rebuild start** (sizes up to ``--rebuild-max``): process start to
  ``/readyz`` 200 (polled every 10 ms) on the fresh data directory — the engine
  rebuilds its indexes from LMDB; then **shutdown**: SIGTERM to exit, writing the HNSW
  snapshots (``<data_dir>/snapshots`` exists afterwards);
- larger sizes skip the rebuild (tens of minutes at 1M on two cores): the script builds
  the index in-process with the engine's own index class and saves it as the data
  directory's snapshot (bench/_semantic_common.py: ``write_index_snapshot``), and the
  bare baseline loads that snapshot's hnswlib file; the daemon starts on it once and
  is shut down;
- with ``--cache DIR``, a size above ``--rebuild-max`` that bench/semantic_http.py
  ``--cache DIR`` already built (same seed, centroids, M, ef_construction) starts from
  that data directory instead, and nothing is built;
- **semcached, start from snapshot**: start again: the engine loads the snapshot and
  reconciles it with LMDB (with ``--always-restart``, also when no snapshot exists).

Also the start of an empty data directory (the fixed cost of the interpreter, imports
and components), and each start's resident memory (``VmRSS``) once ready. The goal
(issue #20) is a start within 1.5x the bare ``load_index`` time. The daemon
runs with ``index.snapshot_interval_s = 0`` (snapshots only at shutdown) so no
background snapshot runs during the first start. The engine's own log line (entries,
indexes, seconds) is printed under the table.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import hnswlib
import numpy as np
from _figures import Figure, write_figures
from _semantic_common import (
    cache_key,
    populate,
    snapshot_hnsw_file,
    write_config,
    write_index_snapshot,
)
from _server import Server, running
from _synthetic import DIM, Mixture, synthetic_vectors

from semcached.service.config import IndexSettings


@dataclass(slots=True)
class Start:
    ready_s: float
    engine_line: str
    rss_bytes: int  # the daemon's VmRSS when /readyz first answered 200


@dataclass(slots=True)
class Result:
    size: int
    load_index_s: float
    bare_server_s: float
    first: Start  # on the fresh directory: a rebuild, or the bench-written snapshot
    rebuilt: bool
    shutdown_s: float
    exit_code: int
    snapshot_bytes: int | None  # None: no <data_dir>/snapshots after shutdown
    second: Start | None


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def settings(args: argparse.Namespace) -> dict[str, object]:
    return {
        "embedding.backend": "none",
        "embedding.dim": DIM,
        "index.hnsw_m": args.m,
        "index.hnsw_ef_construction": args.ef_construction,
        "index.snapshot_interval_s": 0,
        "server.access_log": False,
    }


def start(data_dir: Path, config: Path, args: argparse.Namespace) -> tuple[Server, Start]:
    """Start the daemon and wait for /readyz; the caller stops it."""
    server = Server.semcached(data_dir, config, settings(args))
    try:
        ready = server.wait_ready(timeout=args.timeout_s)
    except BaseException:
        server.stop()
        raise
    lines = [x.split("semantic cache: ", 1)[1] for x in server.lines if "semantic cache: " in x]
    return server, Start(ready, lines[-1] if lines else "(no engine log line)", rss(server))


def rss(server: Server) -> int:
    """The child's resident set size in bytes (0 where /proc cannot tell)."""
    try:
        status = Path(f"/proc/{server.proc.pid}/status").read_text()
    except OSError:
        return 0
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def bare_times(index_file: Path, args: argparse.Namespace) -> tuple[float, float]:
    """(best in-process load_index seconds, bare server process start to ready)."""
    loads = []
    for _ in range(args.repeats):
        index = hnswlib.Index(space="cosine", dim=DIM)
        started = time.perf_counter()
        index.load_index(str(index_file))
        loads.append(time.perf_counter() - started)
        del index
    bare = Server.bare(index_file, dim=DIM, ef=64, k=8, threshold=0.9, minilm=False)
    with running(bare):
        ready = bare.wait_ready(timeout=args.timeout_s)
    return min(loads), ready


def build_bare_index(vectors: np.memmap, path: Path, args: argparse.Namespace) -> None:
    index = hnswlib.Index(space="cosine", dim=DIM)
    index.init_index(
        max_elements=len(vectors),
        M=args.m,
        ef_construction=args.ef_construction,
        random_seed=100,
        allow_replace_deleted=True,
    )
    for lo in range(0, len(vectors), 65_536):
        block = np.asarray(vectors[lo : lo + 65_536])
        index.add_items(block, np.arange(lo + 1, lo + 1 + len(block)), num_threads=2)
    index.save_index(str(path))


def cached_data(size: int, args: argparse.Namespace) -> Path | None:
    """A data directory (with its index snapshot) semantic_http.py --cache left for this
    size and these index parameters, if there is one."""
    if args.cache is None or size <= args.rebuild_max:
        return None
    key = cache_key(
        size, texts=0, seed=args.seed, centroids=args.centroids, m=args.m, efc=args.ef_construction
    )
    pattern = key.replace("-texts0-", "-texts*-")
    for folder in sorted(args.cache.glob(pattern)):
        if (folder / "READY").exists():
            return folder / "data"
    return None


def run_size(size: int, work: Path, config: Path, args: argparse.Namespace) -> Result:
    if (data := cached_data(size, args)) is not None:
        log(f"{size}: starting from the data directory in {data}")
        bare = bare_times(snapshot_hnsw_file(data), args)
        return measure_starts(size, data, config, args, bare=bare, rebuild=False)
    root = work / f"n{size}"
    root.mkdir()
    try:
        vectors = np.lib.format.open_memmap(
            root / "vectors.npy", mode="w+", dtype=np.float32, shape=(size, DIM)
        )
        synthetic_vectors(vectors, 0, Mixture.create(args.centroids, args.seed), args.seed)
        log(f"{size}: writing the data directory")
        populate(root / "data", vectors, [])
        rebuild = size <= args.rebuild_max
        if rebuild:
            log(f"{size}: building and saving the bare hnswlib index")
            bare_file = root / "bare.hnsw"
            build_bare_index(vectors, bare_file, args)
        else:
            log(f"{size}: building the index and saving it as the daemon's snapshot")
            _, bare_file = write_index_snapshot(
                root / "data", vectors, m=args.m, ef_construction=args.ef_construction
            )
        del vectors
        (root / "vectors.npy").unlink()
        bare = bare_times(bare_file, args)
        return measure_starts(size, root / "data", config, args, bare=bare, rebuild=rebuild)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def measure_starts(
    size: int,
    data: Path,
    config: Path,
    args: argparse.Namespace,
    *,
    bare: tuple[float, float],
    rebuild: bool,
) -> Result:
    """The daemon's start, shutdown and (from its snapshot) second start on ``data``;
    ``bare``: (load_index seconds, bare server start seconds) of the same index."""
    load_s, bare_s = bare
    log(f"{size}: semcached first start ({'rebuild' if rebuild else 'from the snapshot'})")
    server, first = start(data, config, args)
    shutdown_s = server.stop(signal.SIGTERM, timeout=args.timeout_s)
    exit_code = server.proc.returncode
    snapshots = data / "snapshots"
    snapshot_bytes = dir_bytes(snapshots) if snapshots.is_dir() else None
    second = None
    if snapshot_bytes is not None or args.always_restart:
        log(f"{size}: semcached second start")
        server, second = start(data, config, args)
        server.stop(signal.SIGTERM, timeout=args.timeout_s)
    return Result(
        size,
        load_s,
        bare_s,
        first,
        rebuild,
        shutdown_s,
        exit_code,
        snapshot_bytes,
        second,
    )


def print_table(results: list[Result], empty: Start | None, csv: Path | None) -> None:
    print(
        "\n| entries | bare load_index s | bare server start s | semcached rebuild start s "
        "| shutdown s | snapshot MB | semcached start from snapshot s "
        "| fastest start / load_index (goal <= 1.5x) "
        "| fastest start / bare server start | RSS at ready MB |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    figures: list[Figure] = []
    for r in results:
        snap = "none" if r.snapshot_bytes is None else f"{r.snapshot_bytes / 1e6:.0f}"
        starts = [x.ready_s for x in (r.first, r.second) if x is not None]
        if r.rebuilt:  # the first start rebuilt; only the second is from a snapshot
            starts = starts[1:] or starts
        fastest = min(starts)
        rss_mb = max(x.rss_bytes for x in (r.first, r.second) if x is not None) / 1e6
        rebuild = f"{r.first.ready_s:.2f}" if r.rebuilt else "skipped (> --rebuild-max)"
        from_snapshot = (
            ", ".join(
                f"{x.ready_s:.2f}"
                for x in (r.first, r.second)
                if x is not None and not (r.rebuilt and x is r.first)
            )
            or "not run (no snapshot)"
        )
        ratio = fastest / r.load_index_s
        print(
            f"| {r.size} | {r.load_index_s:.2f} | {r.bare_server_s:.2f} "
            f"| {rebuild} | {r.shutdown_s:.2f} | {snap} | {from_snapshot} "
            f"| {ratio:.2f}x, {'met' if ratio <= 1.5 else 'missed'} "
            f"| {fastest / r.bare_server_s:.2f}x | {rss_mb:.0f} |"
        )
        figures += [
            Figure("semantic_restart", f"{r.size}", "start s vs load_index", fastest,
                   r.load_index_s, "lower"),
            Figure("semantic_restart", f"{r.size}", "start s vs bare server", fastest,
                   r.bare_server_s, "lower"),
        ]  # fmt: skip
    print("\nEngine log lines:")
    if empty is not None:
        print(f"- empty data directory: ready in {empty.ready_s:.2f} s; {empty.engine_line}")
    for r in results:
        print(f"- {r.size}, 1st start: {r.first.engine_line}")
        if r.second is not None:
            print(f"- {r.size}, 2nd start: {r.second.engine_line}")
        if r.exit_code:
            print(f"- {r.size}: the daemon exited with status {r.exit_code}")
    if csv is not None:
        write_figures(csv, figures)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    index = IndexSettings()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    p.add_argument("--quick", action="store_true", help="100k entries only: the routine run")
    p.add_argument(
        "--csv", type=Path, default=None, help="also write CSV lines (bench/_figures.py) here"
    )
    p.add_argument("--repeats", type=int, default=3, help="bare load_index runs (best kept)")
    p.add_argument(
        "--always-restart",
        action="store_true",
        help="start a second time even without a snapshot (a second rebuild)",
    )
    p.add_argument(
        "--rebuild-max",
        type=int,
        default=200_000,
        help="larger sizes start from a snapshot the script writes instead of a rebuild",
    )
    p.add_argument("--centroids", type=int, default=4096)
    p.add_argument("--m", type=int, default=index.hnsw_m)
    p.add_argument("--ef-construction", type=int, default=index.hnsw_ef_construction)
    p.add_argument("--timeout-s", type=float, default=7200.0, help="per start and shutdown")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", type=Path, default=None, help="scratch space (default: tmp)")
    p.add_argument(
        "--cache",
        type=Path,
        default=None,
        help="sizes above --rebuild-max start from the data directory and index that "
        "bench/semantic_http.py --cache left here, when there is one, instead of building",
    )
    args = p.parse_args(argv)
    if args.quick:
        args.sizes = [100_000]
    return args


@contextlib.contextmanager
def scratch(workdir: Path | None) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="semcached-restart-", dir=workdir))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # stop children on the way out
    print(
        f"# restart to ready: {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}, "
        f"M={args.m} ef_construction={args.ef_construction}, dim {DIM}"
    )
    results: list[Result] = []
    empty: Start | None = None
    with scratch(args.workdir) as work:
        config = write_config(work / "bench.toml", 0.9)
        try:
            server, empty = start(work / "empty", config, args)
            server.stop()
            for size in args.sizes:
                results.append(run_size(size, work, config, args))
        except KeyboardInterrupt:
            print("interrupted: the table holds what ran before", file=sys.stderr)
        except (RuntimeError, MemoryError, OSError) as exc:
            print(f"stopped: {type(exc).__name__}: {exc}", file=sys.stderr)
    print_table(results, empty, args.csv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
