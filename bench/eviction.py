"""Eviction policies on request traces: miss ratio vs cache size, against libCacheSim's
adaptive and learned policies and Belady, in the same run.

    python bench/eviction.py                                  # every family, 2 seeds (~25 min)
    python bench/eviction.py --quick                          # one seed, no semantic trace
    python bench/eviction.py --traces loop,sized --seeds 3,4  # some families, other seeds
    python bench/eviction.py --trace my.csv --policies lru,s3fifo,belady,onebit
    python bench/eviction.py --sizes 0.01,0.05 --csv          # policy,size_fraction,miss_ratio
    python bench/eviction.py --plot eviction.png              # and a PNG plot

Trace families (without ``--trace``; seeded; one trace per family and seed, 400 k
requests over 10 k objects; bench/_eviction_traces.py): Zipf with alpha 0.6, 0.8, 1.0
and 1.2; hot-set shifts (half of the hot set replaced every 20 k / 40 k requests); scans
(Zipf 1.0, a one-off scan of 2 k new ids every 10 k requests); a loop (Zipf 0.8 mixed
with a 30 % share of a cyclic scan over 3 k ids); bursts (Zipf 0.9 with 40 % of the
requests in short bursts of new ids); sized objects (Zipf 0.9, lognormal sizes, byte
capacity); and the semantic-cache trace (GPTCache's queries with Zipf popularity
replayed through the real SemanticCache; built once and cached under the temp dir;
needs the ``embed`` extra). ``--traces`` picks families by name.

``--trace FILE``: CSV lines ``object_id,size`` (or ``object_id`` alone, unit sizes).
Sizes are fractions of the working set (distinct objects, or their bytes).

Policies (``--policies``, comma-separated):

* libCacheSim (default): ``lru arc s3fifo sieve lirs wtinylfu lecar cacheus lrb
  glcache threelcache belady`` (Belady on the oracleGeneral conversion of the trace,
  which carries next-access times); the anchors are all of them but Belady;
* ours (Python, semcached.cachepolicy; default ``lru-ours s3fifo-ours onebit``):
  ``onebit`` is what ``eviction = "onebit"`` runs (per-bucket discard bits trained
  online from Belady labels of past windows, a two-queue follower, the LRU guard),
  ``onebit-noguard`` the same without the guard; ``onebit-lgbm`` /
  ``onebit-logistic`` the earlier LightGBM / logistic bits in the marking guard;
  ``oracle`` / ``oracle-guard`` (Belady's bits), ``flip10[-guard]`` /
  ``flip30[-guard]`` (10 % / 30 % of Belady's bits flipped); ``markpredict``
  (MARK&PREDICT with true phase bits), ``markpredict-learned``, ``marking``.

The tables show miss ratios and, for our policies, the share of the LRU -> Belady gap
closed, ``(LRU - x) / (LRU - Belady)``; then, per family and size, onebit's worst
row over the seeds against each goal of issue #21, with the worst rows called out;
then the cost per access against ``lru-ours``. Tables, goals and plot:
bench/_eviction_report.py.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from functools import partial
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _eviction_report import Run, check_goals, plot, print_tables
from _eviction_traces import (
    LIBCACHESIM_POLICIES,
    Trace,
    bursty_trace,
    libcachesim_miss_ratios,
    loop_trace,
    read_trace,
    scan_trace,
    shifting_trace,
    sized_trace,
    zipf_trace,
)

from semcached.cachepolicy.belady import belady_sized, belady_unit
from semcached.cachepolicy.bits import OracleBits
from semcached.cachepolicy.bucket_bits import BucketBits, BucketTable
from semcached.cachepolicy.labels import discard_labels, phase_labels
from semcached.cachepolicy.lru import LruPolicy
from semcached.cachepolicy.lru_guard import LruGuard
from semcached.cachepolicy.onebit import DiscardFollower, MarkAndPredict, QueueFollower
from semcached.cachepolicy.predictor import LearnedBits
from semcached.cachepolicy.replay import replay
from semcached.cachepolicy.s3fifo import S3FifoPolicy
from semcached.ext.onebit import GuardedFollower
from semcached.index.eviction import EvictionPolicy

SIZES = (0.01, 0.05, 0.10, 0.20)
REQUESTS = 400_000
OBJECTS = 10_000
SEEDS = (1, 2)
SEED = 7
OURS = (
    *("lru-ours", "s3fifo-ours", "onebit", "onebit-py", "onebit-noguard"),
    *("onebit-lgbm", "onebit-logistic"),
    *("oracle", "oracle-guard", "flip10", "flip10-guard", "flip30", "flip30-guard"),
    *("markpredict", "markpredict-learned", "marking"),
)
ALL_POLICIES = (*LIBCACHESIM_POLICIES, *OURS)
DEFAULT_POLICIES = (*LIBCACHESIM_POLICIES, "lru-ours", "s3fifo-ours", "onebit")

#: Trace family -> builder(seed). Unit sizes except ``sized``.
_SHIFT = {"requests": REQUESTS, "objects": OBJECTS, "hot_change": 0.5}
_MIX = {"requests": REQUESTS, "objects": OBJECTS}
#: Trace family -> builder(seed=...). Unit sizes except ``sized``.
FAMILIES: dict[str, Callable[..., Trace]] = {
    **{f"zipf-{a:g}": partial(zipf_trace, a, REQUESTS, OBJECTS) for a in (0.6, 0.8, 1.0, 1.2)},
    **{
        f"shift-{p // 1000}k": partial(shifting_trace, 1.0, period=p, **_SHIFT)
        for p in (20_000, 40_000)
    },
    "scan": partial(scan_trace, 1.0, scan_every=10_000, scan_length=2_000, **_MIX),
    "loop": partial(loop_trace, 0.8, loop_length=3_000, loop_share=0.3, **_MIX),
    "bursty": partial(bursty_trace, 0.9, burst_share=0.4, **_MIX),
    "sized": partial(sized_trace, 0.9, **_MIX),
}
BUILTIN_TRACES = (*FAMILIES, "semantic")


def builtin_traces(names: list[str], seeds: list[int]) -> list[Trace]:
    """The built-in traces of those families, one per seed (named ``family/sSEED``);
    the semantic trace has one seed."""
    traces = [
        replace(FAMILIES[name](seed=seed), name=f"{name}/s{seed}")
        for name in names
        if name in FAMILIES
        for seed in seeds
    ]
    if "semantic" in names:
        from _eviction_semantic import semantic_trace

        cache = Path(tempfile.gettempdir()) / "semcached-bench" / "semantic-trace.json"
        keys = semantic_trace(cache, requests=30_000, alpha=1.0, seed=SEED)
        traces.append(Trace("semantic", keys, None))
    return traces


def make_policy(name: str, trace: Trace, capacity: int) -> EvictionPolicy:
    """A fresh policy; oracle bits are computed for this trace and capacity."""

    def discard() -> np.ndarray:
        return discard_labels(trace.keys, capacity, trace.sizes)

    if name == "lru-ours":
        return LruPolicy()
    if name == "s3fifo-ours":
        return S3FifoPolicy()
    sized = trace.sizes is not None
    if name == "onebit":  # what eviction = "onebit" runs (compiled), labelling inline
        return GuardedFollower(BucketTable(background=False, sized=sized))
    if name in ("onebit-py", "onebit-noguard"):  # its pure-Python twin; without the guard
        follower = QueueFollower(BucketBits(background=False, sized=sized))
        return LruGuard(follower) if name == "onebit-py" else follower
    if name in ("onebit-lgbm", "onebit-logistic"):
        model = "logistic" if name == "onebit-logistic" else "lightgbm"
        bits = LearnedBits(model=model, background=False, seed=SEED)
        return DiscardFollower(bits, guard=True, seed=SEED)
    if name.startswith(("oracle", "flip")):
        flip = 0.0 if name.startswith("oracle") else int(name[4:6]) / 100
        oracle = OracleBits(discard(), flip=flip, seed=SEED)
        return DiscardFollower(oracle, guard=name.endswith("-guard"), seed=SEED)
    if name == "markpredict":
        return MarkAndPredict(OracleBits(phase_labels(trace.keys, capacity)), seed=SEED)
    if name == "markpredict-learned":
        learned = LearnedBits(label="phase", background=False, seed=SEED)
        return MarkAndPredict(learned, seed=SEED)
    if name == "marking":
        return MarkAndPredict(OracleBits(np.zeros(len(trace.keys), dtype=bool)), seed=SEED)
    raise SystemExit(f"unknown policy {name!r}; known: {', '.join(ALL_POLICIES)}")


@contextlib.contextmanager
def quiet_stderr() -> Iterator[None]:
    """libCacheSim logs to the process's stderr; keep it off the table."""
    saved = os.dup(2)
    with open(os.devnull, "wb") as devnull:
        os.dup2(devnull.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def run_trace(trace: Trace, fractions: list[float], policies: list[str]) -> list[Run]:
    ws = trace.working_set()
    capacities = {f: max(2, round(f * ws)) for f in fractions}
    n = len(trace.keys)
    runs: list[Run] = []
    lcs_names = [p for p in policies if p in LIBCACHESIM_POLICIES]
    if lcs_names:
        with tempfile.TemporaryDirectory(prefix="semcached-evict-") as tmp, quiet_stderr():
            started = time.perf_counter()
            ratios = libcachesim_miss_ratios(trace, capacities.values(), lcs_names, Path(tmp))
            per_run = (time.perf_counter() - started) / max(len(ratios), 1)
        for f, cap in capacities.items():
            runs.extend(Run(trace.name, p, f, cap, ratios[p, cap], per_run, n) for p in lcs_names)
        if "belady" in lcs_names:  # our exact Belady must agree with libCacheSim's
            for f, cap in capacities.items():
                if trace.sizes is None:
                    ours = belady_unit(trace.keys, cap).misses
                else:
                    ours = belady_sized(trace.keys, trace.sizes, cap).misses
                if abs(ours / n - ratios["belady", cap]) > 1e-9:
                    print(
                        f"# warning: {trace.name} at {f:g}: our Belady {ours / n:.6f} != "
                        f"libCacheSim {ratios['belady', cap]:.6f}",
                        file=sys.stderr,
                    )
    for name in (p for p in policies if p not in LIBCACHESIM_POLICIES):
        for f, cap in capacities.items():
            policy = make_policy(name, trace, cap)
            started = time.perf_counter()
            misses = replay(policy, trace.keys, cap, trace.sizes)
            seconds = time.perf_counter() - started
            runs.append(Run(trace.name, name, f, cap, misses / n, seconds, n))
            print(
                f"# {trace.name} {name} {f:g}: {misses / n:.4f} ({seconds:.1f} s)", file=sys.stderr
            )
    return runs


def prediction_cost(trace: Trace, fraction: float, repeats: int = 3) -> None:
    """Per-access cost of ``onebit`` (compiled) and its pure-Python twin beside
    ``lru-ours`` on one trace and size, best of ``repeats``: the whole replay
    (labelling inline), the labelling alone (a background thread in the daemon) and
    what is left, the request path; and how often the guard followed LRU."""
    cap = max(2, round(fraction * trace.working_set()))
    sized = trace.sizes is not None
    n = len(trace.keys)
    rows: list[tuple[str, float, float]] = []  # (policy, whole replay s, labelling s)

    def timed(
        make: Callable[[], EvictionPolicy], table: Callable[[EvictionPolicy], float]
    ) -> tuple[float, float]:
        best = (math.inf, 0.0)
        for _ in range(repeats):
            policy = make()
            started = time.perf_counter()
            replay(policy, trace.keys, cap, trace.sizes)
            best = min(best, (time.perf_counter() - started, table(policy)))
        return best

    lru_s, _ = timed(LruPolicy, lambda p: 0.0)
    compiled, compiled_train = timed(
        lambda: GuardedFollower(BucketTable(background=False, sized=sized)),
        lambda p: p.trainer.train_seconds,  # type: ignore[attr-defined]
    )
    python, python_train = timed(
        lambda: LruGuard(QueueFollower(BucketBits(background=False, sized=sized))),
        lambda p: p.inner._predictor.train_seconds,  # type: ignore[attr-defined]
    )
    rows = [
        ("onebit (compiled)", compiled, compiled_train),
        ("onebit-py (twin)", python, python_train),
    ]
    print(f"\n### Cost per access ({trace.name}, size {fraction:g}, {n} requests)\n")
    print("| policy | whole replay µs (÷ lru-ours) | labelling µs | request path µs (÷ lru-ours) |")
    print("|---|---|---|---|")
    print(f"| lru-ours | {1e6 * lru_s / n:.2f} (1.00x) | | {1e6 * lru_s / n:.2f} (1.00x) |")
    for name, whole, train in rows:
        path = whole - train
        print(
            f"| {name} | {1e6 * whole / n:.2f} ({whole / lru_s:.2f}x) | {1e6 * train / n:.2f} | "
            f"{1e6 * path / n:.2f} ({path / lru_s:.2f}x) |"
        )
    print(
        "\nThe labelling runs in a background thread in the daemon (one per process); the"
        "\nbench runs it inline so that runs are deterministic."
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--trace", type=Path, help="CSV trace: object_id[,size] per line")
    ap.add_argument("--policies", default=",".join(DEFAULT_POLICIES))
    ap.add_argument("--sizes", default=",".join(f"{s:g}" for s in SIZES))
    ap.add_argument("--csv", action="store_true", help="print policy,size_fraction,miss_ratio")
    ap.add_argument("--plot", type=Path, help="write a PNG plot of miss ratio vs size here")
    ap.add_argument(
        "--traces",
        default=",".join(BUILTIN_TRACES),
        help="built-in traces to run (without --trace): " + ", ".join(BUILTIN_TRACES),
    )
    ap.add_argument(
        "--seeds",
        default=",".join(str(x) for x in SEEDS),
        help="seeds of the synthetic traces: one trace per family and seed",
    )
    ap.add_argument("--quick", action="store_true", help="one seed, no semantic trace")
    ap.add_argument("--no-cost", action="store_true", help="skip the cost section")
    args = ap.parse_args(argv)
    policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    for p in policies:
        if p not in ALL_POLICIES:
            ap.error(f"unknown policy {p!r}; known: {', '.join(ALL_POLICIES)}")
    fractions = [float(s) for s in args.sizes.split(",")]
    if any(not 0 < f <= 1 for f in fractions):
        ap.error("sizes are fractions of the working set in (0, 1]")
    names = [t.strip() for t in args.traces.split(",") if t.strip()]
    for t in names:
        if t not in BUILTIN_TRACES:
            ap.error(f"unknown trace {t!r}; built in: {', '.join(BUILTIN_TRACES)}")
    seeds = [int(x) for x in args.seeds.split(",") if x.strip()]
    if args.quick:
        seeds = seeds[:1]
        names = [t for t in names if t != "semantic"]
    traces = [read_trace(args.trace)] if args.trace else builtin_traces(names, seeds)
    runs: list[Run] = []
    for trace in traces:
        trace_runs = run_trace(trace, fractions, policies)
        runs.extend(trace_runs)
        if args.csv:
            print(
                f"# trace {trace.name}: {len(trace.keys)} requests, working set "
                f"{trace.working_set()}"
            )
            for r in trace_runs:
                print(f"{r.policy},{r.fraction:g},{r.miss_ratio:.6f}")
            sys.stdout.flush()
    if not args.csv:
        print(f"# {len(traces)} traces; sizes are fractions of the working set (capacity)")
        for t in traces:
            print(f"# {t.name}: {len(t.keys)} requests, working set {t.working_set()}")
        print("# n/a: libCacheSim's S3FIFO aborts or misses every request below 20 slots")
        print_tables(runs, fractions, policies)
        check_goals(runs, fractions)
        if not args.no_cost and "onebit" in policies:
            prediction_cost(traces[0], 0.05)
    if args.plot:
        plot(runs, args.plot)
        print(f"\n# plot written to {args.plot}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
