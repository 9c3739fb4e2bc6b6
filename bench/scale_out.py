"""Scale-out on Redis: N sidecars sharing what they learn, against N that learn alone.

    python bench/scale_out.py                       # all 999 GPTCache pairs, N = 1, 2, 4
    python bench/scale_out.py --pairs 100 --skip-kv --skip-milvus     # a quick run

The workload is GPTCache's benchmark pairs (bench/data/gptcache, MIT): for each pair
its ``origin`` prompt, its paraphrase (``similar``) and the origin again, in a seeded
random order where each pair's origin comes first, sent at ``--rate`` requests per
second. Prompts are embedded once here with all-MiniLM-L6-v2 (the daemon's model) and
sent as vectors, so that what is timed is the cache, not the embedder. Request ``j``
goes to sidecar ``j mod N`` (each sidecar serves 1/N of the traffic, as behind a
gateway with N replicas); a miss is answered by "the model" and inserted into that
sidecar. Every sidecar is a real daemon process (``semcached serve``) on this machine;
with sharing they all use one local ``redis-server``.

Printed:

1. hit rate of N sidecars, alone vs sharing (goal: sharing keeps N sidecars within 2
   points of one sidecar's hit rate);
2. replication lag, insert acknowledged on A -> visible on B, p50 / p99 (measured by
   polling B every millisecond, so it includes up to 1 ms of polling);
3. insert throughput of one sidecar with and without the shared tier (16 concurrent
   clients), and the ratio;
4. the shared KV tier: a second engine host fetching a 16 MB chunk from Redis vs its
   own disk vs recomputing it (bench/_kv_shared.py);
5. local HNSW vs the Milvus backend (milvus-lite, embedded: one process, no network)
   at ``--milvus-n`` entries: lookup p50 / p99 and recall@1 (bench/_milvus_compare.py).

A PNG of (1) goes to ``--plot``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _datasets import GPTCACHE_PAIRS
from _redis import RedisProcess
from _semantic_common import CATEGORY, write_config
from _server import Server

NAMESPACE = "bench"


@dataclass(frozen=True)
class Request:
    pair: int
    text: str
    kind: str  # origin, similar, repeat


def workload(pairs: Sequence[dict[str, str]], seed: int) -> list[Request]:
    """Each pair's origin, paraphrase and repeat; each origin before its other two."""
    rng = random.Random(seed)
    slots: list[tuple[float, Request]] = []
    for i, pair in enumerate(pairs):
        first = rng.random()
        slots.append((first, Request(i, pair["origin"], "origin")))
        for kind, text in (("similar", pair["similar"]), ("repeat", pair["origin"])):
            slots.append((first + rng.random() * (1 - first), Request(i, text, kind)))
    return [r for _, r in sorted(slots, key=lambda s: s[0])]


def embed(texts: Sequence[str]) -> np.ndarray:
    from semcached.service.semantic.embedding.minilm import load_minilm

    model = load_minilm(torch_threads=2)
    vectors = model.encode(list(texts), batch_size=64, normalize_embeddings=True)
    return np.asarray(vectors, dtype=np.float32)


class Fleet:
    """N daemons, alone or sharing ``redis_url``."""

    def __init__(
        self, work: Path, n: int, config: Path, redis_url: str | None, prefix: str = ""
    ) -> None:
        """``prefix``: the Redis key prefix, one per run, so that runs share nothing."""
        self.servers: list[Server] = []
        for i in range(n):
            settings: dict[str, object] = {
                "embedding.backend": "none",
                "embedding.dim": 384,
                "server.access_log": False,
                "kv.enabled": False,
            }
            if redis_url:
                settings |= {
                    "shared.redis_url": redis_url,
                    "shared.key_prefix": prefix or work.name,
                    "shared.poll_interval_s": 0.005,
                }
            self.servers.append(Server.semcached(work / f"d{i}", config, settings))
        for server in self.servers:
            server.wait_ready()

    @property
    def urls(self) -> list[str]:
        return [s.url for s in self.servers if s.url]

    def stop(self) -> None:
        for server in self.servers:
            server.stop()


