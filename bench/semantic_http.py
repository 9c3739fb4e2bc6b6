"""Semantic lookup latency and throughput over HTTP, beside a bare aiohttp + hnswlib server.

    python bench/semantic_http.py                      # 10k, 100k, 1M entries
    python bench/semantic_http.py --quick              # routine: 100k entries, vector-in
    python bench/semantic_http.py --smoke              # a smoke run at 5k entries
    python bench/semantic_http.py --quick --csv results.csv   # also one CSV line per row
    python bench/semantic_http.py --sizes 10000 100000 --concurrency 1 16 --duration-s 10
    python bench/semantic_http.py --sizes 10000 --verification both   # issue #15's check

Why one file of about 870 lines: it is one run's script, in sections (load generation,
recall, one size, output, command line) that all read one ``Options`` and fill one
``Report``; the parts other benches share live beside it: the synthetic data in
bench/_synthetic.py, data directories and snapshots in bench/_semantic_common.py, the
child servers and /metrics parsing in bench/_server.py, the baseline server in
bench/_bare_server.py, the aiohttp load generator in bench/_loadgen.py and the hit
verifier's comparison (counters and its table) in bench/_http_verification.py.

For each size the script writes a data directory in-process with the engine's own
DocumentStore (``put_many`` in large batches) and the engine's HNSW index of it as the
directory's snapshot (bench/_semantic_common.py: ``write_index_snapshot``), starts
``semcached serve`` on it (the daemon loads the snapshot) and, in the same run, the
baseline ``bench/_bare_server.py``: aiohttp + hnswlib with the very same HNSW graph (the
snapshot's hnswlib file), ef_search and k (``semantic.candidates``), the same
request/response JSON, and a minimal handler (parse, knn_query, threshold, answer). Both
listen on 127.0.0.1 with OS-chosen ports. The load generator runs in another process:
wrk with a Lua script cycling through the request bodies when wrk is installed
(``--client auto``), else ``bench/_loadgen.py`` (aiohttp, closed loop). Each
(concurrency, server) pair gets a 1 s warm-up, then ``--duration-s`` measured,
``--rounds`` times round-robin with the two servers alternating which goes first; the
fastest run of each pair is kept (the one least disturbed by a shared machine).

Measured, per size:

- client-side p50 / p99 and req/s, semcached beside the bare server (goals, issue
  #20: vector-in at least 1.0x the bare server's req/s at concurrency 16 and 0.9x at
  concurrency 1, at every size);
- server-side latency: semcached's own ``/metrics`` histogram
  ``semcached_http_request_duration_seconds{route="/v1/semantic/lookup"}`` (difference of
  two scrapes; quantiles interpolated inside buckets as Prometheus does, so only as
  fine as the buckets: 0.5, 0.75, 1, 1.5, 2, 3, 5 ms) and the bare server's exact
  handler times
  (goal: semcached p99 <= 2 ms at the largest size);
- hnswlib's query time alone (the same index, one query per call, one thread, in this
  process) and the overhead ratio: server-side mean time per lookup at the lowest
  concurrency over hnswlib's mean query time;
- recall of the hit decision against exact brute-force search (numpy over the same
  vectors): a query counts as right when "best similarity >= threshold" agrees with
  brute force and, on a hit, the entry id is brute force's (goal >= 0.99);
- text-in, the hit verifier's cost (issue #15: at most +10% on the mean server-side
  lookup time at the default configuration): ``--verification both`` (the default)
  runs two daemons side by side with the bare server, one with ``verification.enabled
  = false`` and one at the default configuration (verification on) on a copy of the
  data directory whose MiniLM entries carry their packed token embeddings (as its
  inserts would store them; the query's come from the lookup's own model call). For
  each: hit rate, share of lookups verified and mean time per verification (from the
  daemon's /metrics counters over the measured run), server-side mean / p50 / p99,
  client-side p50 / p99, and the added % of the mean over verification off.

Inputs: *vector-in* requests carry the vector (a JSON list, or base64 with ``--vector-
format base64``) to a daemon with embedding backend ``none``; *text-in* requests carry a
paraphrased or unseen prompt to a daemon with MiniLM and its embedding cache off (every
request runs the model; the baseline embeds one text per call in its thread pool). Text-
in runs the model on every request, so by default it runs only at sizes up to 100k
(``--text-sizes`` to change). The load generators take the request bodies in turn
from the first, and a text-in run gets through a few hundred, so the body file is
shuffled (seeded): any prefix holds paraphrases and unseen prompts in equal parts. The
data set — clustered synthetic vectors and template
prompts — is described in bench/_semantic_common.py; each store holds ``--text-entries``
MiniLM-embedded prompts (ids 1..T) and synthetic vectors after them. Caveat: in one
index the MiniLM prompts form a small island far from the synthetic vectors (cosine ~0),
and HNSW's greedy descent from a synthetic entry point can miss it, so at 100k text-in
recall drops for the bare server just as for semcached (0.84 measured): a property of
this mixed data set and of HNSW, not of semcached; compare the two recall columns.

Server-side times are comparable at concurrency 1 only: semcached's histogram runs
from its outermost middleware and so includes waiting for the event loop and the
worker pool, while the bare handler runs knn_query inline and its queueing happens
before the handler starts.

Memory: one float32 copy of the vectors in a memory-mapped file (1.5 GB at 1M x 384),
plus the daemon's and the bare server's indexes (~1.7 GB each at 1M) and, while the
bare index is built and timed, this process's copy.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import hnswlib
import numpy as np
import orjson
from _figures import Figure, write_figures
from _http_verification import (
    VERIFY_OFF,
    VERIFY_ON,
    Counts,
    LatencyRow,
    print_verification,
    variants,
)
from _semantic_common import (
    CATEGORY,
    NAMESPACE,
    cache_key,
    embed_with_tokens,
    populate,
    snapshot_hnsw_file,
    write_config,
    write_index_snapshot,
)
from _server import Server, histogram, histogram_quantile, running
from _synthetic import (
    DIM,
    MAX_TEXT_COMBOS,
    Matrix,
    Mixture,
    synthetic_vectors,
    text_prompts,
    vector_queries,
)
from numpy.typing import NDArray

from semcached.cachepolicy.token_codec import DEFAULT_MAX_TOKENS
from semcached.service.config import IndexSettings, SemanticSettings

ROUTE = "/v1/semantic/lookup"
METRIC = "semcached_http_request_duration_seconds"
WRK_SCRIPT = """
local bodies = {}
local n = 0
function init(args)
  for line in io.lines(args[1]) do
    n = n + 1
    bodies[n] = wrk.format("POST", nil, {["Content-Type"] = "application/json"}, line)
  end
