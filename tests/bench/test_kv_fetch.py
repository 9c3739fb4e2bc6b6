"""bench/kv_fetch.py runs end to end against a real daemon and prints its table (the
CPU rows here; the GPU rows on a CUDA machine)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "kv_fetch.py"


def test_the_fetch_benchmark_prints_its_rows() -> None:
    out = subprocess.run(
        [sys.executable, str(BENCH), "--size-mb", "1", "--blobs", "1", "--repeats", "1"],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert "KV fetch, 1.0 MB float16 blobs" in out.stdout
    try:
        import torch

        gpu = torch.cuda.is_available()
    except ImportError:
        gpu = False
    if gpu:
        assert "CUDA IPC hand-off" in out.stdout
        assert "device-to-device memcpy" in out.stdout
    else:
        assert "shm read into host memory" in out.stdout
        assert "HTTP read into host memory" in out.stdout
        assert "no CUDA device available" in out.stdout