async def drive(
    urls: Sequence[str], requests: Sequence[Request], vectors: np.ndarray, rate: float
) -> tuple[int, int]:
    """Send ``requests`` at ``rate``/s, request j to urls[j % N]; (hits, inserts)."""
    hits = inserts = 0
    async with aiohttp.ClientSession() as http:
        started = time.perf_counter()
        for j, request in enumerate(requests):
            delay = started + j / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            url = urls[j % len(urls)]
            vector = vectors[j].tolist()
            body = {"namespace": NAMESPACE, "category": CATEGORY, "vector": vector}
            async with http.post(url + "/v1/semantic/lookup", json=body) as reply:
                found = await reply.json()
            if found["hit"]:
                hits += 1
                continue
            insert = {
                "namespace": NAMESPACE,
                "category": CATEGORY,
                "prompt": request.text,
                "response": {"answer": f"pair {request.pair}"},
                "vector": vector,
            }
            async with http.post(url + "/v1/semantic/entries", json=insert) as reply:
                reply.raise_for_status()
            inserts += 1
    return hits, inserts


async def lag(a: str, b: str, samples: int, vectors: np.ndarray) -> list[float]:
    """Seconds from A acknowledging an insert to B serving it (polled every 1 ms)."""
    lags: list[float] = []
    async with aiohttp.ClientSession() as http:

        async def visible(entry_id: int, since: float) -> None:
            path = f"{b}/v1/semantic/entries/{entry_id}?namespace=lag"
            while True:
                async with http.get(path) as reply:
                    if reply.status == 200:
                        lags.append(time.perf_counter() - since)
                        return
                await asyncio.sleep(0.001)

        for i in range(samples):
            body = {
                "namespace": "lag",
                "prompt": f"lag probe {i}",
                "response": "x",
                "vector": vectors[i % len(vectors)].tolist(),
            }
            async with http.post(a + "/v1/semantic/entries", json=body) as reply:
                entry_id = (await reply.json())["entry_id"]
            await asyncio.wait_for(visible(int(entry_id), time.perf_counter()), 30)
            await asyncio.sleep(0.01)
    return lags


async def insert_rate(url: str, count: int, clients: int) -> float:
    """Inserts per second into one daemon from ``clients`` concurrent clients."""
    rng = np.random.default_rng(7)
    vectors = rng.normal(size=(count, 384)).astype(np.float32)
    async with aiohttp.ClientSession() as http:
        queue = list(range(count))

        async def client() -> None:
            while queue:
                i = queue.pop()
                body = {
                    "namespace": "rate",
                    "prompt": f"rate {i}",
                    "response": "x" * 200,
                    "vector": vectors[i].tolist(),
                }
                async with http.post(url + "/v1/semantic/entries", json=body) as reply:
                    reply.raise_for_status()

        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        return count / (time.perf_counter() - started)


def percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


@dataclass
class Results:
    rows: list[tuple[int, str, float, int]]  # sidecars, mode, hit rate, model calls
    lags: list[float]
    local_rate: float
    shared_rate: float
    redis_bytes_per_entry: float


def measure(opts: argparse.Namespace, requests: list[Request], vectors: np.ndarray) -> Results:
    sizes = [int(s) for s in opts.sizes.split(",")]
    with tempfile.TemporaryDirectory(prefix="scale-out-") as tmp:
        work = Path(tmp)
        config = write_config(work / "config.toml", opts.threshold)
        redis_server = RedisProcess(work / "redis")
        try:
            rows: list[tuple[int, str, float, int]] = []
            for n in sizes:
                for mode in ("alone", "sharing"):
                    if n == 1 and mode == "sharing":
                        continue
                    url = redis_server.url if mode == "sharing" else None
                    fleet = Fleet(work / f"{mode}{n}", n, config, url)
                    try:
                        hits, inserts = asyncio.run(drive(fleet.urls, requests, vectors, opts.rate))
                    finally:
                        fleet.stop()
                    rows.append((n, mode, hits / len(requests), inserts))
                    print(f"  N={n} {mode}: hit rate {hits / len(requests):.3f}", flush=True)
            fleet = Fleet(work / "lag", 2, config, redis_server.url)
            try:
                lags = asyncio.run(lag(fleet.urls[0], fleet.urls[1], opts.lag_samples, vectors))
            finally:
                fleet.stop()
            # The origin's cost alone: one daemon shipping (no other daemon on this
            # 2-core machine applying the same inserts), against one without Redis.
            fleet = Fleet(work / "rate", 1, config, redis_server.url)
            try:
                before = redis_server.used_memory()
                shared_rate = asyncio.run(insert_rate(fleet.urls[0], opts.inserts, 16))
                time.sleep(1.0)  # the last batch shipped
                per_entry = (redis_server.used_memory() - before) / opts.inserts
            finally:
                fleet.stop()
            fleet = Fleet(work / "local", 1, config, None)
            try:
                local_rate = asyncio.run(insert_rate(fleet.urls[0], opts.inserts, 16))
            finally:
                fleet.stop()
        finally:
            redis_server.stop()
    return Results(rows, lags, local_rate, shared_rate, per_entry)


