"""Where the benchmarks find their data: inside the repository, or at a path given.

Vendored data (bench/data/, see its README.md for licenses and provenance) is the
default. Data that may not be redistributed is never given a default path: a bench
takes it as an argument and :func:`require` names where to get it when it is absent.
"""

from __future__ import annotations

from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent / "data"
# GPTCache's benchmark pairs (MIT): 999 {"origin", "similar"} rows.
GPTCACHE_PAIRS = DATA_DIR / "gptcache" / "mock_data.json"


def require(path: Path, what: str, where: str) -> Path:
    """``path`` if it is a file, else exit with a message saying what is missing and
    where to get it."""
    if not path.is_file():
        raise SystemExit(f"{path}: no such file ({what}). {where}")
    return path
