"""Tests of the benchmark harness's own code (bench/, not shipped in the wheel).

bench/ is a folder of scripts, not a package: its helper modules (``_build``,
``_smollm2``, …) import each other by bare name, as they do when a script runs from it.
Importing this package puts bench/ on ``sys.path`` for the tests below it.
"""

from __future__ import annotations

import sys
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parents[2] / "bench"
if str(BENCH_DIR) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR))