end
local i = 0
function request()
  i = i % n + 1
  return bodies[i]
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT %d %d %.1f %.1f %d %d\\n", summary.requests,
    summary.duration, latency:percentile(50), latency:percentile(99), e.status,
    e.connect + e.read + e.write + e.timeout))
end
"""


@dataclass(frozen=True, slots=True)
class Load:
    """One measured run: client side (wrk or the aiohttp generator) and server side."""

    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    server_p50_ms: float
    server_p99_ms: float
    server_mean_ms: float
    counts: Counts | None = None  # semcached's lookups and verifications in the run


@dataclass(frozen=True, slots=True)
class Row:
    size: int
    mode: str
    concurrency: int
    server: str
    load: Load


@dataclass(slots=True)
class Report:
    rows: list[Row] = field(default_factory=list)
    overhead: list[tuple[int, str, NDArray[np.float64]]] = field(default_factory=list)
    recall: list[tuple[int, str, str, int, int, float, float]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- load generation ------------------------------------------------------------------------


def _client(choice: str) -> str:
    if choice == "auto":
        return "wrk" if shutil.which("wrk") else "aiohttp"
    if choice == "wrk" and not shutil.which("wrk"):
        raise SystemExit("--client wrk: wrk is not installed (apt-get install wrk)")
    return choice


def generate_load(
    client: str, url: str, bodies: Path, *, concurrency: int, seconds: float, work: Path
) -> tuple[float, float, float, int]:
    """(req/s, p50 ms, p99 ms, errors) of one closed-loop run from another process."""
    if client == "wrk":
        script = work / "lookup.lua"
        script.write_text(WRK_SCRIPT)
        out = subprocess.run(
            [
                "wrk",
                "-t1",
                f"-c{concurrency}",
                f"-d{max(1, round(seconds))}s",
                "--timeout",
                "10s",
                "-s",
                str(script),
                url + ROUTE,
                "--",
                str(bodies),
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        line = next(x for x in out.splitlines() if x.startswith("RESULT"))
        requests, duration_us, p50, p99, status, sock = (float(x) for x in line.split()[1:])
        return requests / (duration_us / 1e6), p50 / 1e3, p99 / 1e3, int(status + sock)
    out = subprocess.run(
        [
            sys.executable,
            str(Path(__file__).with_name("_loadgen.py")),
            url + ROUTE,
            str(bodies),
            "--concurrency",
            str(concurrency),
            "--duration-s",
            str(seconds),
            "--warmup-s",
            "0",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    r = orjson.loads(out.splitlines()[-1])
    return r["requests"] / r["seconds"], r["p50_us"] / 1e3, r["p99_us"] / 1e3, int(r["errors"])


def _sum_count(text: str) -> tuple[float, float]:
    total = count = 0.0
    for line in text.splitlines():
        if line.startswith(METRIC) and f'route="{ROUTE}"' in line and 'method="POST"' in line:
            if line.startswith(METRIC + "_sum"):
                total = float(line.rsplit(" ", 1)[1])
            elif line.startswith(METRIC + "_count"):
                count = float(line.rsplit(" ", 1)[1])
    return total, count


def measure(server: Server, bodies: Path, concurrency: int, opts: Options) -> Load:
    assert server.url is not None
    generate_load(
        opts.client, server.url, bodies, concurrency=concurrency, seconds=1.0, work=opts.work
    )  # warm-up
    if server.name == "bare":
        server.http.request("POST", server.url + "/bench/reset")
    else:
        before = server.get("/metrics").decode()
    counts = None
    rps, p50, p99, errors = generate_load(
        opts.client,
        server.url,
        bodies,
        concurrency=concurrency,
        seconds=opts.duration_s,
        work=opts.work,
    )
    if server.name == "bare":
        t = orjson.loads(server.get("/bench/timings"))
        sp50, sp99, mean = t["p50"] * 1e3, t["p99"] * 1e3, t["mean"] * 1e3
    else:
        after = server.get("/metrics").decode()
        labels = {"route": ROUTE, "method": "POST"}
        h0, h1 = histogram(before, METRIC, **labels), histogram(after, METRIC, **labels)
        sp50 = histogram_quantile(0.50, h0, h1) * 1e3
        sp99 = histogram_quantile(0.99, h0, h1) * 1e3
        (s0, c0), (s1, c1) = _sum_count(before), _sum_count(after)
        mean = (s1 - s0) / max(c1 - c0, 1) * 1e3
        counts = Counts.between(before, after, CATEGORY)
    return Load(rps, p50, p99, errors, sp50, sp99, mean, counts)


# -- recall ------------------------------------------------------------------------------------


def brute_force(vectors: Matrix, queries: Matrix) -> tuple[Matrix, NDArray[np.int64]]:
    """Exact best similarity and entry id (row + 1) of every query."""
    best = np.full(len(queries), -np.inf, dtype=np.float32)
    arg = np.zeros(len(queries), dtype=np.int64)
    q = np.ascontiguousarray(queries.T)
    for lo in range(0, len(vectors), 16_384):
        sims = np.asarray(vectors[lo : lo + 16_384]) @ q
        rows = sims.argmax(axis=0)
        top = sims[rows, np.arange(len(queries))]
        better = top > best
        best[better] = top[better]
        arg[better] = lo + rows[better]
    return best, arg + 1


def answers(server: Server, bodies: Sequence[bytes]) -> list[tuple[bool, int | None]]:
    """Each query's (hit, entry id), asked once, 8 at a time."""
    assert server.url is not None
    url = server.url + ROUTE

    def ask(body: bytes) -> tuple[bool, int | None]:
        response = server.http.request(
            "POST", url, body=body, headers={"Content-Type": "application/json"}
        )
        if response.status != 200:
            raise RuntimeError(f"{server.name}: {response.status} {response.data[:200]!r}")
        result = orjson.loads(response.data)
        return bool(result["hit"]), result.get("entry_id")

    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(ask, bodies))


