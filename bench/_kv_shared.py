"""KV: a second engine host fetching a chunk from the shared tier vs recomputing it.

    python bench/_kv_shared.py                     # 16 MB chunks, float32, Redis started here
    python bench/_kv_shared.py --redis-url redis://127.0.0.1:6379 --chunks 16
    python bench/_kv_shared.py --no-recompute      # Redis and disk rows only

Also called by bench/scale_out.py (:func:`compare` returns the rows). Time per chunk
of ``--size-mb`` MB of SmolLM2-135M-Instruct KV (30 layers, 3 KV heads, head dim 64:
45 KiB a token in float32, so a 16 MB chunk is 347 tokens; 694 in float16):

- **write-behind to Redis**: after A's put returned (its local commit), the time until
  its background writer has read the blob back from A's store and written it to Redis
  in one ``MULTI`` (not on any request's path);
- **shared fetch (B's GET)**: engine A (its own data directory) stores ``--chunks``
  chunks, which reach Redis in the background; engine B (another data directory,
  empty) reads each once with ``KvCache.get``: the local miss, the Redis read (two
  round trips, one ``MGET`` of the parts), the length and xxh3 check, and the
  promotion into B's disk tier (a durable LMDB commit) before it is served;
- **shared fetch (Redis read only)**: the same reads with
  :meth:`~semcached.index.shared.kv_blobs.KvBlobStore.fetch` alone (no promotion);
- **local disk-tier get**: A's ``get`` of its own chunks (no host tier: LMDB, page
  cache warm);
- **recompute (SmolLM2 prefill)**: the model's forward over as many tokens as the chunk
  holds, producing their KV (CPU, ``--threads`` torch threads; loaded as
  bench/_smollm2.py does). Each round gets fresh random token ids.

Every row is the median over ``--chunks`` x ``--rounds`` reads (B is a fresh engine each
round, so each of its reads is a miss). Redis runs on loopback (a ``redis-server`` child
unless ``--redis-url`` is given), so the network cost of a real deployment is not in
these numbers: add the transfer time of 16 MB on the link (1.3 ms at 100 Gbit/s, 13 ms
at 10 Gbit/s).
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import redis

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

from semcached.cachepolicy.lru import LruPolicy  # noqa: E402
from semcached.index.kv_disk import KvDiskStore  # noqa: E402
from semcached.index.kv_meta import DTYPE_BYTES, ModelSpec, VariantMeta  # noqa: E402
from semcached.index.lmdb_env import LmdbEnvironment  # noqa: E402
from semcached.protocol.keys import chunk_key, variant_key  # noqa: E402
from semcached.service.config import DEFAULT_KV_MODELS, SharedSettings  # noqa: E402
from semcached.service.kv.component import shared_tier  # noqa: E402
from semcached.service.kv.engine import KvCache  # noqa: E402

__all__ = ["Row", "compare", "main", "tokens_for"]

MB = 1_000_000
MiB = 1 << 20
SPEC: ModelSpec = DEFAULT_KV_MODELS[0]  # SmolLM2-135M-Instruct


@dataclass(frozen=True, slots=True)
class Row:
    name: str
    median_ms: float
    min_ms: float
    max_ms: float
    samples: int
    nbytes: int
    note: str = ""

    @property
    def mb_per_s(self) -> float:
        return self.nbytes / MB / (self.median_ms / 1000) if self.median_ms else 0.0


def tokens_for(size_mb: float, dtype: str = "float32") -> int:
    """Tokens of SmolLM2 KV in ``size_mb`` MB (rounded down)."""
    per_token = SPEC.layers * 2 * SPEC.kv_heads * SPEC.head_dim * DTYPE_BYTES[dtype]
    return int(size_mb * MB) // per_token


def _row(name: str, samples: list[float], nbytes: int, note: str = "") -> Row:
    ms = [s * 1000 for s in samples]
    return Row(name, statistics.median(ms), min(ms), max(ms), len(ms), nbytes, note)


@contextlib.contextmanager
def local_redis(workdir: Path) -> Iterator[str]:
    """A ``redis-server`` child on a free loopback port (nothing persisted)."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server not found (Debian package redis-server)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    args = ["--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    proc = subprocess.Popen(
        [binary, *args, "--dir", str(workdir)], stdout=subprocess.DEVNULL, cwd=workdir
    )
    try:
        client = redis.Redis(port=port, socket_timeout=1)
        for _ in range(200):
            with contextlib.suppress(redis.ConnectionError):
                if client.ping():
                    break
            time.sleep(0.05)
        client.close()
        yield f"redis://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


