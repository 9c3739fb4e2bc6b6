"""The results of bench/eviction.py and their output: one :class:`Run` per trace,
policy and size; the miss-ratio tables with the share of the LRU -> Belady gap
closed, the issue's goals, and the plot.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from _eviction_traces import LIBCACHESIM_POLICIES

GOAL_TRACES = ("zipf-0.8", "zipf-1", "zipf-1.2", "shifting-1")
GOAL_SIZES = (0.05, 0.10)


@dataclass(frozen=True)
class Run:
    trace: str
    policy: str
    fraction: float
    capacity: int
    miss_ratio: float
    seconds: float
    requests: int  # the trace's length


def gap_closed(runs: list[Run], trace: str, policy: str, fraction: float) -> float | None:
    by = {
        (r.policy, r.fraction): r.miss_ratio
        for r in runs
        if r.trace == trace and not math.isnan(r.miss_ratio)
    }
    lru, opt, x = (
        by.get(("lru", fraction)),
        by.get(("belady", fraction)),
        by.get((policy, fraction)),
    )
    if lru is None or opt is None or x is None or lru - opt <= 1e-12:
        return None
    return (lru - x) / (lru - opt)


def print_tables(runs: list[Run], fractions: list[float], policies: list[str]) -> None:
    for trace in dict.fromkeys(r.trace for r in runs):
        by = {(r.policy, r.fraction): r for r in runs if r.trace == trace}
        caps = {r.fraction: r.capacity for r in runs if r.trace == trace}
        print(f"\n### {trace}: miss ratio (share of the LRU -> Belady gap closed)\n")
        head = " | ".join(f"{f:g} ({caps[f]})" for f in fractions)
        print(f"| policy | {head} | µs/access |")
        print("|---|" + "---|" * len(fractions) + "---|")
        for p in policies:
            cells = []
            for f in fractions:
                r = by.get((p, f))
                if r is None:
                    cells.append("")
                    continue
                if math.isnan(r.miss_ratio):
                    cells.append("n/a")
                    continue
                g = gap_closed(runs, trace, p, f) if p not in ("lru", "belady") else None
                cells.append(f"{r.miss_ratio:.4f}" + (f" ({g:+.0%})" if g is not None else ""))
            n_runs = [by[p, f] for f in fractions if (p, f) in by]
            cost = ""
            if n_runs and p not in LIBCACHESIM_POLICIES:
                cost = f"{_us_per_access(n_runs):.1f}"
            print(f"| {p} | " + " | ".join(cells) + f" | {cost} |")


def _us_per_access(runs: list[Run]) -> float:
    total = sum(r.seconds for r in runs)
    return 1e6 * total / (len(runs) * runs[0].requests)


def check_goals(runs: list[Run]) -> None:
    """The issue's goals, each met or not, with the numbers."""
    by = {
        (r.trace, r.policy, r.fraction): r.miss_ratio for r in runs if not math.isnan(r.miss_ratio)
    }
    traces = list(dict.fromkeys(r.trace for r in runs))
    fractions = sorted({r.fraction for r in runs})
    print("\n### Goals\n")

    def verdict(ok: bool) -> str:
        return "met" if ok else "MISSED"

    lines: list[str] = []
    goal_cells = [
        (t, f) for t in GOAL_TRACES for f in GOAL_SIZES if (t, "onebit", f) in by and t in traces
    ]
    if goal_cells:
        gaps = [(t, f, gap_closed(runs, t, "onebit", f)) for t, f in goal_cells]
        ok = all(g is not None and g >= 0.40 for _, _, g in gaps)
        detail = ", ".join(f"{t}@{f:g}: {g:.0%}" for t, f, g in gaps if g is not None)
        lines.append(f"- onebit closes >= 40 % of the LRU->Belady gap: {verdict(ok)} ({detail})")
        beats = [
            (t, f, by[t, "onebit", f], by[t, "s3fifo", f])
            for t, f in goal_cells
            if (t, "s3fifo", f) in by
        ]
        ok = all(a < b for _, _, a, b in beats)
        detail = ", ".join(f"{t}@{f:g}: {a:.4f} vs {b:.4f}" for t, f, a, b in beats)
        lines.append(f"- onebit beats S3-FIFO there: {verdict(ok)} ({detail})")
    for policy, limit, what in (
        ("onebit", 0.02, "onebit is never worse than LRU by more than 2 % (relative)"),
        ("flip30-guard", 0.10, "with 30 % flipped bits (+ guard) within 10 % of LRU"),
        ("flip30", 0.10, "  (the same without the guard, for comparison)"),
    ):
        worst = [
            (by[t, policy, f] / by[t, "lru", f] - 1, t, f)
            for t in traces
            for f in fractions
            if (t, policy, f) in by and (t, "lru", f) in by
        ]
        if worst:
            rel, t, f = max(worst)
            lines.append(
                f"- {what}: {verdict(rel <= limit)} (worst {rel:+.1%} vs LRU, {t} at {f:g})"
            )
    print("\n".join(lines) if lines else "(no goal applies to the policies run)")


def plot(runs: list[Run], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    traces = list(dict.fromkeys(r.trace for r in runs))
    cols = min(3, len(traces))
    rows = (len(traces) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(5.5 * cols, 4 * rows), squeeze=False)
    shown = (
        *("lru", "arc", "s3fifo", "sieve", "belady"),
        *("onebit", "onebit-noguard", "oracle", "flip30-guard", "markpredict"),
    )
    for ax, trace in zip(axes.flat, traces, strict=False):
        for policy in dict.fromkeys(r.policy for r in runs):
            if policy not in shown:
                continue
            pts = sorted(
                (r.fraction, r.miss_ratio) for r in runs if r.trace == trace and r.policy == policy
            )
            style = "--" if policy in LIBCACHESIM_POLICIES else "-"
            ax.plot([p[0] for p in pts], [p[1] for p in pts], style, marker="o", label=policy)
        ax.set_title(trace)
        ax.set_xscale("log")
        ax.set_xlabel("cache size (fraction of working set)")
        ax.set_ylabel("miss ratio")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(traces) :]:
        ax.set_visible(False)
    axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
