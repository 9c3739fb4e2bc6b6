"""The results of bench/eviction.py and their output: one :class:`Run` per trace,
policy and size; the miss-ratio tables with the share of the LRU -> Belady gap
closed, the issue's goals, and the plot.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from _eviction_traces import ANCHORS, LIBCACHESIM_POLICIES


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


def _family(trace: str) -> str:
    return trace.split("/", 1)[0]


def check_goals(runs: list[Run], fractions: list[float], policy: str = "onebit") -> None:
    """Issue #21's goals for ``policy`` in every row (trace, size): closes >= 40 % of
    the LRU -> Belady gap, beats S3-FIFO, within 2 points of the best anchor, never
    worse than LRU by more than 1 % of requests. Per family and size the worst seed's
    figures; then the worst rows of the whole suite."""
    by = {
        (r.trace, r.policy, r.fraction): r.miss_ratio for r in runs if not math.isnan(r.miss_ratio)
    }
    traces = [t for t in dict.fromkeys(r.trace for r in runs) if (t, policy, fractions[0]) in by]
    if not traces:
        print("\n(no goal applies to the policies run)")
        return
    rows = []  # (trace, fraction, gap, vs_s3fifo, vs_best, best_name, vs_lru)
    for t in traces:
        for f in fractions:
            x, lru = by.get((t, policy, f)), by.get((t, "lru", f))
            if x is None or lru is None:
                continue
            anchors = [(by[t, a, f], a) for a in ANCHORS if (t, a, f) in by]
            best, best_name = min(anchors)
            s3 = by.get((t, "s3fifo", f), math.nan)
            gap = gap_closed(runs, t, policy, f)
            rows.append((t, f, gap, x - s3, x - best, best_name, x - lru))
    print(f"\n### Goals for {policy}, per family and size: the worst seed\n")
    print("gap: share of the LRU -> Belady gap closed (goal >= 40 %); vs S3-FIFO, vs best")
    print("anchor, vs LRU: miss-ratio points (goals < 0, <= +2, <= +1)\n")
    print("| family | size | gap | vs S3-FIFO | vs best anchor | vs LRU | goals met |")
    print("|---|---|---|---|---|---|---|")
    met_all = 0
    cells = 0
    for family in dict.fromkeys(_family(t) for t, *_ in rows):
        for f in fractions:
            mine = [r for r in rows if _family(r[0]) == family and r[1] == f]
            if not mine:
                continue
            gap = min((r[2] for r in mine if r[2] is not None), default=math.nan)
            vs_s3 = max(r[3] for r in mine)
            worst_best = max(mine, key=lambda r: r[4])
            vs_lru = max(r[6] for r in mine)
            ok = [gap >= 0.40, vs_s3 < 0, worst_best[4] <= 0.02, vs_lru <= 0.01]
            cells += 1
            met_all += all(ok)
            print(
                f"| {family} | {f:g} | {gap:.0%} | {100 * vs_s3:+.1f} | "
                f"{100 * worst_best[4]:+.1f} ({worst_best[5]}) | {100 * vs_lru:+.1f} | "
                f"{sum(ok)}/4 |"
            )
    print(f"\nAll four goals met in {met_all} of {cells} family x size cells.\n")
    print("Worst rows of the suite:\n")
    worst = (
        ("gap closed", min(rows, key=lambda r: r[2] if r[2] is not None else math.inf), 2, 0.40),
        ("vs S3-FIFO", max(rows, key=lambda r: r[3]), 3, 0.0),
        ("vs best anchor", max(rows, key=lambda r: r[4]), 4, 0.02),
        ("vs LRU (the guard)", max(rows, key=lambda r: r[6]), 6, 0.01),
    )
    for what, row, i, limit in worst:
        value = row[i]
        if i == 2:
            verdict = "met" if value is not None and value >= limit else "MISSED"
            shown = "n/a" if value is None else f"{value:.0%}"
        else:
            verdict = "met" if value <= limit and (i != 3 or value < 0) else "MISSED"
            shown = f"{100 * value:+.2f} points"
        extra = f" (best: {row[5]})" if i == 4 else ""
        print(f"- {what}: {shown} at {row[0]}, size {row[1]:g}{extra}: {verdict}")


def plot(runs: list[Run], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    traces = list(dict.fromkeys(r.trace for r in runs))
    cols = min(3, len(traces))
    rows = (len(traces) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(5.5 * cols, 4 * rows), squeeze=False)
    shown = (
        *("lru", "arc", "s3fifo", "wtinylfu", "lirs", "cacheus", "lrb", "belady"),
        *("onebit", "onebit-noguard", "oracle"),
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
