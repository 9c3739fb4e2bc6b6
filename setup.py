"""Build the Cython extensions in ext/.

Every ``ext/<name>.pyx`` becomes ``semcached.ext.<name>``, so only the product's modules
live there (the bench's baselines are compiled by bench/_build.py, outside the wheel).
Per-module options (language, extra sources) are ``# distutils:`` comments at the top
of the .pyx.
A declared extension that fails to compile fails the whole build: there is no
silent pure-Python fallback for a module that was meant to be compiled.

Portability: modules are compiled with ``-O3`` for the baseline of the target
architecture. ``SEMCACHED_NATIVE=1`` adds ``-march=native`` for a build that will
only ever run on the machine (or CPU family) that compiled it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup

ROOT = Path(__file__).parent
# bench/_build.py compiles the bench's baseline with the same directives and flags.
COMPILER_DIRECTIVES = {
    "boundscheck": False,
    "wraparound": False,
    "cdivision": True,
    "embedsignature": True,
}


def _compile_args() -> list[str]:
    if sys.platform == "win32":
        return ["/O2"]
    args = ["-O3", "-fno-strict-aliasing"]
    if os.environ.get("SEMCACHED_NATIVE") == "1":
        args.append("-march=native")
    return args


def _extensions() -> list[Extension]:
    sources = sorted((ROOT / "ext").glob("*.pyx"))
    return [
        Extension(
            f"semcached.ext.{pyx.stem}",
            [str(pyx.relative_to(ROOT))],
            include_dirs=[numpy.get_include()],
            extra_compile_args=_compile_args(),
            define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        )
        for pyx in sources
    ]


setup(
    ext_modules=cythonize(
        _extensions(),
        language_level=3,
        compiler_directives=COMPILER_DIRECTIVES,
    ),
)