def recall(
    got: list[tuple[bool, int | None]], best: Matrix, ids: NDArray[np.int64], threshold: float
) -> float:
    right = 0
    for (hit, entry_id), sim, exact_id in zip(got, best.tolist(), ids.tolist(), strict=True):
        exact_hit = sim >= threshold
        right += hit == exact_hit and (not hit or entry_id == exact_id)
    return right / len(got)


# -- per size ------------------------------------------------------------------------------------


@dataclass(slots=True)
class Options:
    sizes: list[int]
    text_sizes: list[int]
    concurrency: list[int]
    duration_s: float
    rounds: int
    queries: int
    text_queries: int
    text_entries: int
    centroids: int
    threshold: float
    m: int
    ef_construction: int
    ef_search: int
    candidates: int
    vector_format: str
    verification: str
    access_log: bool
    client: str
    seed: int
    work: Path
    cache: Path | None
    csv: Path | None = None


@dataclass(slots=True)
class Texts:
    stored: list[str]
    asked: list[str]
    stored_vectors: Matrix
    asked_vectors: Matrix
    stored_tokens: list[bytes]  # packed token embeddings of the stored prompts


def vector_body(vector: Matrix, fmt: str) -> bytes:
    value: object = (
        base64.b64encode(vector.astype("<f4").tobytes()).decode()
        if fmt == "base64"
        else vector.tolist()
    )
    return orjson.dumps({"namespace": NAMESPACE, "category": CATEGORY, "vector": value})


