"""ShmMapper: zero-copy, read-only views of a daemon arena segment."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from semcached.clients.shm import (
    InvalidShmRequestError,
    ShmError,
    ShmMapper,
    ShmPath,
    ShmUnavailableError,
)
from semcached.errors import SemcachedError
from semcached.index.shm_arena import PAGE_SIZE, ShmArena


@pytest.fixture
def arena(tmp_path: Path) -> Iterator[ShmArena]:
    a = ShmArena(8 * PAGE_SIZE, directory=tmp_path, prefix="c")
    yield a
    a.close()


@pytest.fixture
def mapper(tmp_path: Path) -> Iterator[ShmMapper]:
    m = ShmMapper(tmp_path)
    yield m
    m.close()


def test_client_module_does_not_import_the_daemon() -> None:
    import ast

    import semcached.clients.shm as module

    tree = ast.parse(Path(module.__file__).read_text())
    imported = {
        node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
    } | {
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    }
    assert {"semcached.errors"} <= imported
    assert not any(
        name.startswith(("semcached.index", "semcached.service", "semcached.cachepolicy"))
        for name in imported
    )


def test_reads_the_arena_bytes_without_a_copy(arena: ShmArena, mapper: ShmMapper) -> None:
    tensor = np.arange(3000, dtype=np.float32)
    off = arena.allocate(tensor.nbytes)
    assert off is not None
    with arena.view(off, tensor.nbytes) as view:
        view[:] = tensor.tobytes()
    assert mapper.available(arena.name)
    got = mapper.view(arena.name, off, tensor.nbytes)
    assert got.readonly
    array = np.frombuffer(got, dtype=np.float32)
    np.testing.assert_array_equal(array, tensor)
    # A later write through the arena shows through the earlier view: shared memory.
    with arena.view(off, 4) as view:
        view[:] = np.float32(-1.5).tobytes()
    assert array[0] == np.float32(-1.5)
    assert not array.flags.writeable
    del array
    got.release()


def test_one_mapping_per_segment_is_reused(arena: ShmArena, mapper: ShmMapper) -> None:
    off = arena.allocate(PAGE_SIZE)
    assert off is not None
    first = mapper.view(arena.name, off, 8)
    second = mapper.view(arena.name, off + 8, 8)
    assert first.obj is second.obj
    assert len(mapper._maps) == 1
    first.release()
    second.release()


def test_views_are_read_only(arena: ShmArena, mapper: ShmMapper) -> None:
    view = mapper.view(arena.name, 0, 16)
    with pytest.raises(TypeError):
        view[0] = 1
    with pytest.raises(TypeError):
        view[:4] = b"abcd"
    with pytest.raises(ValueError, match="read-only"):
        np.frombuffer(view, dtype=np.uint8)[0] = 1
    view.release()


@pytest.mark.parametrize("name", ["", ".", "..", "../etc", "a/b", "/dev/shm/x", "x..y", "a\0b"])
def test_bad_names_are_rejected(mapper: ShmMapper, name: str) -> None:
    with pytest.raises(InvalidShmRequestError):
        mapper.view(name, 0, 1)
    with pytest.raises(InvalidShmRequestError):
        mapper.available(name)


def test_out_of_bounds_ranges_are_rejected(arena: ShmArena, mapper: ShmMapper) -> None:
    for offset, length in [(-1, 1), (0, -1), (arena.capacity, 1), (arena.capacity - 1, 2)]:
        with pytest.raises(InvalidShmRequestError, match=r"negative|outside"):
            mapper.view(arena.name, offset, length)
    assert len(mapper.view(arena.name, arena.capacity, 0)) == 0


def test_missing_segment(tmp_path: Path, mapper: ShmMapper) -> None:
    assert not mapper.available("c-1-deadbeef")
    with pytest.raises(ShmUnavailableError, match="unavailable") as caught:
        mapper.view("c-1-deadbeef", 0, 1)
    assert isinstance(caught.value, ShmError)
    assert isinstance(caught.value, SemcachedError)


def test_not_a_regular_file(tmp_path: Path, mapper: ShmMapper) -> None:
    (tmp_path / "empty").write_bytes(b"")
    os.mkfifo(tmp_path / "fifo")
    for name in ("empty", "fifo"):
        with pytest.raises(ShmUnavailableError, match="not a shared-memory segment"):
            mapper.view(name, 0, 0)


def test_close_tolerates_exported_views(arena: ShmArena, mapper: ShmMapper) -> None:
    off = arena.allocate(PAGE_SIZE)
    assert off is not None
    with arena.view(off, 3) as view:
        view[:] = b"xyz"
    held = mapper.view(arena.name, off, 3)
    mapper.close()  # must not raise
    assert bytes(held) == b"xyz"  # still mapped while the view lives
    held.release()
    # The mapper maps again on demand.
    assert bytes(mapper.view(arena.name, off, 3)) == b"xyz"
    mapper.release(arena.name)
    mapper.release("never-mapped")
    assert not mapper._maps


def test_segment_unlinked_by_the_daemon(arena: ShmArena, mapper: ShmMapper) -> None:
    name = arena.name
    mapper.view(name, 0, 1).release()
    arena.close()
    assert not mapper.available(name)
    mapper.release(name)
    with pytest.raises(ShmUnavailableError):
        mapper.view(name, 0, 1)


def test_concurrent_first_views_map_once(arena: ShmArena, mapper: ShmMapper) -> None:
    views: list[memoryview] = []
    lock = threading.Lock()

    def read() -> None:
        view = mapper.view(arena.name, 0, 8)
        with lock:
            views.append(view)

    threads = [threading.Thread(target=read) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(views) == 8
    assert len({id(v.obj) for v in views}) == 1
    for v in views:
        v.release()


@pytest.mark.parametrize("plant", ["symlink", "link"])
def test_a_staged_put_never_writes_through_a_planted_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, plant: str
) -> None:
    """Issue 14, defect 9: the staging file is created O_CREAT | O_EXCL, so a name
    planted in the shared directory (a link to someone else's file) is never followed."""
    import semcached.clients.shm as shm_module

    monkeypatch.setattr(shm_module.secrets, "token_hex", lambda n: "ab" * n)
    victim = tmp_path / "victim"
    victim.write_bytes(b"untouched")
    name = f"semcached-put-{os.getpid()}-{'ab' * 8}"
    getattr(os, plant)(victim, tmp_path / name)
    path = ShmPath(True, tmp_path)
    with pytest.raises(FileExistsError), path.staged(b"attacker's bytes"):
        pass
    assert victim.read_bytes() == b"untouched"


def test_a_staged_file_is_private_whatever_the_umask(tmp_path: Path) -> None:
    path = ShmPath(True, tmp_path)
    old = os.umask(0)
    try:
        with path.staged(b"kv bytes") as name:
            info = os.stat(tmp_path / name)
    finally:
        os.umask(old)
    assert info.st_mode & 0o777 == 0o600
    assert info.st_nlink == 1
