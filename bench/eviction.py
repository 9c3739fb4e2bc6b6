"""Eviction policies on request traces: miss ratio vs cache size, against LRU, ARC,
S3-FIFO, SIEVE and Belady (libCacheSim) in the same run.

    python bench/eviction.py                                  # all traces, all policies
    python bench/eviction.py --plot eviction.png              # and a PNG plot
    python bench/eviction.py --trace my.csv --policies lru,s3fifo,belady,onebit
    python bench/eviction.py --sizes 0.01,0.05 --csv          # policy,size_fraction,miss_ratio

Traces (without ``--trace``; seeded, unit sizes): Zipf with alpha 0.8, 1.0 and 1.2;
a shifting-popularity trace (half of the hot set is replaced every 20 k requests);
a scan-polluted trace (Zipf 1.0, a one-off scan of 2 k new ids every 10 k requests);
and a semantic-cache trace (GPTCache's mock_data queries with Zipf popularity
replayed through the real SemanticCache; built once, cached under the temp dir; it
needs the ``embed`` extra). ``--traces`` picks some of them by name.

``--trace FILE``: CSV lines ``object_id,size`` (or ``object_id`` alone, unit sizes).
Sizes are fractions of the working set (distinct objects, or their bytes).

Policies (``--policies``, comma-separated; default all but ``markpredict-learned``):

* libCacheSim: ``lru arc s3fifo sieve belady`` (Belady on the oracleGeneral
  conversion of the trace, which carries next-access times);
* ours (Python, semcached.cachepolicy): ``lru-ours s3fifo-ours`` (the daemon's LRU
  and S3-FIFO); ``onebit`` (learned discard bits + guard: what ``eviction =
  "onebit"`` runs), ``onebit-noguard``, ``onebit-logistic`` (logistic regression
  instead of LightGBM, + guard); ``oracle`` / ``oracle-guard`` (Belady's bits),
  ``flip10[-guard]`` / ``flip30[-guard]`` (10 % / 30 % of Belady's bits flipped);
  ``markpredict`` (MARK&PREDICT with true phase bits), ``markpredict-learned``,
  ``marking`` (MARK&PREDICT with no information: randomized marking).

The table shows miss ratios and, for our policies, the share of the LRU -> Belady gap
closed, ``(LRU - x) / (LRU - Belady)``; then the issue's goals, met or not; then the
cost of a learned prediction per access. The traces are built in bench/_eviction_traces.py
(the semantic one in bench/_eviction_semantic.py), the tables, goals and plot written by
bench/_eviction_report.py.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _eviction_report import Run, check_goals, plot, print_tables
from _eviction_traces import (
    LIBCACHESIM_POLICIES,
    Trace,
    libcachesim_miss_ratios,
    read_trace,
    scan_trace,
    shifting_trace,
    zipf_trace,
)

from semcached.cachepolicy.belady import belady_sized, belady_unit
from semcached.cachepolicy.bits import OracleBits
from semcached.cachepolicy.features import FeatureTracker
from semcached.cachepolicy.labels import discard_labels, phase_labels
from semcached.cachepolicy.lru import LruPolicy
from semcached.cachepolicy.onebit import DiscardFollower, MarkAndPredict
from semcached.cachepolicy.predictor import LearnedBits
from semcached.cachepolicy.replay import replay
from semcached.cachepolicy.s3fifo import S3FifoPolicy
from semcached.index.eviction import EvictionPolicy

SIZES = (0.01, 0.05, 0.10, 0.20)
REQUESTS = 200_000
OBJECTS = 10_000
SEED = 7
OURS = (
    *("lru-ours", "s3fifo-ours", "onebit", "onebit-noguard", "onebit-logistic"),
    *("oracle", "oracle-guard", "flip10", "flip10-guard", "flip30", "flip30-guard"),
    *("markpredict", "markpredict-learned", "marking"),
)
ALL_POLICIES = (*LIBCACHESIM_POLICIES, *OURS)
DEFAULT_POLICIES = tuple(p for p in ALL_POLICIES if p != "markpredict-learned")


BUILTIN_TRACES = ("zipf-0.8", "zipf-1", "zipf-1.2", "shifting-1", "scan-1", "semantic")


def builtin_traces(names: list[str]) -> list[Trace]:
    """The built-in traces of those names, in :data:`BUILTIN_TRACES` order."""
    traces = [zipf_trace(a, REQUESTS, OBJECTS, SEED) for a in (0.8, 1.0, 1.2)]
    traces.append(
        shifting_trace(
            1.0, requests=REQUESTS, objects=OBJECTS, period=20_000, hot_change=0.5, seed=SEED
        )
    )
    traces.append(
        scan_trace(
            1.0, requests=REQUESTS, objects=OBJECTS, scan_every=10_000, scan_length=2_000, seed=SEED
        )
    )
    traces = [t for t in traces if t.name in names]
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
    if name in ("onebit", "onebit-noguard", "onebit-logistic"):
        model = "logistic" if name == "onebit-logistic" else "lightgbm"
        bits = LearnedBits(model=model, background=False, seed=SEED)
        return DiscardFollower(bits, guard=name != "onebit-noguard", seed=SEED)
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


def prediction_cost(trace: Trace, fraction: float) -> None:
    """Per-access cost of the learned bits in one run of ``onebit``: the feature row
    every access computes, the batched model calls amortised over all accesses, and
    the labelling + fitting (a background thread in the daemon, inline here)."""
    cap = max(2, round(fraction * trace.working_set()))
    bits = LearnedBits(background=False, seed=SEED)
    policy = DiscardFollower(bits, guard=True, seed=SEED)
    replay(policy, trace.keys, cap, trace.sizes)
    tracker = FeatureTracker()
    keys = trace.keys[:50_000]
    started = time.perf_counter()
    for k in keys:
        tracker.access(k, 1, None)
    row_us = 1e6 * (time.perf_counter() - started) / len(keys)
    n = bits.observed
    print(f"\n### Learned-bit cost ({trace.name}, size {fraction:g}, LightGBM)\n")
    print(f"- feature row, on every access: {row_us:.2f} µs")
    print(
        f"- model calls: {bits.predict_calls} for {n} accesses ({bits.predicted_rows} rows, "
        f"{bits.predicted_rows / max(bits.predict_calls, 1):.1f} per call): "
        f"{1e6 * bits.predict_seconds / n:.2f} µs per access amortised, "
        f"{1e6 * bits.predict_seconds / max(bits.predict_calls, 1):.0f} µs per call"
    )
    print(
        f"- labelling + fitting ({bits.fits} fits, {bits.labelled} labels; background thread "
        f"in the daemon): {1e6 * bits.train_seconds / n:.2f} µs per access amortised"
    )
    for batch in (1, 8, 64):
        obs = [bits.observe(k, 1, None, cap) for k in keys[:batch]]
        reps = max(1, 2000 // batch)
        started = time.perf_counter()
        for _ in range(reps):
            bits.predict(obs)
        us = 1e6 * (time.perf_counter() - started) / (reps * batch)
        print(f"- one model call, batch of {batch}: {us:.1f} µs per row")


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
    ap.add_argument("--no-cost", action="store_true", help="skip the prediction-cost section")
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
    traces = [read_trace(args.trace)] if args.trace else builtin_traces(names)
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
        check_goals(runs)
        if not args.no_cost and "onebit" in policies:
            prediction_cost(traces[0], 0.05)
    if args.plot:
        plot(runs, args.plot)
        print(f"\n# plot written to {args.plot}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
