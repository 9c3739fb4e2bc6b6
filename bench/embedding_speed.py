"""Text-in embedding speed and agreement: MiniLM on torch vs on ONNX Runtime (issue #20).

Two parts, every runtime side by side in one run (torch, the baseline, first):

1. **Agreement**: distinct STS-B sentences (train, dev, test; ``--texts``, 10,000 by
   default) embedded by each runtime in batches of 32; per text, the cosine between
   the runtime's vector and torch's: min, 0.1th percentile, mean, and how many fall
   below 0.99.
2. **Speed**, through the daemon's own embedder (``create_embedder``: the LRU cache
   off, so every text reaches the model, and the micro-batcher at its defaults),
   in-process on one event loop: ``--concurrency`` callers (1, 16, 64) each embedding
   one distinct text per call, back to back. Per cell: texts/s, per-call latency p50
   and p99, the mean batch the micro-batcher formed, and texts/s as a ratio of torch's
   at the same concurrency. Within a concurrency every runtime embeds the same texts (a
   seeded sample) in two passes, the second in reverse order of runtimes.

Model threads are the daemon's default (``embedding.torch_threads`` = 0: half the
cores). The ONNX files are exported on first use into ``--cache`` (kept for later runs).

    python bench/embedding_speed.py --stsb ../shared/data/stsb
    python bench/embedding_speed.py --stsb DIR --quick --csv F  # 1,000 texts, short cells
    python bench/embedding_speed.py --stsb DIR --runtimes torch,onnx

Needs the ``embed`` extra.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from _figures import Figure, write_figures
from _stsb import load_stsb

from semcached.service.config import EmbeddingSettings
from semcached.service.semantic.embedding import create_embedder
from semcached.service.semantic.embedding.embedder import BatchingEmbedder
from semcached.service.semantic.embedding.onnx_export import default_model_cache_dir

RUNTIMES = ("torch", "onnx", "onnx-int8")


def settings_for(runtime: str, cache: Path) -> EmbeddingSettings:
    """The embedding settings of one runtime name (``onnx-int8``: onnx with onnx_int8)."""
    return EmbeddingSettings(
        backend="minilm",
        runtime="torch" if runtime == "torch" else "onnx",
        onnx_int8=runtime == "onnx-int8",
        model_cache_dir=str(cache),
        cache_entries=0,
    )


def sentences(folder: Path, n: int) -> list[str]:
    """The first ``n`` distinct sentences of STS-B train, dev and test, in file order."""
    seen: dict[str, None] = {}
    for split in ("train", "dev", "test"):
        for pair in load_stsb(folder, split):
            seen.setdefault(pair.stored)
            seen.setdefault(pair.asked)
    return list(seen)[:n]


async def open_embedder(
    runtime: str, cache: Path, executor: ThreadPoolExecutor
) -> BatchingEmbedder:
    embedder = create_embedder(settings_for(runtime, cache), executor)
    assert isinstance(embedder, BatchingEmbedder)
    await embedder.open()
    actual = getattr(embedder.backend, "runtime", "torch")
    if actual != runtime:
        raise SystemExit(f"asked for {runtime}, the embedder runs {actual}: see its log")
    return embedder


async def vectors(embedder: BatchingEmbedder, texts: Sequence[str]) -> np.ndarray:
    rows = [await embedder.embed(texts[i : i + 32]) for i in range(0, len(texts), 32)]
    return np.concatenate(rows)


@dataclass(frozen=True, slots=True)
class Cell:
    runtime: str
    concurrency: int
    texts: int
    seconds: float
    latencies: list[float]
    mean_batch: float

    @property
    def rate(self) -> float:
        return self.texts / self.seconds

    @staticmethod
    def merge(parts: list[Cell]) -> Cell:
        texts = sum(c.texts for c in parts)
        return Cell(
            parts[0].runtime,
            parts[0].concurrency,
            texts,
            sum(c.seconds for c in parts),
            [x for c in parts for x in c.latencies],
            sum(c.mean_batch * c.texts for c in parts) / texts,
        )

    def latency_ms(self, q: float) -> float:
        return 1000 * float(np.quantile(self.latencies, q))


async def load(
    embedder: BatchingEmbedder, runtime: str, texts: Sequence[str], callers: int
) -> Cell:
    """``callers`` loops, each embedding the next unclaimed text, until none is left."""
    calls0, embedded0 = embedder.stats.model_calls, embedder.stats.texts_embedded
    latencies: list[float] = []
    position = 0

    async def caller() -> None:
        nonlocal position
        while position < len(texts):
            text = texts[position]
            position += 1
            started = time.perf_counter()
            await embedder.embed([text])
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(callers)))
    seconds = time.perf_counter() - started
    calls = embedder.stats.model_calls - calls0
    embedded = embedder.stats.texts_embedded - embedded0
    return Cell(runtime, callers, len(texts), seconds, latencies, embedded / max(calls, 1))


async def run(args: argparse.Namespace) -> None:
    runtimes = [r for r in args.runtimes.split(",") if r]
    if runtimes[0] != "torch" or any(r not in RUNTIMES for r in runtimes):
        raise SystemExit(f"--runtimes: torch first, then any of {RUNTIMES[1:]}")
    n_texts = 1000 if args.quick else args.texts
    per_cell = {1: 150 if args.quick else 600, 16: 400 if args.quick else 2000}
    texts = sentences(args.stsb, max(n_texts, 3 * max(per_cell.values())))
    executor = ThreadPoolExecutor(2, thread_name_prefix="bench")
    embedders = {r: await open_embedder(r, args.cache, executor) for r in runtimes}
    backend = embedders["torch"].backend
    print(
        f"model threads: {getattr(backend, 'torch_threads', '?')}; "
        f"texts: {n_texts} distinct STS-B sentences"
    )
    figures: list[Figure] = []

    # 1. Agreement with torch, per text.
    reference = await vectors(embedders["torch"], texts[:n_texts])
    print("\nagreement with torch (cosine per text, batches of 32)")
    print(f"{'runtime':<10} {'min':>8} {'p0.1':>8} {'mean':>8} {'<0.99':>6}")
    for r in runtimes[1:]:
        ours = await vectors(embedders[r], texts[:n_texts])
        cos = (reference * ours).sum(axis=1)
        low = int((cos < 0.99).sum())
        p01 = float(np.quantile(cos, 0.001))
        print(f"{r:<10} {cos.min():8.4f} {p01:8.4f} {cos.mean():8.5f} {low:6d}")
        figures.append(Figure("embedding_speed", r, "min cosine vs torch", cos.min(), 1.0))

    # 2. Speed through the embedder and micro-batcher. Every runtime gets the same
    # texts (the LRU cache is off), a seeded sample: the files run from short captions
    # to long forum posts, so a slice in file order would favour one runtime.
    sample = random.Random(args.seed).sample(texts, len(texts))
    print("\nspeed: concurrent callers, one text a call, through the daemon's embedder")
    print(
        f"{'conc':>4} {'runtime':<10} {'texts/s':>8} {'x torch':>8} "
        f"{'p50 ms':>8} {'p99 ms':>8} {'batch':>6}"
    )
    for callers in args.concurrency:
        count = per_cell[1] if callers == 1 else per_cell[16]
        half = count // 2
        # Two passes, the second in reverse order (A B C C B A), each runtime on the same
        # two halves: a neighbour's load that drifts during the cell hits all alike.
        cells: dict[str, list[Cell]] = {r: [] for r in runtimes}
        for texts_part, order in ((sample[:half], runtimes), (sample[half:count], runtimes[::-1])):
            for r in order:
                cells[r].append(await load(embedders[r], r, texts_part, callers))
        base_rate = 0.0
        for r in runtimes:
            cell = Cell.merge(cells[r])
            base_rate = cell.rate if r == "torch" else base_rate
            ratio = cell.rate / base_rate
            print(
                f"{callers:>4} {r:<10} {cell.rate:8.0f} {ratio:8.2f} "
                f"{cell.latency_ms(0.5):8.2f} {cell.latency_ms(0.99):8.2f} {cell.mean_batch:6.1f}"
            )
            if r != "torch":
                figures.append(
                    Figure("embedding_speed", f"c{callers} {r}", "texts/s", cell.rate, base_rate)
                )
    for embedder in embedders.values():
        await embedder.close()
    executor.shutdown()
    if args.csv is not None:
        write_figures(args.csv, figures)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--stsb", type=Path, required=True, help="folder of sts-{train,dev,test}.csv"
    )
    parser.add_argument("--texts", type=int, default=10_000, help="sentences for agreement")
    parser.add_argument("--runtimes", default=",".join(RUNTIMES), help="torch first")
    parser.add_argument(
        "--concurrency", type=lambda s: [int(x) for x in s.split(",")], default=[1, 16, 64]
    )
    parser.add_argument("--cache", type=Path, default=default_model_cache_dir())
    parser.add_argument("--seed", type=int, default=1, help="of the speed cells' sample")
    parser.add_argument("--quick", action="store_true", help="1,000 texts, short cells")
    parser.add_argument(
        "--csv", type=Path, default=None, help="also write the rows as CSV lines to this file"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
