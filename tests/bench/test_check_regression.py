"""bench/check_regression.py: fresh ratios against the reference, in the right direction."""

from __future__ import annotations

from pathlib import Path

import check_regression  # from bench/, on sys.path by tests/bench/__init__.py
import pytest
from _figures import Figure, read_figures, write_figures


def test_figures_round_trip_through_csv(tmp_path: Path) -> None:
    path = tmp_path / "run.csv"
    figures = [
        Figure("semantic_http", "100000 vector-in semcached c16", "req/s", 2600.0, 2500.0),
        Figure("kv_store", "16 MiB put", "seconds", 0.02, 0.016, "lower"),
    ]
    write_figures(path, figures[:1])
    write_figures(path, figures[1:])  # appends, one header
    assert read_figures(path) == figures
    assert path.read_text().count("bench,case") == 1


def test_a_ratio_that_moved_the_wrong_way_past_the_tolerance_is_a_regression(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    reference = [
        Figure("b", "fast", "req/s", 100.0, 100.0),  # ratio 1.0, higher is better
        Figure("b", "small", "bytes", 120.0, 100.0, "lower"),  # ratio 1.2
        Figure("b", "gone", "req/s", 1.0, 1.0),
    ]
    fresh = [
        Figure("b", "fast", "req/s", 80.0, 100.0),  # -20%: regression
        Figure("b", "small", "bytes", 100.0, 100.0, "lower"),  # smaller: better
        Figure("b", "new", "req/s", 1.0, 1.0),
    ]
    ref_path, fresh_path = tmp_path / "ref.csv", tmp_path / "fresh.csv"
    write_figures(ref_path, reference)
    write_figures(fresh_path, fresh)
    argv = ["--fresh", str(fresh_path), "--reference", str(ref_path)]
    assert check_regression.main(argv) == 1
    out = capsys.readouterr().out
    assert "| b | fast | req/s | higher | 1.000 | 0.800 | -20% | REGRESSION |" in out
    assert "| b | small | bytes | lower | 1.200 | 1.000 | +17% | |" in out
    assert "(new)" in out
    assert "(not run)" in out
    assert check_regression.main([*argv, "--tolerance", "0.25"]) == 0
    assert check_regression.main([*argv, "--update"]) == 0
    assert read_figures(ref_path) == fresh
