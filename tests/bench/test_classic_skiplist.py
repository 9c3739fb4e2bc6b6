"""The benchmark's classic skiplist baseline: it must be right for its numbers to mean anything."""

from __future__ import annotations

import ast
import random
import threading
from pathlib import Path

import _build  # from bench/, on sys.path by tests/bench/__init__.py
import numpy as np

# The baseline is compiled into bench/build/ on first use.
classic_skiplist = _build.load_classic_skiplist()
ClassicSkipList = classic_skiplist.ClassicSkipList

MAX_KEY = 2**64 - 1
SETUP_PY = Path(__file__).resolve().parents[2] / "setup.py"


def _top_level(path: Path, name: str) -> ast.AST:
    """The value of ``name = ...`` or the body of ``def name`` at the top of ``path``."""
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.FunctionDef) and node.name == name:
            body = node.body[1:] if ast.get_docstring(node) else node.body
            return ast.Module(body, [])
        if isinstance(node, ast.Assign) and [ast.unparse(t) for t in node.targets] == [name]:
            return node.value
    raise LookupError(name)


def test_built_like_the_product() -> None:
    # Compiled as semcached.ext is (setup.py), or the bench would compare compiler options.
    bench = Path(_build.__file__)
    assert ast.dump(_top_level(bench, "COMPILER_DIRECTIVES")) == ast.dump(
        _top_level(SETUP_PY, "COMPILER_DIRECTIVES")
    )
    assert ast.dump(_top_level(bench, "compile_args")) == ast.dump(
        _top_level(SETUP_PY, "_compile_args")
    )
    assert Path(classic_skiplist.__file__ or "") == _build.built_path()


def test_matches_a_dict() -> None:
    s = ClassicSkipList()
    ref: dict[int, int] = {}
    rng = random.Random(5)
    for step in range(20_000):
        k = rng.choice([rng.randrange(2_000), 0, MAX_KEY])
        if rng.random() < 0.6:
            assert s.insert(k, step) == (k not in ref)
            ref[k] = step
        else:
            assert s.delete(k) == (k in ref)
            ref.pop(k, None)
        if step % 97 == 0:
            q = rng.randrange(2_100)
            assert s.get(q) == ref.get(q)
            assert s.successor(q) == min((x for x in ref if x >= q), default=None)
    s._check()
    keys, values = s.range_to_arrays(0, MAX_KEY, 1 << 20)
    assert list(zip(keys.tolist(), values.tolist(), strict=True)) == sorted(ref.items())


def test_batches() -> None:
    s = ClassicSkipList()
    rng = np.random.default_rng(2)
    keys = rng.integers(0, 3_000, size=5_000, dtype=np.uint64)
    keys[:2] = [0, MAX_KEY]
    ref = dict(zip(keys.tolist(), range(keys.size), strict=True))
    assert s.insert_many(keys, np.arange(keys.size, dtype=np.uint64)) == len(ref)
    s._check()
    probe = rng.integers(0, 3_100, size=2_000, dtype=np.uint64)
    values, found = s.get_many(probe)
    assert found.tolist() == [k in ref for k in probe.tolist()]
    assert values.tolist() == [ref.get(k, 0) for k in probe.tolist()]
    succ, found = s.successor_many(probe)
    assert [x if f else None for x, f in zip(succ.tolist(), found.tolist(), strict=True)] == [
        s.successor(k) for k in probe.tolist()
    ]
    assert s.delete_many(probe) == len(set(probe.tolist()) & set(ref))
    s._check()
    assert len(s) == len(set(ref) - set(probe.tolist()))


def test_threads() -> None:
    s = ClassicSkipList()
    errors: list[BaseException] = []

    def work(tid: int) -> None:
        try:
            rng = np.random.default_rng(tid)
            own = np.arange(tid, 40_000, 4, dtype=np.uint64)
            for _ in range(10):
                s.insert_many(own, own)
                s.get_many(rng.integers(0, 40_000, size=2_000, dtype=np.uint64))
                s.delete_many(own[::2])
            s.insert_many(own, own)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors
    assert not any(t.is_alive() for t in threads)
    s._check()
    assert len(s) == 40_000
