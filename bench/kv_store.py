"""Chunk KV store throughput: HTTP and shared memory beside memcpy, and plan latency.

    python bench/kv_store.py            # 1, 4 and 16 MiB blobs
    python bench/kv_store.py --quick    # a smoke run (fewer blobs and repeats)
    python bench/kv_store.py --csv F    # also one CSV line per cell (bench/_figures.py)

Starts ``semcached serve`` on a fresh data directory (a model shaped so that a token
is 32 KiB of float16 KV) and measures, for each blob size, side by side in one run:

- **memcpy**: ``np.copyto`` of a blob-sized array into another (the baseline);
- **LMDB put**: the durable write alone, in-process (``KvDiskStore.write`` of one
  blob and its metadata: one transaction, one fsync), what every put pays;
- **HTTP PUT**: ``put_chunk(transfer="http")`` of distinct blobs with the sync client:
  the body upload, the daemon's durable LMDB commit (fsync) and its copy into the host
  tier;
- **shm PUT**: ``put_chunk(transfer="shm")``: the client stages the bytes in a file in
  /dev/shm and the daemon reads them from there (no socket); the same commit;
- **HTTP GET**: ``get_chunk(transfer="http")``: the daemon copies the blob out of the
  host tier and sends it; the client reads the whole body;
- **shm fetch**: the data path of the shared-memory read: with a handle in hand (as a
  plan gives it) and the segment mapped, ``np.copyto`` of every byte out of the
  read-only mapping into the caller's buffer (what an engine does to load the KV);
- **shm GET**: per blob, ``get_chunk(transfer="shm")`` (a request for a lease and a
  handle), the copy out, and the lease release (a second request);
- **shm via plan**: one ``plan`` for 8 chunks with ``shm`` (one request, one lease for
  all), the copy of each hit, one release: the per-prompt path.

MB/s is 10^6 bytes per second of blob data, from the median time per blob over
``--repeats`` rounds.

A second table puts the durable writes beside the machine's own durable-write
bandwidth (see bench/_durable.py), as bytes over the wall time of 16 distinct
blobs, the median of 3 rounds that each run every path (8 blobs, 1 round with
``--quick``): a plain write+fdatasync loop on the data directory's filesystem (the
baseline), ``dd`` with O_DIRECT|O_DSYNC, the in-process LMDB write from 1 and 4
threads, and HTTP PUT from 1, 4 and 8 client threads at once (concurrent puts share
LMDB commits: one fsync for several). Goal: HTTP PUT >= 0.7x write+fdatasync.

Then the plan latency for a 10-chunk prompt whose chunks have 5 stored variants each
(small blobs of the same model shape): the client-observed round trip (sync client),
the daemon's handler time (its request latency histogram), and ``KvCache.plan``
in-process on an engine holding the same variants. Goals: shm fetch ≥ 0.5x memcpy;
HTTP GET ≥ 1 GB/s at 16 MiB; plan ≤ 1 ms for 10 chunks.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

from _durable import dd_direct, fdatasync_loop, parallel_puts  # noqa: E402
from _figures import Figure, write_figures  # noqa: E402
from _server import Server, histogram, histogram_quantile, running  # noqa: E402

from semcached.cachepolicy.lru import LruPolicy  # noqa: E402
from semcached.clients import SemcachedClient, put_meta  # noqa: E402
from semcached.index.kv_disk import BlobWrite, KvDiskStore  # noqa: E402
from semcached.index.kv_meta import ModelSpec, VariantMeta  # noqa: E402
from semcached.index.lmdb_env import LmdbEnvironment  # noqa: E402
from semcached.protocol.keys import chunk_key, variant_key  # noqa: E402
from semcached.service.kv.engine import KvCache  # noqa: E402

MODEL = ModelSpec("bench-kv", layers=16, kv_heads=8, head_dim=64, alpha=1.0, tokenizer="bench")
DTYPE = "float16"
TOKEN_BYTES = MODEL.layers * 2 * MODEL.kv_heads * MODEL.head_dim * 2  # 32 KiB
MiB = 1 << 20
PLAN_METRIC = "semcached_http_request_duration_seconds"


def shape(tokens: int) -> tuple[int, ...]:
    return (MODEL.layers, 2, MODEL.kv_heads, tokens, MODEL.head_dim)


def key(size: int, i: int) -> bytes:
    return chunk_key(MODEL.name, MODEL.tokenizer, DTYPE, [size, i])


def write_config(path: Path) -> Path:
    path.write_text(
        "[kv]\nhost_bytes = 1073741824\ndisk_bytes = 4294967296\n"
        f'[kv_models."{MODEL.name}"]\nlayers = {MODEL.layers}\nkv_heads = {MODEL.kv_heads}\n'
        f'head_dim = {MODEL.head_dim}\ntokenizer = "{MODEL.tokenizer}"\n'
    )
    return path


def median_time(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def mbps(nbytes: int, seconds: float) -> float:
    return nbytes / seconds / 1e6


def throughput(
    client: SemcachedClient, workdir: Path, size_mib: int, blobs: int, repeats: int
) -> dict[str, float]:
    tokens = size_mib * MiB // TOKEN_BYTES
    nbytes = tokens * TOKEN_BYTES
    rng = np.random.default_rng(size_mib)
    data = [rng.integers(0, 2**16, size=nbytes // 2, dtype=np.uint16) for _ in range(blobs)]
    keys = [key(size_mib, i) for i in range(blobs)]
    out: dict[str, float] = {}

    dst = np.empty(nbytes // 2, dtype=np.uint16)
    out["memcpy"] = mbps(nbytes, median_time(lambda: np.copyto(dst, data[0]), repeats * blobs))

    # The durable write alone, in-process: what a put costs before any transport.
    env = LmdbEnvironment(workdir / f"lmdb-{size_mib}", initial_map_bytes=64 * MiB,
                          max_map_bytes=blobs * nbytes * 2 + 64 * MiB)  # fmt: skip
    store = KvDiskStore(env)
    lmdb_times = []
    for i in range(blobs):
        meta = bench_meta(keys[i], tokens)
        start = time.perf_counter()
        store.write([BlobWrite(meta.key, meta, data[i].data.cast("B"))])
        lmdb_times.append(time.perf_counter() - start)
    env.close()
    out["lmdb_put"] = mbps(nbytes, statistics.median(lmdb_times))

    for name, transfer in (("http_put", "http"), ("shm_put", "shm")):
        put_times = []
        meta = put_meta(MODEL.name, DTYPE, shape(tokens))
        for i in range(blobs):
            start = time.perf_counter()
            client.put_chunk(keys[i], data[i], meta, transfer=transfer)
            put_times.append(time.perf_counter() - start)
        out[name] = mbps(nbytes, statistics.median(put_times))

    def http_get(i: int) -> None:
        chunk = client.get_chunk(keys[i], transfer="http")
        assert len(chunk.data) == nbytes

    def shm_get(i: int) -> None:
        chunk = client.get_chunk(keys[i], transfer="shm")
        np.copyto(dst, np.frombuffer(chunk.data, dtype=np.uint16))
        assert chunk.lease is not None
        client.release_lease(chunk.lease.id)

    for name, fn in (("http_get", http_get), ("shm_get", shm_get)):
        fn(0)  # warm: connection, mapping
        times = [median_time(lambda i=i, fn=fn: fn(i), repeats) for i in range(blobs)]
        out[name] = mbps(nbytes, statistics.median(times))

    # The data path alone: the handle is in hand (a plan gave it), the segment mapped.
    held = [client.get_chunk(k, transfer="shm") for k in keys]
    times = [
        median_time(lambda c=c: np.copyto(dst, np.frombuffer(c.data, dtype=np.uint16)), repeats)
        for c in held
    ]
    out["shm_fetch"] = mbps(nbytes, statistics.median(times))
    for c in held:
        assert c.lease is not None
        client.release_lease(c.lease.id)
    del held

    per_plan = min(8, blobs)

    def via_plan() -> None:
        plan = client.plan(MODEL.name, keys[:per_plan], transfer="shm")
        for planned in plan.chunks:
            chunk = client.fetch(planned, plan.lease)
            np.copyto(dst, np.frombuffer(chunk.data, dtype=np.uint16))
        assert plan.lease is not None
        client.release_lease(plan.lease.id)

    via_plan()
    out["shm_plan"] = mbps(nbytes * per_plan, median_time(via_plan, repeats))
    for i in range(blobs):
        client.delete_chunk(keys[i])
    return out


def bench_meta(chunk: bytes, tokens: int) -> VariantMeta:
    return VariantMeta(
        chunk=chunk, variant=variant_key(()), model=MODEL.name, dtype=DTYPE,
        shape=shape(tokens), prefix=(), prefix_tokens=(), rope_base=0, rope={},
        inter=np.zeros(0, np.float32), intra=0.0,
        token_scores=np.zeros(tokens, np.float32), created_at=0.0,
    )  # fmt: skip


DURABLE = ("write_fsync", "dd_direct", "lmdb_c1", "lmdb_c4", "http_c1", "http_c4", "http_c8")


def durable(
    client: SemcachedClient,
    workdir: Path,
    data_dir: Path,
    size_mib: int,
    *,
    blobs: int,
    rounds: int,
) -> dict[str, float | None]:
    """MB/s of durable writes of ``blobs`` distinct blobs: the baselines, then puts; the
    median of ``rounds`` rounds, each running every path in turn (the disk's speed
    drifts, so each path sees the same drift)."""
    tokens = size_mib * MiB // TOKEN_BYTES
    nbytes = tokens * TOKEN_BYTES
    rng = np.random.default_rng(100 + size_mib)
    data = [rng.integers(0, 2**16, size=nbytes // 2, dtype=np.uint16) for _ in range(blobs)]
    total = nbytes * blobs
    meta = put_meta(MODEL.name, DTYPE, shape(tokens))
    runs: dict[str, list[float | None]] = {c: [] for c in DURABLE}
    for r in range(rounds):
        runs["write_fsync"].append(fdatasync_loop(data_dir, data))
        runs["dd_direct"].append(dd_direct(data_dir, nbytes, blobs))
        for threads in (1, 4):
            where = workdir / f"durable-{size_mib}-{threads}-{r}"
            env = LmdbEnvironment(where, initial_map_bytes=total * 2 + 64 * MiB,
                                  max_map_bytes=total * 2 + 64 * MiB)  # fmt: skip
            store = KvDiskStore(env)
            metas = [bench_meta(key(size_mib, 5000 + i), tokens) for i in range(blobs)]

            def write(i: int, store: KvDiskStore = store, metas: list[VariantMeta] = metas) -> None:
                store.write([BlobWrite(metas[i].key, metas[i], data[i].data.cast("B"))])

            runs[f"lmdb_c{threads}"].append(total / parallel_puts(write, blobs, threads) / 1e6)
            env.close()
            shutil.rmtree(where)
        for threads in (1, 4, 8):
            keys = [key(size_mib, 10000 * threads + i) for i in range(blobs)]

            def put(i: int, keys: list[bytes] = keys) -> None:
                client.put_chunk(keys[i], data[i], meta, transfer="http")

            runs[f"http_c{threads}"].append(total / parallel_puts(put, blobs, threads) / 1e6)
            for k in keys:
                client.delete_chunk(k)
    return {c: _median(values) for c, values in runs.items()}


def _median(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def plan_inputs(chunks: int, variants: int, tokens: int) -> list[tuple[VariantMeta, bytes]]:
    """``chunks`` chunks, each stored after ``variants`` different prefixes of the others."""
    rng = np.random.default_rng(7)
    keys = [key(0, 1000 + i) for i in range(chunks)]
    out = []
    for c, chunk in enumerate(keys):
        others = [k for k in keys if k != chunk]
        for v in range(variants):
            prefix = tuple(others[j] for j in rng.permutation(len(others))[: 1 + v])
            meta = VariantMeta(
                chunk=chunk, variant=variant_key(prefix), model=MODEL.name, dtype=DTYPE,
                shape=shape(tokens), prefix=prefix, prefix_tokens=tuple(tokens for _ in prefix),
                rope_base=c * tokens, rope={"theta": 10000.0},
                inter=rng.random(len(prefix)).astype(np.float32), intra=float(tokens),
                token_scores=rng.random(tokens).astype(np.float32), created_at=float(v),
            )  # fmt: skip
            out.append((meta, bytes(meta.nbytes)))
    return out


def plan_latency(
    client: SemcachedClient, server: Server, workdir: Path, repeats: int, tokens: int = 64
) -> tuple[list[float], tuple[float, float], list[float], dict[str, object]]:
    items = plan_inputs(chunks=10, variants=5, tokens=tokens)
    for meta, blob in items:
        put = put_meta(
            MODEL.name,
            DTYPE,
            meta.shape,
            prefix=meta.prefix,
            prefix_tokens=meta.prefix_tokens,
            rope_base=meta.rope_base,
            inter=meta.inter,
            intra=meta.intra,
            token_scores=meta.token_scores,
        )
        client.put_chunk(meta.chunk, blob, put)
    prompt = list(dict.fromkeys(meta.chunk for meta, _ in items))[::-1]  # a new order
    shown = client.plan(MODEL.name, prompt, start=12)  # with shm handles on this host
    example = dict(shown.raw)
    if shown.lease is not None:
        client.release_lease(shown.lease.id)
    before = server.get("/metrics").decode()
    http = []
    for _ in range(repeats):
        start = time.perf_counter()
        client.plan(MODEL.name, prompt, start=12, transfer="http")
        http.append(time.perf_counter() - start)
    after = server.get("/metrics").decode()
    labels = {"route": "/v1/kv/plan", "method": "POST"}
    h0, h1 = histogram(before, PLAN_METRIC, **labels), histogram(after, PLAN_METRIC, **labels)
    handler = (histogram_quantile(0.5, h0, h1), histogram_quantile(0.99, h0, h1))

    env = LmdbEnvironment(
        workdir / "plan-lmdb", initial_map_bytes=64 * MiB, max_map_bytes=MiB << 12
    )
    engine = KvCache(
        store=KvDiskStore(env), models={MODEL.name: MODEL}, disk_budget_bytes=1 << 32,
        host=None, eviction=LruPolicy, max_blob_bytes=1 << 30,
    )  # fmt: skip
    engine.open()
    for meta, blob in items:
        engine.put(meta, blob)
    inproc = []
    for _ in range(repeats):
        start = time.perf_counter()
        engine.plan(MODEL.name, prompt, start=12)
        inproc.append(time.perf_counter() - start)
    engine.close()
    env.close()
    return http, handler, inproc, example


def quantile(values: list[float], q: float) -> float:
    return float(np.quantile(np.array(values), q))


def print_durable(durables: dict[int, dict[str, float | None]], blobs: int) -> None:
    print(f"\nDurable writes (MB/s over {blobs} blobs; ratio to write_fsync in brackets; "
          "c<N>: N writers at once)")  # fmt: skip
    print(f"{'blob':>8} " + " ".join(f"{c:>15}" for c in DURABLE))
    for size, row in durables.items():
        base = row["write_fsync"] or 0.0
        cells = [f"{base:>15,.0f}"]
        for c in DURABLE[1:]:
            value = row[c]
            cells.append("n/a" if value is None else f"{value:>6,.0f} ({value / base:.2f}x)")
        print(f"{size:>5} MiB " + " ".join(f"{c:>15}" for c in cells))


def figures(
    rows: dict[int, dict[str, float]],
    columns: tuple[str, ...],
    durables: dict[int, dict[str, float | None]],
) -> list[Figure]:
    """The CSV lines: each throughput cell beside memcpy, each durable write beside the
    write+fdatasync loop."""
    out = [
        Figure("kv_store", f"{size} MiB {c}", "MB/s vs memcpy", row[c], row["memcpy"])
        for size, row in rows.items()
        for c in columns[1:]
    ]
    for size, durable_row in durables.items():
        base = durable_row["write_fsync"] or 0.0
        for c in DURABLE[1:]:
            value = durable_row[c]
            if value is not None:
                out.append(
                    Figure("kv_store", f"{size} MiB {c}", "MB/s vs write_fsync", value, base)
                )
    return out


def goals_met(
    rows: dict[int, dict[str, float]],
    handler: tuple[float, float],
    durables: dict[int, dict[str, float | None]],
) -> list[tuple[str, bool]]:
    goals = []
    largest = max(rows)
    goals.append(("shm fetch >= 0.5x memcpy (all sizes)",
                  all(r["shm_fetch"] >= 0.5 * r["memcpy"] for r in rows.values())))  # fmt: skip
    goals.append((f"HTTP GET >= 1 GB/s at {largest} MiB", rows[largest]["http_get"] >= 1000))
    goals.append(("plan <= 1 ms (daemon handler p50)", handler[0] <= 1e-3))
    row = durables[largest]
    best = max(row[c] or 0.0 for c in DURABLE if c.startswith("http"))
    base = row["write_fsync"] or 0.0
    direct = f"; {best / row['dd_direct']:.2f}x dd_direct" if row["dd_direct"] else ""
    goals.append((f"HTTP PUT >= 0.7x write_fsync at {largest} MiB "
                  f"(best {best / base:.2f}x{direct})", best >= 0.7 * base))  # fmt: skip
    return goals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 4, 16], help="MiB")
    parser.add_argument("--blobs", type=int, default=8, help="distinct blobs per size")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--plan-repeats", type=int, default=300)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--csv", type=Path, default=None,
                        help="also write one CSV line per cell to this file")  # fmt: skip
    parser.add_argument("--example", type=Path, help="write the example plan JSON here")
    args = parser.parse_args()
    if args.quick:
        args.sizes, args.blobs, args.repeats, args.plan_repeats = [1, 4], 3, 2, 30
    durable_blobs, rounds = (8, 1) if args.quick else (16, 3)

    with tempfile.TemporaryDirectory(prefix="kv-bench-") as tmp:
        workdir = Path(tmp)
        config = write_config(workdir / "semcached.toml")
        data_dir = workdir / "data"
        server = Server.semcached(
            data_dir, config,
            {"embedding.backend": "none", "server.access_log": False},
        )  # fmt: skip
        with running(server):
            server.wait_ready()
            assert server.url is not None
            with SemcachedClient(server.url, timeout_s=120.0) as client:
                rows = {size: throughput(client, workdir, size, args.blobs, args.repeats)
                        for size in args.sizes}  # fmt: skip
                durables = {
                    size: durable(client, workdir, data_dir, size, blobs=durable_blobs,
                                  rounds=rounds)
                    for size in args.sizes
                }  # fmt: skip
                http, handler, inproc, example = plan_latency(
                    client, server, workdir, args.plan_repeats
                )

    columns = ("memcpy", "lmdb_put", "http_put", "shm_put", "http_get", "shm_fetch", "shm_get",
               "shm_plan")  # fmt: skip
    print("\nKV blob throughput (MB/s; ratio to memcpy in brackets), median per blob")
    print(f"{'blob':>8} " + " ".join(f"{c:>18}" for c in columns))
    for size, row in rows.items():
        cells = [f"{row['memcpy']:>18,.0f}"]
        cells += [f"{row[c]:>9,.0f} ({row[c] / row['memcpy']:.2f}x)" for c in columns[1:]]
        print(f"{size:>5} MiB " + " ".join(f"{c:>18}" for c in cells))
    print_durable(durables, durable_blobs)
    print("\nPlan, 10 chunks x 5 stored variants each (ms)")
    print(f"{'path':>22} {'p50':>8} {'p90':>8} {'p99':>8}")
    for name, values in (("client round trip", http), ("KvCache.plan", inproc)):
        p = [quantile(values, q) * 1e3 for q in (0.5, 0.9, 0.99)]
        print(f"{name:>22} {p[0]:>8.3f} {p[1]:>8.3f} {p[2]:>8.3f}")
    print(f"{'daemon handler':>22} {handler[0] * 1e3:>8.3f} {'':>8} {handler[1] * 1e3:>8.3f}"
          "   (from its latency histogram: bucket-interpolated)")  # fmt: skip
    goals = goals_met(rows, handler, durables)
    print("\nGoals: " + "; ".join(f"{g}: {'met' if ok else 'missed'}" for g, ok in goals))
    if args.csv is not None:
        write_figures(args.csv, figures(rows, columns, durables))
    if args.example is not None:
        import orjson

        args.example.write_bytes(orjson.dumps(example, option=orjson.OPT_INDENT_2))
        print(f"example plan written to {args.example}")


if __name__ == "__main__":
    main()