def text_body(text: str) -> bytes:
    return orjson.dumps({"namespace": NAMESPACE, "category": CATEGORY, "text": text})


def write_bodies(path: Path, bodies: Sequence[bytes]) -> Path:
    path.write_bytes(b"\n".join(bodies) + b"\n")
    return path


def query_times_us(index: hnswlib.Index, queries: Matrix, k: int) -> NDArray[np.float64]:
    out = np.empty(len(queries))
    for i, q in enumerate(queries):
        started = time.perf_counter()
        index.knn_query(q[None, :], k=k, num_threads=1)
        out[i] = (time.perf_counter() - started) * 1e6
    return out


def daemon_settings(opts: Options, *, text: bool, verification: bool = True) -> dict[str, object]:
    settings: dict[str, object] = {
        "embedding.backend": "minilm" if text else "none",
        "embedding.dim": DIM,
        "index.hnsw_m": opts.m,
        "index.hnsw_ef_construction": opts.ef_construction,
        "index.hnsw_ef_search": opts.ef_search,
        "index.snapshot_interval_s": 0,  # no background snapshot inside a measurement
        "semantic.candidates": opts.candidates,
        "server.access_log": opts.access_log,
    }
    if text:
        settings["embedding.cache_entries"] = 0  # every request runs the model
        settings["verification.enabled"] = verification  # the rest at their defaults
    return settings


def load_rows(
    size: int, mode: str, servers: Sequence[Server], bodies: Path, opts: Options
) -> list[Row]:
    """Every (concurrency, server) pair ``opts.rounds`` times, round-robin, which server
    goes first rotating; each pair keeps its run with the highest req/s (the least
    disturbed by the rest of a shared machine)."""
    best: dict[tuple[int, str], Load] = {}
    for round_ in range(opts.rounds):
        for i, concurrency in enumerate(opts.concurrency):
            first = (round_ + i) % len(servers)
            for server in [*servers[first:], *servers[:first]]:
                log(f"{size} {mode}: {server.name} at concurrency {concurrency}")
                load = measure(server, bodies, concurrency, opts)
                key = (concurrency, server.name)
                if key not in best or load.rps > best[key].rps:
                    best[key] = load
    return [
        Row(size, mode, c, s.name, best[(c, s.name)]) for c in opts.concurrency for s in servers
    ]


def start_servers(
    stack: contextlib.ExitStack,
    mode: str,
    data: tuple[Path, Path, Path],
    token_dir: Path | None,
    opts: Options,
) -> list[Server]:
    """The daemons of ``mode`` and the bare server, started at once, each stopped when
    ``stack`` closes. Text-in runs one daemon per ``--verification`` variant: with it
    on, on ``token_dir`` (the same entries, carrying their token embeddings)."""
    data_dir, config, index_file = data
    text = mode == "text-in"
    servers = []
    for name, verification in variants(opts.verification) if text else [("semcached", True)]:
        directory = token_dir if text and verification else data_dir
        if directory is None:
            raise RuntimeError("verification on needs the data directory with tokens")
        settings = daemon_settings(opts, text=text, verification=verification)
        server = stack.enter_context(running(Server.semcached(directory, config, settings)))
        server.name = name
        servers.append(server)
    bare = Server.bare(
        index_file,
        dim=DIM,
        ef=opts.ef_search,
        k=opts.candidates,
        threshold=opts.threshold,
        minilm=text,
    )
    servers.append(stack.enter_context(running(bare)))
    return servers


