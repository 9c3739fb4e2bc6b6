"""bench/_milvus_compare.py runs end to end at a small size on milvus-lite."""

from __future__ import annotations

import _milvus_compare  # from bench/, on sys.path by tests/bench/__init__.py
import pytest


def test_small_run_prints_both_rows(capsys: pytest.CaptureFixture[str]) -> None:
    rows = _milvus_compare.main(
        ["--n", "1500", "--dim", "32", "--queries", "50", "--centroids", "32"]
    )
    assert [r.backend.split(" ")[0] for r in rows] == ["local", "Milvus"]
    assert "milvus-lite" in rows[1].backend
    assert all(r.n == 1500 and 0.5 < r.recall <= 1.0 and r.p99_ms >= r.p50_ms for r in rows)
    out = capsys.readouterr().out
    assert "Local HNSW vs Milvus backend (milvus-lite, in-process, pure Python)" in out
    assert "| backend | entries | build s | index settle s | p50 ms | p99 ms | recall@1 |" in out


def test_compare_can_skip_a_backend() -> None:
    rows = _milvus_compare.compare(800, 16, 20, centroids=16, skip=("hnswlib",), log=None)
    assert len(rows) == 1
    assert rows[0].backend.startswith("Milvus")
