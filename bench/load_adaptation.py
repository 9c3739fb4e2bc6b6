"""Load adaptation simulation: model calls saved and false hits added, vs the static policy.

Labelled pairs are streamed through the semantic engine in-process (MiniLM
embeddings, HNSW, LMDB, the real load and feedback paths) over simulated time (the
engine's clock is injected). Each pair is two requests to a gateway: its ``text_a``
at a random time, then its ``text_b`` a random gap later (exponential, mean
``--gap-s``). Every request is first a lookup; a miss is a call to the downstream
model (counted) whose answer is then inserted (entries expire after the category's
TTL, so a long gap can miss even a paraphrase). A hit on ``text_b`` is right when the
pair is a positive and a false hit when it is a negative. Each pair has a partition
of its own, as in bench/semantic_feedback.py, so that every hit is labelled (the
partitions spread over 64 namespaces, each sent the same load reports).

The downstream model's load is a seeded bursty trace: calm stretches at 20-60% of the
queue-depth target, and bursts (about ``--burst-share`` of the time, 5 to 15
minutes each) at 3-5x it. The gateway reports the queue depth every
``--report-every-s`` seconds (``LoadBook.report``, as ``POST /v1/semantic/load`` does).
The same requests, in the same order, go to three categories that differ only in
their load fields:

- ``static``: no load adaptation (the threshold and TTL as configured);
- ``adaptive``: ``load_min_threshold`` and ``load_ttl_factor`` (no false-hit check);
- ``budgeted``: the same, with ``load_max_false_hit_rate``: relaxing only as far as
  feedback certifies that budget; ``--feedback`` of its served hits are reported
  (and wrong ones removed, as the daemon does).

It prints one row per category: model calls (all, and during bursts), calls saved
against ``static``, hits, false hits (all and on STS-B's hard negatives) and those
added against ``static``, the served false-hit rate, and the share of time relaxed.

    python bench/load_adaptation.py --stsb ../shared/data/stsb
    python bench/load_adaptation.py --stsb DIR --csv out.csv --seed 3
    python bench/load_adaptation.py --pairs pairs.json   # [{"text_a","text_b","label"}]

Needs the ``embed`` extra; embeddings are cached under bench/out/embeddings.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from semantic_feedback import Pair, embed, load_pairs, load_stsb, new_index

from semcached.cachepolicy.calibration import BANDS
from semcached.cachepolicy.categories import CategoryTable
from semcached.cachepolicy.load import LoadSettings, LoadTarget
from semcached.index.docstore import DocumentStore
from semcached.index.feedback import FeedbackStore
from semcached.index.lmdb_env import LmdbEnvironment
from semcached.service.config import EmbeddingSettings
from semcached.service.semantic.embedding import create_embedder
from semcached.service.semantic.engine import FeedbackReport, Insert, Lookup, SemanticCache
from semcached.service.semantic.feedback import FeedbackBook
from semcached.service.semantic.load import LoadBook

MODEL = "llm"
SHARDS = 64
NAMES = ("static", "adaptive", "budgeted")


class SimClock:
    """Simulated time, moved by the stream."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@dataclass(frozen=True, slots=True)
