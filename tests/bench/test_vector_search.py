"""bench/vector_search.py runs end to end at a small size: every backend row, exact faiss."""

from __future__ import annotations

import pytest
import vector_search  # from bench/, on sys.path by tests/bench/__init__.py


def test_small_run_prints_a_row_per_backend_and_batch(capsys: pytest.CaptureFixture[str]) -> None:
    rows = vector_search.main(
        ["--n", "2000", "--dim", "32", "--queries", "64", "--batch", "1", "16", "--repeats", "1",
         "--centroids", "64", "--skip", "faiss-gpu"]
    )  # fmt: skip
    assert [(r.backend.split(" ")[0], r.batch) for r in rows] == [
        ("hnswlib", 1),
        ("hnswlib", 16),
        ("faiss-cpu", 1),
        ("faiss-cpu", 16),
    ]
    # faiss's flat search is exact: it must agree with the numpy ground truth.
    assert all(r.recall == 1.0 for r in rows if r.backend.startswith("faiss"))
    assert all(0.5 < r.recall <= 1.0 and r.qps > 0 for r in rows)
    assert "| backend | batch | build s | queries/s | recall@1 |" in capsys.readouterr().out
