"""The wheel holds one package, `semcached`, with its compiled extensions."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


def build_wheel(source: Path, out: Path) -> subprocess.CompletedProcess[str]:
    # No isolation: reuse this environment's setuptools, Cython and numpy (no downloads).
    return subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "--wheel-dir", str(out), str(source)],
        capture_output=True,
        text=True,
        check=False,
    )  # fmt: skip


def copy_tree(dest: Path, *, keep_extensions: bool) -> Path:
    def ignore(directory: str, names: list[str]) -> set[str]:
        skipped = {".venv", "build", ".git", "tests", "bench", "semcached-data"}
        skipped |= {n for n in names if n.endswith((".so", ".c", ".cpp", ".html"))}
        skipped |= {n for n in names if n.endswith(".egg-info") or n.startswith(".")}
        if not keep_extensions and Path(directory).name == "ext":
            skipped |= {n for n in names if n.endswith((".pyx", ".pxi", ".pxd"))}
        return skipped

    shutil.copytree(ROOT, dest, ignore=ignore)
    return dest


def test_wheel_contains_only_the_semcached_package(tmp_path: Path) -> None:
    source = copy_tree(tmp_path / "src", keep_extensions=True)
    result = build_wheel(source, tmp_path / "dist")
    assert result.returncode == 0, result.stdout + result.stderr
    (wheel,) = (tmp_path / "dist").glob("semcached-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {name.split("/", 1)[0] for name in names}
    assert {t for t in top_level if not t.endswith(".dist-info")} == {"semcached"}
    for sub in ("service", "index", "cachepolicy", "ext", "clients"):
        assert f"semcached/{sub}/__init__.py" in names
    assert "semcached/py.typed" in names
    # Every Cython module in ext/ is compiled into the wheel; no sources ship.
    for pyx in (ROOT / "ext").glob("*.pyx"):
        assert any(n.startswith(f"semcached/ext/{pyx.stem}.") and n.endswith(".so") for n in names)
    assert not any(n.endswith((".pyx", ".c")) for n in names)
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert (
        "semcached = semcached.service.cli:main"
        in zipfile.ZipFile(wheel).read(entry_points).decode()
    )


def test_an_extension_that_does_not_compile_fails_the_build(tmp_path: Path) -> None:
    source = copy_tree(tmp_path / "src", keep_extensions=False)
    (source / "ext" / "broken.pyx").write_text("cdef int f(:\n    pass\n")
    result = build_wheel(source, tmp_path / "dist")
    assert result.returncode != 0
    assert "broken.pyx" in result.stdout + result.stderr
    assert not list((tmp_path / "dist").glob("*.whl"))


@pytest.mark.parametrize("module", ["service", "index", "cachepolicy", "ext", "clients"])
def test_subpackages_import_under_semcached(module: str) -> None:
    imported = __import__(f"semcached.{module}", fromlist=["_"])
    assert imported.__name__ == f"semcached.{module}"