class Trace:
    """Queue depth every ``step_s`` seconds, and whether that step is in a burst."""

    step_s: float
    depth: np.ndarray
    burst: np.ndarray

    def at(self, t: float) -> int:
        return min(len(self.depth) - 1, int(t // self.step_s))


def bursty_trace(duration_s: float, target: float, args: argparse.Namespace) -> Trace:
    """Calm at 20-60% of ``target``, bursts at 3-5x it covering about ``burst_share``."""
    rng = np.random.default_rng(args.seed + 1)
    steps = int(duration_s // args.report_every_s) + 1
    burst = np.zeros(steps, dtype=bool)
    mean_burst_s = 600.0
    starts = rng.poisson(duration_s * args.burst_share / mean_burst_s)
    for _ in range(starts):
        lo = int(rng.uniform(0, duration_s) // args.report_every_s)
        burst[lo : lo + int(rng.uniform(300, 900) // args.report_every_s)] = True
    calm = target * rng.uniform(0.2, 0.6, steps)
    busy = target * rng.uniform(3.0, 5.0, steps)
    depth = np.where(burst, busy, calm) * rng.lognormal(0.0, 0.15, steps)
    return Trace(args.report_every_s, depth, burst)


@dataclass(slots=True)
class Tally:
    model_calls: int = 0
    burst_calls: int = 0
    hits: int = 0
    right: int = 0
    false_hits: int = 0
    hard_false_hits: int = 0
    relaxed_hits: int = 0
    reports: int = 0


@dataclass(slots=True)
class Run:
    tallies: dict[str, Tally] = field(default_factory=lambda: {n: Tally() for n in NAMES})
    relaxed_steps: int = 0
    steps: int = 0
    burst_steps: int = 0
    lookups: int = 0
    seconds: float = 0.0


def categories(args: argparse.Namespace) -> CategoryTable:
    common: dict[str, object] = {
        "threshold": args.threshold,
        "min_threshold": 0.5,
        "ttl_s": args.ttl_s,
        "max_ttl_s": args.ttl_s * args.ttl_factor,
        "max_entries": 10**7,
        "max_bytes": 1 << 40,
    }
    load: dict[str, object] = {
        "load_min_threshold": args.load_min_threshold,
        "load_ttl_factor": args.ttl_factor,
    }
    return CategoryTable().with_overrides(
        {
            "static": common,
            "adaptive": {**common, **load},
            "budgeted": {**common, **load, "load_max_false_hit_rate": args.budget},
        }
    )


Event = tuple[float, int, bool]  # (time, pair, whether it is the pair's text_b)


def events(pairs: list[Pair], args: argparse.Namespace) -> tuple[list[Event], float]:
    """(time, pair, is text_b) in time order, and the time the last one comes."""
    rng = np.random.default_rng(args.seed)
    first = rng.uniform(0.0, args.duration_s, len(pairs))
    second = first + rng.exponential(args.gap_s, len(pairs))
    out = [(float(t), i, False) for i, t in enumerate(first)]
    out += [(float(t), i, True) for i, t in enumerate(second)]
    out.sort()
    return out, out[-1][0]


async def simulate(pairs: list[Pair], args: argparse.Namespace, workdir: Path) -> Run:
    table = categories(args)
    clock = SimClock()
    executor = ThreadPoolExecutor(2, thread_name_prefix="bench")
    env = LmdbEnvironment(workdir / "lmdb", initial_map_bytes=64 << 20, max_map_bytes=8 << 30)
    embedder = create_embedder(EmbeddingSettings(backend="minilm", cache_entries=0), executor)
    await embedder.open()
    texts = sorted({p.text_a for p in pairs} | {p.text_b for p in pairs})
    vectors = dict(zip(texts, await embed(embedder, texts, args.cache), strict=True))
    target = LoadTarget(MODEL, queue_depth=args.target)
    load = LoadBook(LoadSettings(), targets=lambda _: target, max_models=SHARDS, clock=clock)
    engine = SemanticCache(
        store=DocumentStore(env),
        index_factory=new_index,
        embedder=embedder,
        categories=table,
        dim=embedder.dim,
        executor=executor,
        clock=clock,
        sweep_interval_s=3600,  # expired entries are never served; sweeping changes nothing
        feedback=FeedbackBook(table, FeedbackStore(env, bands=BANDS)),
        load=load,
    )
    await engine.open()
    try:
        return await stream(engine, pairs, vectors, load=load, clock=clock, args=args)
    finally:
        await engine.close()
        await embedder.close()
        env.close()
        executor.shutdown()


async def stream(
    engine: SemanticCache,
    pairs: list[Pair],
    vectors: dict[str, np.ndarray],
    *,
    load: LoadBook,
    clock: SimClock,
    args: argparse.Namespace,
) -> Run:
    order, end = events(pairs, args)
    trace = bursty_trace(end, args.target, args)
    rng = np.random.default_rng(args.seed + 2)
    run = Run()
    reported = -1
    started = time.perf_counter()
    for t, i, asked in order:
        while reported < trace.at(t):  # the gateway's periodic reports up to now
            reported += 1
            clock.now = reported * trace.step_s
            for shard in range(SHARDS):  # a report is per namespace: one for each
                state = load.report(
                    f"shard{shard}", MODEL, queue_depth=float(trace.depth[reported])
                )
            run.steps += 1
            run.relaxed_steps += state.level > 0
            run.burst_steps += bool(trace.burst[reported])
        clock.now = t
        pair = pairs[i]
        text = pair.text_b if asked else pair.text_a
        space = f"shard{i % SHARDS}"
        in_burst = bool(trace.burst[trace.at(t)])
        for name in NAMES:
            tally = run.tallies[name]
            partition = f"{name}:{i}"
            result = await engine.lookup(
                Lookup(space, vector=vectors[text], category=name, partition=partition,
                       model=MODEL)
            )  # fmt: skip
            run.lookups += 1
            if result.hit:
                tally.hits += 1
                # A hit on the pair's own prompt is right; on the other, as labelled.
                right = not asked or pair.positive
                tally.right += right
                tally.false_hits += not right
                tally.hard_false_hits += not right and pair.kind == "hard"
                if name == "budgeted" and result.lookup_id and rng.random() < args.feedback:
                    await engine.feedback(FeedbackReport(right, result.lookup_id), lambda _: True)
                    tally.reports += 1
                continue
            tally.model_calls += 1
            tally.burst_calls += in_burst
            await engine.insert(
                Insert(space, text, b"0", category=name, partition=partition, model=MODEL,
                       vector=vectors[text])
            )  # fmt: skip
    for name, counts in load.counts.items():
        run.tallies[name].relaxed_hits = counts.relaxed_hits
    run.seconds = time.perf_counter() - started
    return run


def rows(run: Run) -> list[dict[str, object]]:
    base = run.tallies["static"]
    out = []
    for name, t in run.tallies.items():
        saved = base.model_calls - t.model_calls
        out.append(
            {
                "policy": name,
                "model_calls": t.model_calls,
                "burst_calls": t.burst_calls,
                "saved": saved,
                "saved_pct": 100.0 * saved / base.model_calls if base.model_calls else 0.0,
                "burst_saved": base.burst_calls - t.burst_calls,
                "burst_saved_pct": 100.0 * (base.burst_calls - t.burst_calls) / base.burst_calls
                if base.burst_calls
                else 0.0,
                "hits": t.hits,
                "relaxed_hits": t.relaxed_hits,
                "false_hits": t.false_hits,
                "false_hits_added": t.false_hits - base.false_hits,
                "hard_false_hits": t.hard_false_hits,
                "hard_added": t.hard_false_hits - base.hard_false_hits,
                "false_hit_rate": t.false_hits / t.hits if t.hits else 0.0,
                "feedback_reports": t.reports,
            }
        )
    return out


def print_table(run: Run, pairs: list[Pair], args: argparse.Namespace) -> None:
    hard = sum(p.kind == "hard" for p in pairs)
    positives = sum(p.positive for p in pairs)
    relaxed = run.relaxed_steps / run.steps if run.steps else 0.0
    bursts = run.burst_steps / run.steps if run.steps else 0.0
    print(
        f"{len(pairs)} pairs ({positives} positives, {hard} hard negatives), "
        f"{len(pairs) * 2} requests per policy over {run.steps * args.report_every_s / 3600:.1f} "
        f"simulated hours; bursts {bursts:.0%} of the time, relaxed (level > 0) {relaxed:.0%}; "
        f"threshold {args.threshold} -> load_min_threshold {args.load_min_threshold}, "
        f"TTL {args.ttl_s:g} s x up to {args.ttl_factor:g}, budget {args.budget:g} "
        f"(feedback on {args.feedback:.0%} of its hits)\n"
    )
    print(
        "| policy | model calls | in bursts | saved | saved in bursts | hits | relaxed hits | "
        "false hits (added) | hard-negative false hits (added) | served false-hit rate |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows(run):
        print(
            f"| {r['policy']} | {r['model_calls']} | {r['burst_calls']} | "
            f"{r['saved']} ({r['saved_pct']:.1f}%) | {r['burst_saved']} "
            f"({r['burst_saved_pct']:.1f}%) | {r['hits']} | {r['relaxed_hits']} | "
            f"{r['false_hits']} (+{r['false_hits_added']}) | {r['hard_false_hits']} "
            f"(+{r['hard_added']}) | {r['false_hit_rate']:.3f} |"
        )


def write_csv(path: Path, run: Run) -> None:
    table = rows(run)
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(table[0]))
        writer.writeheader()
        writer.writerows(table)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--stsb", type=Path, help="folder of sts-{train,dev,test}.csv")
    source.add_argument("--pairs", type=Path, help="JSON array of {text_a, text_b, label}")
    parser.add_argument("--splits", nargs="+", default=["train", "dev", "test"])
    parser.add_argument("--threshold", type=float, default=0.85)
    parser.add_argument("--load-min-threshold", type=float, default=0.78)
    parser.add_argument("--ttl-s", type=float, default=900.0, help="category TTL")
    parser.add_argument("--ttl-factor", type=float, default=3.0, help="load_ttl_factor")
    parser.add_argument("--budget", type=float, default=0.10, help="load_max_false_hit_rate")
    parser.add_argument("--feedback", type=float, default=0.2, help="share of hits reported")
    parser.add_argument("--duration-s", type=float, default=4 * 3600.0)
    parser.add_argument("--gap-s", type=float, default=1200.0, help="mean text_a -> text_b")
    parser.add_argument("--target", type=float, default=16.0, help="queue depth target")
    parser.add_argument("--burst-share", type=float, default=0.25)
    parser.add_argument("--report-every-s", type=float, default=5.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--csv", type=Path, help="also write the table as CSV")
    parser.add_argument(
        "--cache",
        type=Path,
        default=Path(__file__).resolve().parent / "out" / "embeddings",
        help="where embeddings are kept between runs (default bench/out/embeddings)",
    )
    args = parser.parse_args(argv)
    pairs = load_stsb(args.stsb, args.splits) if args.stsb else load_pairs(args.pairs)
    with tempfile.TemporaryDirectory(prefix="semcached-load-") as workdir:
        run = asyncio.run(simulate(pairs, args, Path(workdir)))
    print(f"# {run.lookups} lookups streamed in {run.seconds:.1f} s", file=sys.stderr)
    print_table(run, pairs, args)
    if args.csv is not None:
        write_csv(args.csv, run)
    return 0


if __name__ == "__main__":
    sys.exit(main())
