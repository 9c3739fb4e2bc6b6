"""Catch speed regressions: fresh ``--quick`` ratios beside the last committed ones.

    python bench/check_regression.py                  # run the quick benches, compare
    python bench/check_regression.py --fresh run.csv  # compare a file already written
    python bench/check_regression.py --update         # run, then record as the reference
    python bench/check_regression.py --cache /tmp/bc  # keep the 100k data directories

Every bench that takes ``--csv`` writes lines of bench/_figures.py's format: a figure
of semcached beside its baseline measured in the same run, and their ratio. This
script runs each bench in :data:`BENCHES` with ``--quick --csv`` (or reads
``--fresh``), joins the lines with the reference file (``bench/results/quick.csv``,
committed with the change that produced it) on (bench, case, metric), and prints
reference ratio, fresh ratio and the change. A ratio that moved the wrong way by more
than ``--tolerance`` (default 15%: a shared two-core machine moves ratios by about
that much from run to run) is flagged, and the exit status is 1 if any was.

Ratios, not absolute times: the baseline runs beside semcached on the same machine in
the same minute, so a slower machine moves both. Not run in CI (minutes of load, and
timing is not a test); run it before and after a change on the request path.
"""

from __future__ import annotations

import argparse
import math
import subprocess
import sys
import tempfile
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

from _figures import Figure, read_figures  # noqa: E402

REFERENCE = BENCH_DIR / "results" / "quick.csv"
BENCHES = ("semantic_http.py", "semantic_restart.py", "semantic_memory.py", "kv_store.py")
"""The benches whose ``--quick --csv`` run is compared (each prints its own table too)."""


def run_benches(out: Path, only: list[str] | None, cache: Path | None) -> None:
    for name in BENCHES:
        if only and name not in only:
            continue
        argv = [str(BENCH_DIR / name), "--quick", "--csv", str(out)]
        if cache is not None and name.startswith("semantic_"):
            argv += ["--cache", str(cache)]  # their data directories, built once
        print(f"# running {' '.join(argv)}", flush=True)
        subprocess.run([sys.executable, *argv], check=True, stdout=subprocess.DEVNULL)


def change(reference: Figure, fresh: Figure) -> float:
    """The fresh ratio's change over the reference one, positive when it got better."""
    if not (reference.ratio > 0 and fresh.ratio > 0):
        return math.nan
    moved = fresh.ratio / reference.ratio - 1.0
    return moved if fresh.better == "higher" else -moved


def compare(reference: list[Figure], fresh: list[Figure], tolerance: float) -> int:
    """Print the table; the number of regressions beyond ``tolerance``."""
    before = {f.key: f for f in reference}
    regressions = 0
    print("| bench | case | metric | better | reference ratio | fresh ratio | change | |")
    print("|---|---|---|---|---|---|---|---|")
    for f in fresh:
        ref = before.pop(f.key, None)
        if ref is None:
            print(f"| {f.bench} | {f.case} | {f.metric} | {f.better} | (new) | {f.ratio:.3f} | | |")
            continue
        moved = change(ref, f)
        flag = " "
        if moved < -tolerance:
            flag = " REGRESSION "
            regressions += 1
        print(
            f"| {f.bench} | {f.case} | {f.metric} | {f.better} | {ref.ratio:.3f} "
            f"| {f.ratio:.3f} | {moved:+.0%} |{flag}|"
        )
    for ref in before.values():
        print(
            f"| {ref.bench} | {ref.case} | {ref.metric} | {ref.better} | {ref.ratio:.3f} "
            "| (not run) | | |"
        )
    return regressions


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--fresh", type=Path, help="compare this CSV instead of running benches")
    p.add_argument("--reference", type=Path, default=REFERENCE)
    p.add_argument("--tolerance", type=float, default=0.15)
    p.add_argument("--only", nargs="*", help=f"run only these of {', '.join(BENCHES)}")
    p.add_argument("--update", action="store_true", help="write the fresh run as the reference")
    p.add_argument("--cache", type=Path, default=None, help="--cache DIR for the semantic benches")
    a = p.parse_args(argv)
    if a.fresh is not None:
        fresh_path = a.fresh
    else:
        fresh_path = Path(tempfile.mkdtemp(prefix="semcached-regression-")) / "quick.csv"
        run_benches(fresh_path, a.only, a.cache)
    fresh = read_figures(fresh_path)
    if a.update:
        a.reference.parent.mkdir(parents=True, exist_ok=True)
        a.reference.write_text(fresh_path.read_text())
        print(f"# {len(fresh)} figures written to {a.reference}")
        return 0
    if not a.reference.exists():
        print(f"no reference at {a.reference}: run with --update first", file=sys.stderr)
        return 2
    regressions = compare(read_figures(a.reference), fresh, a.tolerance)
    print(f"\n{regressions} regression(s) beyond {a.tolerance:.0%}")
    return 1 if regressions else 0


if __name__ == "__main__":
    sys.exit(main())
