"""The benchmarks run from a clone: their default data is inside the repository, vendored
with its license and provenance, and nothing points outside it."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import _datasets  # from bench/, on sys.path by tests/bench/__init__.py
import orjson
import pytest

from tests.bench import BENCH_DIR


def test_gptcache_pairs_are_vendored_with_license_and_provenance() -> None:
    folder = _datasets.GPTCACHE_PAIRS.parent
    assert folder.is_relative_to(BENCH_DIR)
    assert "Copyright (c) Zilliz" in (folder / "LICENSE").read_text()
    provenance = (folder / "PROVENANCE.md").read_text()
    digest = hashlib.sha256(_datasets.GPTCACHE_PAIRS.read_bytes()).hexdigest()
    assert digest in provenance  # the bytes are the ones the note describes
    rows = orjson.loads(_datasets.GPTCACHE_PAIRS.read_bytes())
    assert len(rows) == 999
    assert set(rows[0]) == {"origin", "similar"}


def test_no_bench_path_leaves_the_repository() -> None:
    outside = re.compile(r"""parents\[[2-9]\]|["']\.\./|/work/|["']shared["']""")
    offenders = [
        f"{path.name}:{number}: {line.strip()}"
        for path in sorted(BENCH_DIR.glob("*.py"))
        for number, line in enumerate(path.read_text().splitlines(), start=1)
        if outside.search(line)
    ]
    assert not offenders


def test_absent_data_is_named_with_where_to_get_it(tmp_path: Path) -> None:
    missing = tmp_path / "pairs.json"
    with pytest.raises(SystemExit, match="Get it from X"):
        _datasets.require(missing, "a pairs file", "Get it from X.")