def run_mode(
    size: int,
    mode: str,
    data: tuple[Path, Path, Path],
    bodies: list[bytes],
    *,
    exact: tuple[Matrix, NDArray[np.int64]],
    opts: Options,
    report: Report,
    token_dir: Path | None = None,
) -> None:
    # The load generators take the bodies in turn from the first, and a run at MiniLM's
    # speed gets through only a prefix: shuffled, so that any prefix holds hit and miss
    # queries in their proportions (the query sets list the hit-like ones first).
    order = np.random.default_rng([opts.seed, 4]).permutation(len(bodies))
    body_file = write_bodies(opts.work / f"{mode}.jsonl", [bodies[i] for i in order])
    with contextlib.ExitStack() as stack:
        servers = start_servers(stack, mode, data, token_dir, opts)
        with ThreadPoolExecutor(len(servers)) as pool:  # all start at once; time each
            ready = list(pool.map(Server.wait_ready, servers))
        for server, seconds in zip(servers, ready, strict=True):
            loaded = [x for x in server.lines if "semantic cache:" in x]
            detail = f" ({loaded[-1].split('semantic cache: ')[-1]})" if loaded else ""
            report.notes.append(f"{size} {mode}: {server.name} ready in {seconds:.1f} s{detail}")
        report.rows += load_rows(size, mode, servers, body_file, opts)
        log(f"{size} {mode}: recall passes")
        got = {s.name: answers(s, bodies) for s in servers}
    best, ids = exact
    hits = int((best >= opts.threshold).sum())
    theirs = recall(got.pop("bare"), best, ids, opts.threshold)
    for name, g in got.items():
        ours = recall(g, best, ids, opts.threshold)
        report.recall.append((size, mode, name, len(bodies), hits, ours, theirs))


def prepare_tokens_dir(work: Path, vectors: Matrix, texts: Texts, report: Report) -> Path:
    """``work``'s data directory again with the MiniLM entries carrying their packed
    token embeddings (as a daemon with verification on stores them) and the same index
    snapshot: built now, or reused."""
    size = len(vectors)
    target = work / f"data-tokens{DEFAULT_MAX_TOKENS}"
    ready = work / f"READY-tokens{DEFAULT_MAX_TOKENS}"
    if ready.exists():
        report.notes.append(f"{size}: data directory with tokens reused from {target}")
        return target
    shutil.rmtree(target, ignore_errors=True)
    log(f"{size}: writing the data directory with token embeddings")
    seconds = populate(target, vectors, texts.stored, tokens=texts.stored_tokens)
    shutil.copytree(work / "data" / "snapshots", target / "snapshots")
    kib = sum(map(len, texts.stored_tokens)) / max(len(texts.stored_tokens), 1) / 1024
    report.notes.append(
        f"{size}: data directory with token embeddings written in {seconds:.1f} s "
        f"({len(texts.stored_tokens)} entries carry them, {kib:.1f} KiB each on average)"
    )
    ready.write_text("complete\n")
    return target


def prepare_size(
    size: int, texts: Texts, mixture: Mixture, opts: Options, report: Report, *, work: Path
) -> tuple[Matrix, Path]:
    """The vectors and the index file of ``work``: built now, or reused from ``--cache``."""
    ready = work / "READY"
    if ready.exists():
        log(f"{size}: reusing the data directory and index in {work}")
        report.notes.append(f"{size}: data directory and index reused from {work}")
        return np.load(work / "vectors.npy", mmap_mode="r"), snapshot_hnsw_file(work / "data")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    t = len(texts.stored)
    vectors = np.lib.format.open_memmap(
        work / "vectors.npy", mode="w+", dtype=np.float32, shape=(size, DIM)
    )
    vectors[:t] = texts.stored_vectors
    synthetic_vectors(vectors, t, mixture, opts.seed)
    log(f"{size}: writing the data directory")
    seconds = populate(work / "data", vectors, texts.stored)
    report.notes.append(f"{size}: data directory written in {seconds:.1f} s")
    log(f"{size}: building the index (the daemon's snapshot and the bare server's file)")
    seconds, index_file = write_index_snapshot(
        work / "data", vectors, m=opts.m, ef_construction=opts.ef_construction
    )
    report.notes.append(f"{size}: index built in {seconds:.1f} s (2 threads)")
    vectors.flush()
    ready.write_text("complete\n")
    return vectors, index_file


