"""The wheel holds the product only: the `semcached` package, its subpackages and its compiled
extensions; nothing from bench/ or tests/."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path
from typing import Any

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
    """The working tree as a clone has it (bench/ and tests/ included, so that the test
    sees them left out by the build), without build outputs."""

    def ignore(directory: str, names: list[str]) -> set[str]:
        skipped = {".venv", "build", "dist", ".git", "out", "semcached-data", "__pycache__"}
        skipped |= {n for n in names if n.endswith((".so", ".c", ".cpp", ".html"))}
        skipped |= {n for n in names if n.endswith(".egg-info") or n.startswith(".")}
        if not keep_extensions and Path(directory).name == "ext":
            skipped |= {n for n in names if n.endswith((".pyx", ".pxi", ".pxd"))}
        return skipped

    shutil.copytree(ROOT, dest, ignore=ignore)
    return dest


# The product, named here so that a package or a compiled module added to the wheel
# (or lost from it) is a decision this test is edited for.
PACKAGES = {
    "semcached",
    "semcached.protocol",
    "semcached.service",
    "semcached.service.http",
    "semcached.service.http.routes",
    "semcached.service.semantic",
    "semcached.service.semantic.embedding",
    "semcached.service.kv",
    "semcached.service.auth",
    "semcached.service.proxy",
    "semcached.service.shared",
    "semcached.index",
    "semcached.index.shared",
    "semcached.cachepolicy",
    "semcached.ext",
    "semcached.clients",
    "semcached.integrations",
}
COMPILED = {
    "semcached.ext.belady",
    "semcached.ext.bskiplist",
    "semcached.ext.onebit",
    "semcached.ext.treewalk",
}
# Benchmark loaders and baselines that once lived in the product folders.
BENCH_ONLY = {"hf_models", "_smollm2", "classic_skiplist", "_classic_skiplist"}


def setuptools_config(root: Path) -> dict[str, Any]:
    config: dict[str, Any] = tomllib.loads((root / "pyproject.toml").read_text())
    return config["tool"]["setuptools"]


def package_dirs(root: Path) -> dict[str, Path]:
    """The source folder of each top-level package (pyproject's package-dir)."""
    return {name: root / folder for name, folder in setuptools_config(root)["package-dir"].items()}


def expected_files(root: Path) -> set[str]:
    """What the product folders hold that the wheel must carry: every module, the type
    stubs and Cython declarations of ext/ (.pyi, .pxd, the .pxi the MANIFEST carries),
    the model files of cachepolicy/models/ and py.typed; the compiled modules apart."""
    expected = set()
    for package, folder in package_dirs(root).items():
        prefix = package.replace(".", "/")
        for path in folder.rglob("*"):
            if "__pycache__" in path.parts or not path.is_file():
                continue
            model = path.suffix == ".json" and path.parent.name == "models"
            if path.suffix in {".py", ".pyi", ".pxd", ".pxi"} or path.name == "py.typed" or model:
                expected.add(f"{prefix}/{path.relative_to(folder).as_posix()}")
    return expected


def wheel_module(name: str) -> str:
    """``semcached/ext/bskiplist.cpython-311-x86_64-linux-gnu.so`` ->
    ``semcached.ext.bskiplist``."""
    return name.split(".", 1)[0].replace("/", ".")


def test_wheel_contains_the_product_and_nothing_else(tmp_path: Path) -> None:
    source = copy_tree(tmp_path / "src", keep_extensions=True)
    result = build_wheel(source, tmp_path / "dist")
    assert result.returncode == 0, result.stdout + result.stderr
    (wheel,) = (tmp_path / "dist").glob("semcached-*.whl")
    archive = zipfile.ZipFile(wheel)
    names = {n for n in archive.namelist() if ".dist-info/" not in n}
    assert {n.split("/", 1)[0] for n in names} == {"semcached"}

    packages = {n.rsplit("/", 1)[0].replace("/", ".") for n in names if n.endswith("/__init__.py")}
    assert packages == PACKAGES
    assert set(setuptools_config(source)["packages"]) == PACKAGES

    compiled = {n for n in names if n.endswith((".so", ".pyd"))}
    assert {wheel_module(n) for n in compiled} == COMPILED
    # Exactly the product's sources, nothing from bench/ or tests/, no Cython/C sources.
    assert names - compiled == expected_files(source)  # the tree the wheel was built from
    assert "semcached/py.typed" in names
    modules = {wheel_module(n).rsplit(".", 1)[-1] for n in names}
    assert not modules & BENCH_ONLY
    assert not any(n.endswith((".pyx", ".c", ".cpp")) for n in names)
    bench_sources = {p.read_bytes() for p in (source / "bench").rglob("*.py")}
    assert bench_sources  # bench/ was in the tree the wheel was built from, and left out
    assert not [n for n in names if n.endswith(".py") and archive.read(n) in bench_sources]

    entry_points = next(n for n in archive.namelist() if n.endswith("entry_points.txt"))
    assert "semcached = semcached.service.cli:main" in archive.read(entry_points).decode()


def test_an_extension_that_does_not_compile_fails_the_build(tmp_path: Path) -> None:
    source = copy_tree(tmp_path / "src", keep_extensions=False)
    (source / "ext" / "broken.pyx").write_text("cdef int f(:\n    pass\n")
    result = build_wheel(source, tmp_path / "dist")
    assert result.returncode != 0
    assert "broken.pyx" in result.stdout + result.stderr
    assert not list((tmp_path / "dist").glob("*.whl"))


@pytest.mark.parametrize(
    "module", ["service", "index", "cachepolicy", "ext", "clients", "integrations"]
)
def test_subpackages_import_under_semcached(module: str) -> None:
    imported = __import__(f"semcached.{module}", fromlist=["_"])
    assert imported.__name__ == f"semcached.{module}"


def test_the_package_imports_from_the_repository_root() -> None:
    """No folder at the root shadows the installed package (issue: `semcached/` once did)."""
    result = subprocess.run(
        [sys.executable, "-c", "import semcached.service.http.app, semcached.protocol"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert not (ROOT / "semcached" / "__init__.py").exists()