def _engine(root: Path, url: str, blob_bytes: int, chunks: int) -> KvCache:
    disk = blob_bytes * (chunks + 2) + 64 * MiB
    env = LmdbEnvironment(root / "kv-lmdb", initial_map_bytes=disk, max_map_bytes=2 * disk)
    shared = shared_tier(
        SharedSettings(
            redis_url=url,
            key_prefix="bench",
            kv_max_pending_bytes=blob_bytes * (chunks + 1),
        )
    )
    engine = KvCache(
        store=KvDiskStore(env),
        models={SPEC.name: SPEC},
        disk_budget_bytes=disk,
        host=None,  # reads come from the disk tier: the tier below is what is measured
        eviction=LruPolicy,
        max_blob_bytes=2 * blob_bytes,
        shared=shared,
    )
    engine.open()
    return engine


def _close(engine: KvCache) -> None:
    engine.close()
    engine.store.env.close()


def _variant(
    i: int, tokens: int, dtype: str, rng: np.random.Generator
) -> tuple[VariantMeta, bytes]:
    ids = [int(t) for t in rng.integers(0, 49_152, tokens)]
    shape = (SPEC.layers, 2, SPEC.kv_heads, tokens, SPEC.head_dim)
    meta = VariantMeta(
        chunk=chunk_key(SPEC.name, SPEC.tokenizer, dtype, [i, *ids]),
        variant=variant_key([]),
        model=SPEC.name,
        dtype=dtype,
        shape=shape,
        prefix=(),
        prefix_tokens=(),
        rope_base=0,
        rope={},
        inter=np.zeros(0, np.float32),
        intra=0.0,
        token_scores=np.zeros(tokens, np.float32),
        created_at=time.time(),
    )
    blob = rng.standard_normal(int(np.prod(shape)), dtype=np.float32)
    return meta, blob.astype(np.float16 if dtype == "float16" else np.float32).tobytes()


def _timed(call: Callable[[], object]) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def _storage_rows(
    url: str, workdir: Path, tokens: int, dtype: str, *, chunks: int, rounds: int
) -> list[Row]:
    rng = np.random.default_rng(0)
    stored = [_variant(i, tokens, dtype, rng) for i in range(chunks)]
    nbytes = len(stored[0][1])
    a = _engine(workdir / "a", url, nbytes, chunks)
    fetched: list[float] = []
    raw: list[float] = []
    local: list[float] = []
    written: list[float] = []
    try:
        shared = a.shared
        assert shared is not None
        for meta, blob in stored:
            a.put(meta, blob)
            # The put returned at its local commit; this is the write-behind's own time.
            written.append(_timed(lambda: shared.flush(120)))
        if shared.snapshot().writes != len(stored):
            raise SystemExit("the shared tier did not take the chunks")
        for r in range(rounds):
            b = _engine(workdir / f"b{r}", url, nbytes, chunks)  # empty: every read misses
            try:
                for meta, blob in stored:
                    start = time.perf_counter()
                    _, data = b.get(meta.chunk)
                    fetched.append(time.perf_counter() - start)
                    assert bytes(data) == blob
                assert b.shared is not None
                assert b.shared.tier_stats().promotions == len(stored)
                store = b.shared._store
                assert store is not None
                for meta, _ in stored:
                    raw.append(_timed(lambda m=meta, s=store: s.fetch(b"", m.chunk, m.variant)))
            finally:
                _close(b)
            for meta, _ in stored:
                local.append(_timed(lambda m=meta: a.get(m.chunk)))
    finally:
        _close(a)
    return [
        _row("write-behind to Redis (A, after its put returned)", written, nbytes),
        _row("shared fetch (B's GET: Redis + verify + promote)", fetched, nbytes),
        _row("shared fetch (Redis read + verify only)", raw, nbytes),
        _row("local disk-tier get (LMDB)", local, nbytes),
    ]


