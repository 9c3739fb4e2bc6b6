"""bench/eviction.py's trace families and its goal report."""

from __future__ import annotations

import pytest
from _eviction_report import Run, check_goals
from _eviction_traces import (
    ANCHORS,
    bursty_trace,
    loop_trace,
    sized_trace,
)
from eviction import FAMILIES, builtin_traces


def test_every_family_is_seeded_and_distinct_per_seed() -> None:
    traces = builtin_traces(["zipf-1", "loop"], [1, 2])
    assert [t.name for t in traces] == ["zipf-1/s1", "zipf-1/s2", "loop/s1", "loop/s2"]
    again = builtin_traces(["zipf-1"], [1])[0]
    assert again.keys == traces[0].keys
    assert traces[0].keys != traces[1].keys
    assert set(FAMILIES) >= {"zipf-0.6", "shift-20k", "scan", "loop", "bursty", "sized"}


def test_loop_requests_cycle_over_their_own_ids() -> None:
    trace = loop_trace(0.8, requests=20_000, objects=1000, loop_length=300, loop_share=0.3, seed=1)
    loop = [k for k in trace.keys if k >= 1000]
    assert 0.25 < len(loop) / len(trace.keys) < 0.35
    assert loop[:600] == [1000 + i % 300 for i in range(600)]


def test_sized_objects_keep_their_size() -> None:
    trace = sized_trace(0.9, requests=5000, objects=500, seed=1)
    assert trace.sizes is not None
    size_of: dict[int, int] = {}
    for key, size in zip(trace.keys, trace.sizes, strict=True):
        assert size_of.setdefault(key, size) == size
        assert 64 <= size <= 4 << 20


def test_bursts_are_new_ids_requested_a_few_times_close_together() -> None:
    trace = bursty_trace(0.9, requests=20_000, objects=1000, burst_share=0.4, seed=1)
    assert len(trace.keys) == 20_000
    burst = [k for k in trace.keys if k >= 1000]
    assert len(burst) == 8000
    positions: dict[int, list[int]] = {}
    for i, key in enumerate(trace.keys):
        if key >= 1000:
            positions.setdefault(key, []).append(i)
    spans = sorted(p[-1] - p[0] for p in positions.values() if len(p) > 1)
    assert spans[len(spans) // 2] < 5000  # a burst is short next to the trace


def runs_for(trace: str, onebit: float, s3fifo: float, best: float) -> list[Run]:
    def run(policy: str, miss: float) -> Run:
        return Run(trace, policy, 0.05, 100, miss, 1.0, 1000)

    out = [run("lru", 0.50), run("belady", 0.30), run("onebit", onebit), run("s3fifo", s3fifo)]
    out.append(run(next(a for a in ANCHORS if a not in ("lru", "s3fifo")), best))
    return out


def test_goals_take_the_worst_seed_and_name_the_worst_rows(
    capsys: pytest.CaptureFixture[str],
) -> None:
    runs = runs_for("zipf-1/s1", 0.38, 0.40, 0.37) + runs_for("zipf-1/s2", 0.45, 0.40, 0.39)
    check_goals(runs, [0.05])
    out = capsys.readouterr().out
    # Worst seed: gap (0.50 - 0.45) / 0.20 = 25 %, +5.0 vs S3-FIFO, +6.0 vs best anchor.
    assert "| zipf-1 | 0.05 | 25% | +5.0 | +6.0 " in out
    assert "All four goals met in 0 of 1" in out
    assert "- vs S3-FIFO: +5.00 points at zipf-1/s2, size 0.05: MISSED" in out
    assert "- vs LRU (the guard): -5.00 points at zipf-1/s2, size 0.05: met" in out


def test_a_row_meeting_every_goal_is_counted(capsys: pytest.CaptureFixture[str]) -> None:
    check_goals(runs_for("scan/s1", 0.38, 0.40, 0.39), [0.05])
    out = capsys.readouterr().out
    assert "| scan | 0.05 | 60% | -2.0 | -1.0 " in out
    assert "All four goals met in 1 of 1" in out