def run_size(size: int, texts: Texts, mixture: Mixture, opts: Options, report: Report) -> None:
    t = len(texts.stored)
    if opts.cache is not None:
        key = cache_key(
            size,
            texts=t,
            seed=opts.seed,
            centroids=opts.centroids,
            m=opts.m,
            efc=opts.ef_construction,
        )
        work = opts.cache / key
    else:
        work = opts.work / f"n{size}"
    try:
        vectors, index_file = prepare_size(size, texts, mixture, opts, report, work=work)
        queries, copies = vector_queries(vectors, t, opts.queries, mixture, opts.seed)
        config = write_config(work / "bench.toml", opts.threshold)
        index = hnswlib.Index(space="cosine", dim=DIM)
        index.load_index(str(index_file))
        index.set_ef(opts.ef_search)
        for mode, q in (("vector-in", queries), ("text-in", texts.asked_vectors)):
            if len(q):
                report.overhead.append((size, mode, query_times_us(index, q, opts.candidates)))
        del index
        log(f"{size}: brute force")
        exact_v = brute_force(vectors, queries)
        exact_t = brute_force(vectors, texts.asked_vectors) if len(texts.asked) else None
        token_dir = None
        if size in opts.text_sizes and any(on for _, on in variants(opts.verification)):
            token_dir = prepare_tokens_dir(work, vectors, texts, report)
        del vectors
        data = (work / "data", config, index_file)
        vbodies = [vector_body(q, opts.vector_format) for q in queries]
        run_mode(size, "vector-in", data, vbodies, exact=exact_v, opts=opts, report=report)
        if size in opts.text_sizes and exact_t is not None:
            tbodies = [text_body(x) for x in texts.asked]
            run_mode(
                size,
                "text-in",
                data,
                tbodies,
                exact=exact_t,
                opts=opts,
                report=report,
                token_dir=token_dir,
            )
        elif len(texts.asked):
            report.notes.append(f"{size}: text-in skipped (not in --text-sizes)")
        report.notes.append(
            f"{size}: vector queries: {copies} noisy copies, {len(queries) - copies} fresh"
        )
    finally:
        if opts.cache is None:
            shutil.rmtree(work, ignore_errors=True)


# -- output ------------------------------------------------------------------------------------


