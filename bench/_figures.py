"""One CSV format for the benches' ``--csv`` output, read by bench/check_regression.py.

Each line is one measured figure beside its baseline from the same run:
``bench,case,metric,ours,baseline,ratio,better``. ``ratio`` is ours / baseline;
``better`` says which way the ratio should move (``higher`` for throughput, ``lower``
for a time or a size), so a regression is a ratio that moved the other way.
Absolute figures on a shared machine are noisy; the ratios are what is compared.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["FIELDS", "Figure", "read_figures", "write_figures"]

FIELDS = ("bench", "case", "metric", "ours", "baseline", "ratio", "better")


@dataclass(frozen=True, slots=True)
class Figure:
    bench: str
    case: str  # e.g. "100000 vector-in c16"
    metric: str  # e.g. "req/s"
    ours: float
    baseline: float
    better: str = "higher"  # or "lower"

    @property
    def ratio(self) -> float:
        return self.ours / self.baseline if self.baseline else math.nan

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.bench, self.case, self.metric)


def write_figures(path: Path, figures: Iterable[Figure]) -> None:
    """Append ``figures`` to ``path`` (the header first when the file is new)."""
    new = not path.exists() or path.stat().st_size == 0
    with path.open("a", newline="") as f:
        out = csv.writer(f)
        if new:
            out.writerow(FIELDS)
        for x in figures:
            out.writerow(
                (
                    x.bench,
                    x.case,
                    x.metric,
                    f"{x.ours:.6g}",
                    f"{x.baseline:.6g}",
                    f"{x.ratio:.4f}",
                    x.better,
                )
            )


def read_figures(path: Path) -> list[Figure]:
    with path.open(newline="") as f:
        return [
            Figure(
                r["bench"],
                r["case"],
                r["metric"],
                float(r["ours"]),
                float(r["baseline"]),
                r["better"],
            )
            for r in csv.DictReader(f)
        ]