def _recompute_row(tokens: int, nbytes: int, rounds: int, threads: int) -> Row:
    import torch
    from _smollm2 import load_smollm2

    torch.set_num_threads(threads)
    model, _ = load_smollm2()
    vocab = int(model.config.vocab_size)
    gen = torch.Generator().manual_seed(0)
    samples: list[float] = []
    with torch.inference_mode():
        for i in range(rounds + 1):
            ids = torch.randint(0, vocab, (1, tokens), generator=gen)
            elapsed = _timed(lambda ids=ids: model(input_ids=ids, use_cache=True))
            if i:  # the first forward warms the allocator and kernels
                samples.append(elapsed)
    return _row(
        f"recompute (SmolLM2 prefill of {tokens} tokens)",
        samples,
        nbytes,
        f"CPU, {threads} torch thread{'s' if threads > 1 else ''}",
    )


def compare(
    *,
    redis_url: str | None = None,
    size_mb: float = 16.0,
    dtype: str = "float32",
    chunks: int = 8,
    rounds: int = 3,
    recompute: bool = True,
    threads: int = 1,
    workdir: Path | None = None,
) -> list[Row]:
    """The rows of the table (see the module docstring)."""
    tokens = tokens_for(size_mb, dtype)
    with tempfile.TemporaryDirectory(prefix="kv-shared-", dir=workdir) as tmp:
        root = Path(tmp)
        if redis_url is None:
            (root / "redis").mkdir()
            with local_redis(root / "redis") as url:
                rows = _storage_rows(url, root, tokens, dtype, chunks=chunks, rounds=rounds)
        else:
            rows = _storage_rows(redis_url, root, tokens, dtype, chunks=chunks, rounds=rounds)
    if recompute:
        rows.append(_recompute_row(tokens, rows[0].nbytes, max(3, rounds * 2), threads))
    return rows


def table(rows: list[Row]) -> str:
    lines = [
        f"{'per chunk':<52} {'median ms':>10} {'min':>8} {'max':>8} {'MB/s':>8}  n",
    ]
    for r in rows:
        lines.append(
            f"{r.name:<52} {r.median_ms:>10.2f} {r.min_ms:>8.2f} {r.max_ms:>8.2f} "
            f"{r.mb_per_s:>8.0f}  {r.samples}{'  ' + r.note if r.note else ''}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--redis-url", default=None)
    parser.add_argument("--size-mb", type=float, default=16.0)
    parser.add_argument("--dtype", choices=["float32", "float16"], default="float32")
    parser.add_argument("--chunks", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the prefill")
    parser.add_argument("--no-recompute", action="store_true")
    parser.add_argument("--dir", type=Path, default=None, help="where the data dirs go")
    args = parser.parse_args(argv)
    tokens = tokens_for(args.size_mb, args.dtype)
    rows = compare(
        redis_url=args.redis_url,
        size_mb=args.size_mb,
        dtype=args.dtype,
        chunks=args.chunks,
        rounds=args.rounds,
        recompute=not args.no_recompute,
        threads=args.threads,
        workdir=args.dir,
    )
    print(
        f"KV chunk: {rows[0].nbytes / MB:.2f} MB = {tokens} tokens of {SPEC.name} "
        f"({args.dtype}); Redis on loopback; {args.chunks} chunks x {args.rounds} rounds"
    )
    print(table(rows))


if __name__ == "__main__":
    main()