def _ms(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{x:.2f}"


def print_report(report: Report, opts: Options) -> None:
    print(
        "\n| entries | input | conc. | server | req/s | p50 ms | p99 ms | server p50 ms "
        "| server p99 ms | req/s vs bare |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    bare = {(r.size, r.mode, r.concurrency): r.load.rps for r in report.rows if r.server == "bare"}
    for r in report.rows:
        ratio = r.load.rps / bare[(r.size, r.mode, r.concurrency)]
        errors = f" ({r.load.errors} errors)" if r.load.errors else ""
        print(
            f"| {r.size} | {r.mode} | {r.concurrency} | {r.server} | {r.load.rps:.0f}{errors} "
            f"| {_ms(r.load.p50_ms)} | {_ms(r.load.p99_ms)} | {_ms(r.load.server_p50_ms)} "
            f"| {_ms(r.load.server_p99_ms)} | {ratio:.2f} |"
        )
    low = min(opts.concurrency)
    print(
        f"\n| entries | input | server | hnswlib alone p50 / mean µs | server mean µs at conc. "
        f"{low}: server / bare | overhead vs hnswlib: server / bare |"
    )
    print("|---|---|---|---|---|---|")
    means = {
        (r.size, r.mode, r.server): r.load.server_mean_ms * 1e3
        for r in report.rows
        if r.concurrency == low
    }
    for size, mode, times in report.overhead:
        if (size, mode, "bare") not in means:
            continue
        mean = float(times.mean())
        theirs = means[(size, mode, "bare")]
        for (s, m, server), ours in means.items():
            if (s, m) != (size, mode) or server == "bare":
                continue
            print(
                f"| {size} | {mode} | {server} | {np.median(times):.0f} / {mean:.0f} "
                f"| {ours:.0f} / {theirs:.0f} | {ours / mean:.1f}x / {theirs / mean:.1f}x |"
            )
    print(
        f"\n| entries | input | server | queries | brute-force hits (>= {opts.threshold}) "
        "| recall server | recall bare |"
    )
    print("|---|---|---|---|---|---|---|")
    for size, mode, server, n, hits, ours, theirs in report.recall:
        print(f"| {size} | {mode} | {server} | {n} | {hits} | {ours:.4f} | {theirs:.4f} |")
    print(
        "\n(With verification on, the verifier decides grey-band candidates, so its "
        "recall against the brute-force threshold is not a recall: a verified miss above "
        "or a verified hit below the threshold counts as wrong.)"
    )
    print_goals(report)
    print_verification(
        [
            LatencyRow(
                r.size,
                r.concurrency,
                r.server,
                r.load.counts,
                r.load.rps,
                r.load.p50_ms,
                r.load.p99_ms,
                r.load.server_mean_ms,
                r.load.server_p50_ms,
                r.load.server_p99_ms,
            )
            for r in report.rows
            if r.server in (VERIFY_OFF, VERIFY_ON) and r.load.counts is not None
        ]
    )
    print("\nNotes:")
    for note in report.notes:
        print(f"- {note}")


def figures(report: Report) -> list[Figure]:
    """The run's CSV lines: req/s and server p99 of each daemon beside the bare
    server's, and recall beside the bare server's."""
    out = []
    bare = {(r.size, r.mode, r.concurrency): r.load for r in report.rows if r.server == "bare"}
    for r in report.rows:
        if r.server == "bare":
            continue
        theirs = bare[(r.size, r.mode, r.concurrency)]
        case = f"{r.size} {r.mode} {r.server} c{r.concurrency}"
        out.append(Figure("semantic_http", case, "req/s", r.load.rps, theirs.rps))
        out.append(
            Figure(
                "semantic_http",
                case,
                "server p99 ms",
                r.load.server_p99_ms,
                theirs.server_p99_ms,
                "lower",
            )
        )
    for size, mode, server, _, _, ours, theirs_recall in report.recall:
        out.append(
            Figure("semantic_http", f"{size} {mode} {server}", "recall", ours, theirs_recall)
        )
    return out


def print_goals(report: Report) -> None:
    print("\nGoals (issue #20):")
    vector = [r for r in report.rows if r.mode == "vector-in"]
    if not vector:
        return
    top, low = max(r.concurrency for r in vector), min(r.concurrency for r in vector)
    bare = {(r.size, r.concurrency): r.load.rps for r in vector if r.server == "bare"}
    for r in vector:
        if r.server == "semcached" and r.concurrency in (top, low):
            ratio = r.load.rps / bare[(r.size, r.concurrency)]
            want = 1.0 if r.concurrency == top else 0.9
            verdict = "met" if ratio >= want else "missed"
            print(
                f"- throughput >= {want:.1f}x bare, vector-in, {r.size} entries, concurrency "
                f"{r.concurrency}: {ratio:.2f}x, {verdict}"
            )
    for size, mode, server, _, _, ours, theirs in report.recall:
        if server == VERIFY_ON:
            continue  # not a threshold decision (see the recall table)
        print(
            f"- recall >= 0.99, {mode}, {server}, {size} entries: {ours:.4f} "
            f"(bare: {theirs:.4f}), {'met' if ours >= 0.99 else 'missed'}"
        )
    largest = max(r.size for r in vector)
    for r in vector:
        if r.server == "semcached" and r.size == largest and r.concurrency == low:
            p99 = r.load.server_p99_ms
            print(
                f"- server-side p99 <= 2 ms at {largest} entries, concurrency "
                f"{r.concurrency}: {_ms(p99)} ms (from /metrics buckets), "
                f"{'met' if p99 <= 2 else 'missed'}"
            )


# -- main ----------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> tuple[Options, Path | None]:
    index, semantic = IndexSettings(), SemanticSettings()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    p.add_argument(
        "--text-sizes",
        type=int,
        nargs="*",
        default=None,
        help="sizes that also run text-in (default: sizes up to 100000)",
    )
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    p.add_argument("--duration-s", type=float, default=10.0)
    p.add_argument("--rounds", type=int, default=2, help="runs per pair; the best is kept")
    p.add_argument(
        "--quick", action="store_true", help="routine check: 100k entries, vector-in, 5 s runs"
    )
    p.add_argument("--smoke", action="store_true", help="5k entries, short runs: a smoke test")
    p.add_argument(
        "--csv",
        type=Path,
        default=None,
        help="also write one CSV line per load row to this file (bench/check_regression.py)",
    )
    p.add_argument("--queries", type=int, default=4000, help="distinct vector-in queries")
    p.add_argument("--text-queries", type=int, default=1000, help="distinct text-in queries")
    p.add_argument("--text-entries", type=int, default=4000, help="MiniLM-embedded entries")
    p.add_argument("--centroids", type=int, default=4096)
    p.add_argument("--threshold", type=float, default=0.90)
    p.add_argument("--m", type=int, default=index.hnsw_m)
    p.add_argument("--ef-construction", type=int, default=index.hnsw_ef_construction)
    p.add_argument("--ef-search", type=int, default=index.hnsw_ef_search)
    p.add_argument("--candidates", type=int, default=semantic.candidates, help="k of both")
    p.add_argument("--vector-format", choices=["list", "base64"], default="list")
    p.add_argument(
        "--verification",
        choices=["off", "on", "both"],
        default="both",
        help="text-in daemons: hit verification off, on (the default configuration, on "
        "entries with token embeddings) or both side by side (issue #15's comparison)",
    )
    p.add_argument("--access-log", action="store_true", help="keep the daemon's access log")
    p.add_argument("--client", choices=["auto", "wrk", "aiohttp"], default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", type=Path, default=None, help="scratch space (default: tmp)")
    p.add_argument(
        "--cache",
        type=Path,
        default=None,
        help="keep each size's data directory, vectors and index here and reuse them "
        "(an index of 1M entries takes about half an hour to build on two cores)",
    )
    a = p.parse_args(argv)
    if a.smoke:
        a.sizes, a.duration_s, a.concurrency, a.rounds = [5_000], 3.0, [1, 8], 1
        a.queries, a.text_queries, a.text_entries = 1000, 200, 500
    elif a.quick:
        a.sizes, a.duration_s, a.rounds, a.text_queries = [100_000], 5.0, 3, 0
    text_sizes = a.text_sizes if a.text_sizes is not None else [s for s in a.sizes if s <= 100_000]
    a.text_entries = min(a.text_entries, min(a.sizes) // 2, MAX_TEXT_COMBOS - a.text_queries)
    if a.text_entries < a.text_queries // 2:
        a.text_queries = 0  # too few stored prompts to paraphrase
    opts = Options(
        sizes=a.sizes,
        text_sizes=text_sizes if a.text_queries else [],
        concurrency=a.concurrency,
        duration_s=a.duration_s,
        rounds=a.rounds,
        queries=a.queries,
        text_queries=a.text_queries,
        text_entries=a.text_entries if a.text_queries else 0,
        centroids=a.centroids,
        threshold=a.threshold,
        m=a.m,
        ef_construction=a.ef_construction,
        ef_search=a.ef_search,
        candidates=a.candidates,
        vector_format=a.vector_format,
        verification=a.verification,
        access_log=a.access_log,
        client=_client(a.client),
        seed=a.seed,
        work=Path(),
        cache=a.cache,
        csv=a.csv,
    )
    return opts, a.workdir


def make_texts(opts: Options) -> Texts:
    if not opts.text_entries:
        empty = np.empty((0, DIM), dtype=np.float32)
        return Texts([], [], empty, empty, [])
    import asyncio

    stored, asked, _ = text_prompts(opts.text_entries, opts.text_queries, opts.seed)
    log(f"embedding {len(stored) + len(asked)} prompts with MiniLM (with token embeddings)")
    vectors, tokens = asyncio.run(embed_with_tokens(stored + asked))
    return Texts(
        stored, asked, vectors[: len(stored)], vectors[len(stored) :], tokens[: len(stored)]
    )


@contextlib.contextmanager
def scratch(workdir: Path | None) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="semcached-http-", dir=workdir))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    opts, workdir = parse_args(argv)
    # SIGTERM ends the run like Ctrl-C, so every child server is stopped on the way out.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    report = Report()
    print(
        f"# semantic lookup over HTTP: {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}, "
        f"client {opts.client}, M={opts.m} ef_construction={opts.ef_construction} "
        f"ef_search={opts.ef_search} k={opts.candidates}, threshold {opts.threshold}, best of "
        f"{opts.rounds} x {opts.duration_s:g} s per run, vectors as {opts.vector_format}, "
        f"text-in verification {opts.verification}"
    )
    with scratch(workdir) as work:
        opts.work = work
        texts = make_texts(opts)
        mixture = Mixture.create(opts.centroids, opts.seed)
        try:
            for size in opts.sizes:
                run_size(size, texts, mixture, opts, report)
        except KeyboardInterrupt:
            report.notes.append("interrupted: the tables hold what ran before")
        except (RuntimeError, MemoryError, OSError) as exc:
            report.notes.append(f"stopped: {type(exc).__name__}: {exc}")
    print_report(report, opts)
    if opts.csv is not None:
        write_figures(opts.csv, figures(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
