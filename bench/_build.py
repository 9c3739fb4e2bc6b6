"""Build the bench's own Cython baseline (bench/_classic_skiplist.pyx) on first use.

The classic skiplist is a baseline for bench/bskiplist.py, not part of the product, so
setup.py does not compile it and the wheel does not carry it. It shares the latch code
of the B-skiplist (``ext/_shared.pxi``, found on the include path) and is compiled with
the same Cython directives and C flags as setup.py uses for ``semcached.ext`` (a test
keeps the two in step), so the benchmark compares data layouts, not compiler options.

:func:`load_classic_skiplist` compiles the module into ``bench/build/`` (git-ignored)
when it is missing or older than its sources, then imports it. Needs Cython, numpy and
a C compiler (the ``dev`` extra and a toolchain). A build goes to a fresh folder and
the module file is renamed into place, so two processes building at once do not see
half a file.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys
import tempfile
from pathlib import Path
from types import ModuleType

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
BUILD_DIR = BENCH_DIR / "build"
NAME = "_classic_skiplist"
SOURCES = (BENCH_DIR / f"{NAME}.pyx", ROOT / "ext" / "_shared.pxi")

# The same as setup.py's (tests/bench/test_classic_skiplist.py compares them).
COMPILER_DIRECTIVES = {
    "boundscheck": False,
    "wraparound": False,
    "cdivision": True,
    "embedsignature": True,
}


def compile_args() -> list[str]:
    """setup.py's C flags: ``-O3`` for the baseline architecture, ``-march=native``
    with ``SEMCACHED_NATIVE=1`` (use the same setting for the product's build)."""
    if sys.platform == "win32":
        return ["/O2"]
    args = ["-O3", "-fno-strict-aliasing"]
    if os.environ.get("SEMCACHED_NATIVE") == "1":
        args.append("-march=native")
    return args


def _suffix() -> str:
    return importlib.machinery.EXTENSION_SUFFIXES[0]


def built_path() -> Path:
    return BUILD_DIR / f"{NAME}{_suffix()}"


def is_stale(path: Path) -> bool:
    if not path.is_file():
        return True
    built = path.stat().st_mtime
    return any(source.stat().st_mtime > built for source in SOURCES)


def build(*, force: bool = False) -> Path:
    """Compile the classic skiplist if needed; returns the extension module's path."""
    target = built_path()
    if not force and not is_stale(target):
        return target
    import numpy
    from Cython.Build import cythonize
    from setuptools import Distribution, Extension

    BUILD_DIR.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="classic-", dir=BUILD_DIR) as tmp:
        extension = Extension(
            NAME,
            [str(SOURCES[0])],
            include_dirs=[numpy.get_include()],
            extra_compile_args=compile_args(),
            define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        )
        modules = cythonize(
            [extension],
            include_path=[str(ROOT / "ext")],
            build_dir=tmp,
            language_level=3,
            compiler_directives=COMPILER_DIRECTIVES,
            force=True,
            quiet=True,
        )
        command = Distribution({"ext_modules": modules}).get_command_obj("build_ext")
        command.build_lib = str(Path(tmp) / "lib")
        command.build_temp = str(Path(tmp) / "obj")
        command.ensure_finalized()
        command.run()
        os.replace(Path(tmp) / "lib" / target.name, target)
    return target


def load_classic_skiplist() -> ModuleType:
    """The compiled ``_classic_skiplist`` module (built first when needed)."""
    if NAME in sys.modules:
        return sys.modules[NAME]
    path = build()
    spec = importlib.util.spec_from_file_location(NAME, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[NAME] = module
    spec.loader.exec_module(module)
    return module


if __name__ == "__main__":
    print(build(force="--force" in sys.argv[1:]))