def report(opts: argparse.Namespace, results: Results, requests: int) -> None:
    sizes = [int(s) for s in opts.sizes.split(",")]
    print()
    print(f"Hit rate, {requests} requests ({opts.pairs} GPTCache pairs x origin, ")
    print(f"paraphrase, repeat) at {opts.rate:.0f} req/s, threshold {opts.threshold}")
    print("| sidecars | alone | sharing (Redis) | model calls alone | model calls sharing |")
    print("|---:|---:|---:|---:|---:|")
    by = {(n, m): (rate, ins) for n, m, rate, ins in results.rows}
    for n in sizes:
        alone = by[(n, "alone")]
        shared = by.get((n, "sharing"), alone)
        print(f"| {n} | {alone[0]:.3f} | {shared[0]:.3f} | {alone[1]} | {shared[1]} |")
    lags = results.lags
    print()
    print(f"Replication lag, A's insert acknowledged -> served by B ({len(lags)} inserts):")
    print(f"p50 {percentile(lags, 50) * 1000:.1f} ms, p99 {percentile(lags, 99) * 1000:.1f} ms")
    print()
    print(f"Insert throughput, one sidecar, 16 clients, {opts.inserts} inserts:")
    print("| | inserts/s |")
    print("|---|---:|")
    print(f"| local only | {results.local_rate:.0f} |")
    print(f"| shipping to the shared tier | {results.shared_rate:.0f} |")
    print(f"| ratio | {results.shared_rate / results.local_rate:.2f} |")
    print(
        f"Redis memory per shared entry (384-d vector, 200-byte response, prompt ~10 B; "
        f"record + id + stream event): {results.redis_bytes_per_entry:.0f} bytes"
    )
    plot(results.rows, sizes, opts.plot)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--pairs", type=int, default=999)
    parser.add_argument("--rate", type=float, default=100.0, help="requests per second")
    parser.add_argument("--threshold", type=float, default=0.8)
    parser.add_argument("--sizes", default="1,2,4")
    parser.add_argument("--lag-samples", type=int, default=300)
    parser.add_argument("--inserts", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--skip-kv", action="store_true")
    parser.add_argument("--skip-milvus", action="store_true")
    parser.add_argument("--milvus-n", type=int, default=100_000)
    parser.add_argument("--plot", type=Path, default=Path("scale_out.png"))
    opts = parser.parse_args()

    pairs = json.loads(GPTCACHE_PAIRS.read_text())[: opts.pairs]
    requests = workload(pairs, opts.seed)
    print(f"embedding {len(requests)} prompts with all-MiniLM-L6-v2 ...", flush=True)
    vectors = embed([r.text for r in requests])
    report(opts, measure(opts, requests, vectors), len(requests))
    if not opts.skip_kv:
        import _kv_shared

        print()
        _kv_shared.main([])
    if not opts.skip_milvus:
        import _milvus_compare

        print()
        _milvus_compare.main(["--n", str(opts.milvus_n)])


def plot(rows: list[tuple[int, str, float, int]], sizes: list[int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by = {(n, m): r for n, m, r, _ in rows}
    fig, ax = plt.subplots(figsize=(5, 3.2))
    x = np.arange(len(sizes))
    ax.bar(x - 0.2, [by[(n, "alone")] for n in sizes], 0.4, label="alone")
    ax.bar(x + 0.2, [by.get((n, "sharing"), by[(n, "alone")]) for n in sizes], 0.4, label="sharing")
    ax.set_xticks(x, [str(n) for n in sizes])
    ax.set_xlabel("sidecars")
    ax.set_ylabel("hit rate")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"plot: {path}")


if __name__ == "__main__":
    main()
