"""ShmArena: best-fit extents, coalescing, views, cleanup, ENOSPC, and a model check."""

from __future__ import annotations

import errno
import mmap
import os
import random
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from semcached.index.shm_arena import PAGE_SIZE, ArenaError, ShmArena

P = PAGE_SIZE


@pytest.fixture
def arena(tmp_path: Path) -> Iterator[ShmArena]:
    a = ShmArena(16 * P, directory=tmp_path, prefix="t")
    yield a
    a.close()


def test_creates_a_sparse_private_file(tmp_path: Path) -> None:
    with ShmArena(10 * P + 123, directory=tmp_path, prefix="t") as a:
        assert a.capacity == 10 * P  # rounded down to pages
        assert a.path == tmp_path / a.name
        assert a.name.startswith(f"t-{os.getpid()}-")
        info = a.path.stat()
        assert info.st_size == a.capacity
        assert info.st_mode & 0o777 == 0o600
        assert (a.used_bytes, a.free_bytes, a.largest_free()) == (0, a.capacity, a.capacity)
        a._check()


def test_capacity_below_a_page_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="page"):
        ShmArena(P - 1, directory=tmp_path)


def test_missing_directory_is_an_arena_error(tmp_path: Path) -> None:
    with pytest.raises(ArenaError, match="cannot create"):
        ShmArena(P, directory=tmp_path / "absent")


def test_allocate_free_and_coalesce(arena: ShmArena) -> None:
    a = arena.allocate(1)
    b = arena.allocate(P + 1)
    c = arena.allocate(3 * P)
    assert (a, b, c) == (0, P, 3 * P)
    assert [arena.extent_size(x) for x in (a, b, c)] == [P, 2 * P, 3 * P]
    assert arena.used_bytes == 6 * P
    assert arena.free_bytes == 10 * P
    arena._check()
    arena.free(b)  # a hole between two allocated extents
    arena._check()
    assert arena.largest_free() == 10 * P
    arena.free(a)  # merges with the hole after it
    arena._check()
    assert arena.allocate(3 * P) == 0  # the merged 3-page extent fits exactly
    arena.free(0)
    arena.free(c)  # merges with both neighbours: one free extent again
    arena._check()
    assert arena.used_bytes == 0
    assert arena.largest_free() == 16 * P


def test_free_unknown_offset(arena: ShmArena) -> None:
    arena.allocate(2 * P)
    with pytest.raises(KeyError):
        arena.free(P)  # inside an extent, not its start
    with pytest.raises(KeyError):
        arena.free(5 * P)  # free space
    with pytest.raises(KeyError):
        arena.extent_size(5 * P)
    arena.free(0)
    with pytest.raises(KeyError):
        arena.free(0)  # twice
    arena._check()


def test_allocate_rejects_non_positive(arena: ShmArena) -> None:
    with pytest.raises(ValueError, match="positive"):
        arena.allocate(0)


def test_best_fit_takes_the_smallest_hole_that_fits(arena: ShmArena) -> None:
    # Holes of 3, 1 and 2 pages, then a 4-page tail.
    offsets = [arena.allocate(n * P) for n in (3, 1, 1, 1, 2, 1, 3)]
    assert offsets == [0, 3 * P, 4 * P, 5 * P, 6 * P, 8 * P, 9 * P]
    for off in (0, 4 * P, 6 * P):
        arena.free(off)
    arena._check()
    assert arena.allocate(2 * P) == 6 * P  # the 2-page hole, not the earlier 3-page one
    assert arena.allocate(P) == 4 * P  # the 1-page hole
    assert arena.allocate(P) == 0  # lowest offset among the fitting ones left
    assert arena.allocate(4 * P) == 12 * P  # only the tail fits
    arena._check()


def test_none_when_fragmented(arena: ShmArena) -> None:
    offsets = [arena.allocate(P) for _ in range(16)]
    assert arena.allocate(P) is None
    for off in offsets[::2]:
        arena.free(off)
    assert arena.free_bytes == 8 * P
    assert arena.largest_free() == P
    assert arena.allocate(2 * P) is None
    assert arena.allocate(17 * P) is None
    arena._check()


def test_view_bounds_and_writes(arena: ShmArena) -> None:
    off = arena.allocate(100)
    assert off is not None
    view = arena.view(off, P)  # the whole (page-rounded) extent
    view[:5] = b"hello"
    assert bytes(arena.view(off, 5)) == b"hello"
    assert len(arena.view(off, 0)) == 0
    with pytest.raises(ValueError, match="fit"):
        arena.view(off, P + 1)
    with pytest.raises(ValueError, match="fit"):
        arena.view(off, -1)
    with pytest.raises(KeyError):
        arena.view(off + P, 1)
    view.release()


def test_a_second_read_only_mapping_sees_the_writes(arena: ShmArena) -> None:
    first = arena.allocate(P)
    second = arena.allocate(3 * P)
    assert first is not None
    assert second is not None
    payload = os.urandom(3 * P)
    with arena.view(second, len(payload)) as view:
        view[:] = payload
    fd = os.open(arena.path, os.O_RDONLY)
    try:
        client = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
    finally:
        os.close(fd)
    try:
        assert client[second : second + len(payload)] == payload
        with arena.view(first, 4) as view:
            view[:] = b"late"  # written after the client mapped: visible without remapping
        assert client[first : first + 4] == b"late"
    finally:
        client.close()


def test_close_unlinks_and_is_idempotent(tmp_path: Path) -> None:
    a = ShmArena(4 * P, directory=tmp_path, prefix="t")
    assert a.path.exists()
    a.close()
    assert not a.path.exists()
    assert a.closed
    a.close()
    with pytest.raises(ArenaError, match="closed"):
        a.allocate(P)
    with pytest.raises(ArenaError, match="closed"):
        a.view(0, 1)


def test_close_with_an_exported_view(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    a = ShmArena(4 * P, directory=tmp_path, prefix="t")
    off = a.allocate(P)
    assert off is not None
    view = a.view(off, 3)
    view[:] = b"abc"
    a.close()  # must not raise
    assert not a.path.exists()
    assert "still exported" in caplog.text
    assert bytes(view) == b"abc"  # the mapping lives as long as the view
    view.release()


def test_garbage_collection_unlinks(tmp_path: Path) -> None:
    a = ShmArena(P, directory=tmp_path, prefix="t")
    path = a.path
    del a
    assert not path.exists()


def test_in_dev_shm_memory_is_reserved_and_released() -> None:
    directory = Path("/dev/shm")
    if not (directory.is_dir() and os.access(directory, os.W_OK)):
        pytest.skip("no writable /dev/shm")
    with ShmArena(64 * P, directory=directory, prefix="semcached-test") as a:
        assert a.path.parent == directory
        assert a.path.exists()

        def reserved() -> int:
            return a.path.stat().st_blocks * 512

        assert reserved() == 0  # sparse
        off = a.allocate(10 * P)
        assert off is not None
        assert reserved() == 10 * P  # posix_fallocate reserved the extent's memory
        with a.view(off, 10 * P) as view:
            view[-1:] = b"z"
            assert view[-1] == ord("z")
        a.free(off)
        assert reserved() == 0  # MADV_REMOVE gave it back to the tmpfs
        a._check()
    assert not a.path.exists()


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_remove_stale(tmp_path: Path) -> None:
    dead = _dead_pid()
    stale = tmp_path / f"t-{dead}-0123abcd"
    stale.write_bytes(b"x")
    live = ShmArena(P, directory=tmp_path, prefix="t")
    other_prefix = tmp_path / f"u-{dead}-0123abcd"
    other_prefix.write_bytes(b"x")
    odd_name = tmp_path / f"t-{dead}-notahex"
    odd_name.write_bytes(b"x")
    try:
        assert ShmArena.remove_stale(tmp_path, "t") == [stale.name]
        assert not stale.exists()
        assert live.path.exists()
        assert other_prefix.exists()
        assert odd_name.exists()
        assert ShmArena.remove_stale(tmp_path, "t") == []
        assert ShmArena.remove_stale(tmp_path / "absent", "t") == []
    finally:
        live.close()


def test_remove_stale_keeps_a_live_process(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        seg = tmp_path / f"t-{proc.pid}-0123abcd"
        seg.write_bytes(b"x")
        assert ShmArena.remove_stale(tmp_path, "t") == []
        assert seg.exists()
    finally:
        proc.kill()
        proc.wait()


def test_enospc_is_an_arena_error(arena: ShmArena, monkeypatch: pytest.MonkeyPatch) -> None:
    kept = arena.allocate(2 * P)

    def full(fd: int, offset: int, length: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full)
    with pytest.raises(ArenaError, match="shm-size"):
        arena.allocate(3 * P)
    # The failed extent went back: the state is as before.
    assert arena.used_bytes == 2 * P
    assert arena.largest_free() == 14 * P
    arena._check()
    monkeypatch.undo()
    assert arena.allocate(3 * P) == 2 * P
    assert kept == 0


def test_other_fallocate_errors_are_arena_errors(
    arena: ShmArena, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(fd: int, offset: int, length: int) -> None:
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(os, "posix_fallocate", broken)
    with pytest.raises(ArenaError, match="cannot reserve"):
        arena.allocate(P)
    assert arena.used_bytes == 0
    arena._check()


# -- model check ----------------------------------------------------------------------


class Model:
    """Reference best fit over a sorted list of allocated extents (in pages), O(n)."""

    def __init__(self, pages: int) -> None:
        self.pages = pages
        self.allocated: dict[int, int] = {}

    def holes(self) -> list[tuple[int, int]]:
        holes: list[tuple[int, int]] = []
        position = 0
        for off in sorted(self.allocated):
            if off > position:
                holes.append((off - position, position))
            position = off + self.allocated[off]
        if position < self.pages:
            holes.append((self.pages - position, position))
        return holes

    def allocate(self, pages: int) -> int | None:
        fitting = [hole for hole in self.holes() if hole[0] >= pages]
        if not fitting:
            return None
        _, off = min(fitting)
        self.allocated[off] = pages
        return off


def _step_allocate(arena: ShmArena, model: Model, nbytes: int, tag: int) -> int | None:
    got = arena.allocate(nbytes)
    expect = model.allocate(-(-nbytes // P))
    assert got == (None if expect is None else expect * P)
    if got is not None:
        with arena.view(got, arena.extent_size(got)) as view:
            view[0] = view[-1] = tag
    return got


def _step_free(arena: ShmArena, model: Model, off: int, tag: int) -> None:
    with arena.view(off, arena.extent_size(off)) as view:
        assert view[0] == view[-1] == tag  # no other extent overlapped this one
    arena.free(off)
    del model.allocated[off // P]


class ArenaMachine(RuleBasedStateMachine):
    pages = 24

    def __init__(self) -> None:
        super().__init__()
        self.directory = tempfile.TemporaryDirectory()
        self.arena = ShmArena(self.pages * P, directory=Path(self.directory.name), prefix="h")
        self.model = Model(self.pages)
        self.tags: dict[int, int] = {}

    @rule(nbytes=st.integers(1, (pages + 2) * P), tag=st.integers(0, 255))
    def allocate(self, nbytes: int, tag: int) -> None:
        off = _step_allocate(self.arena, self.model, nbytes, tag)
        if off is not None:
            self.tags[off] = tag

    @precondition(lambda self: bool(self.tags))
    @rule(data=st.data())
    def free(self, data: st.DataObject) -> None:
        off = data.draw(st.sampled_from(sorted(self.tags)))
        _step_free(self.arena, self.model, off, self.tags.pop(off))

    @invariant()
    def consistent(self) -> None:
        self.arena._check()
        used = sum(self.model.allocated.values()) * P
        assert self.arena.used_bytes == used
        holes = self.model.holes()
        assert self.arena.largest_free() == (max(holes)[0] * P if holes else 0)

    def teardown(self) -> None:
        self.arena.close()
        self.directory.cleanup()


TestArenaMachine = ArenaMachine.TestCase
TestArenaMachine.settings = settings(
    max_examples=60, stateful_step_count=40, deadline=None, suppress_health_check=list(HealthCheck)
)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_seeded_stress(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    pages = 256
    model = Model(pages)
    tags: dict[int, int] = {}
    with ShmArena(pages * P, directory=tmp_path, prefix="stress") as arena:
        for step in range(1500):
            if tags and (rng.random() < 0.45 or arena.free_bytes < 8 * P):
                off = rng.choice(sorted(tags))
                _step_free(arena, model, off, tags.pop(off))
            else:
                nbytes = rng.choice([rng.randint(1, P), rng.randint(1, 40 * P)])
                off = _step_allocate(arena, model, nbytes, step % 256)
                if off is not None:
                    tags[off] = step % 256
            arena._check()
        for off in list(tags):
            _step_free(arena, model, off, tags.pop(off))
        arena._check()
        assert arena.used_bytes == 0
        assert arena.largest_free() == pages * P


_CHILD = """
import os, sys, time
from pathlib import Path
from semcached.index.shm_arena import ShmArena
arena = ShmArena(4096, directory=Path(sys.argv[1]), prefix="life")
print(arena.name, flush=True)
if sys.argv[2] == "fork":
    pid = os.fork()
    if pid == 0:
        sys.exit(0)  # a normal exit in the child runs the inherited finalizer
    os.waitpid(pid, 0)
    print(arena.path.exists(), flush=True)
elif sys.argv[2] == "hang":
    time.sleep(60)
"""


def _spawn(directory: Path, how: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(directory), how], stdout=subprocess.PIPE, text=True
    )


def test_segment_life_cycle_across_processes(tmp_path: Path) -> None:
    # A normal exit without close() unlinks the segment; a forked child's exit does not.
    exiting = _spawn(tmp_path, "fork")
    out, _ = exiting.communicate(timeout=60)
    name, still_there_after_child = out.split()
    assert still_there_after_child == "True"
    assert exiting.returncode == 0
    assert not (tmp_path / name).exists()
    # kill -9 leaves it behind; remove_stale cleans it up once the process is gone.
    crashing = _spawn(tmp_path, "hang")
    assert crashing.stdout is not None
    name = crashing.stdout.readline().strip()
    assert ShmArena.remove_stale(tmp_path, "life") == []  # still alive
    crashing.kill()
    crashing.wait()
    crashing.stdout.close()
    assert (tmp_path / name).exists()
    assert ShmArena.remove_stale(tmp_path, "life") == [name]
    assert not any(tmp_path.iterdir())


def test_write_fills_an_extent_as_a_copy_through_the_view_would(tmp_path: Path) -> None:
    with ShmArena(4 * PAGE_SIZE, directory=tmp_path) as arena:
        offset = arena.allocate(PAGE_SIZE + 10)
        assert offset is not None
        data = bytes(range(256)) * 20
        arena.write(offset, data)
        assert bytes(arena.view(offset, len(data))) == data
        with pytest.raises(ValueError, match="do not fit"):
            arena.write(offset, bytes(2 * PAGE_SIZE + 1))
        with pytest.raises(KeyError):
            arena.write(offset + PAGE_SIZE, b"x")


@pytest.mark.parametrize("plant", ["symlink", "link"])
def test_a_planted_segment_name_is_refused_not_followed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, plant: str
) -> None:
    """Issue 14, defect 9: the arena is created O_CREAT | O_EXCL, never through a name
    someone planted in the shared directory (a link to a file they want overwritten)."""
    import semcached.index.shm_arena as arena_module

    monkeypatch.setattr(arena_module.secrets, "token_hex", lambda n: "cd" * n)
    victim = tmp_path / "victim"
    victim.write_bytes(b"untouched")
    getattr(os, plant)(victim, tmp_path / f"t-{os.getpid()}-{'cd' * 4}")
    with pytest.raises(ArenaError, match="cannot create"):
        ShmArena(4 * P, directory=tmp_path, prefix="t")
    assert victim.read_bytes() == b"untouched"


def test_the_segment_is_private_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        with ShmArena(4 * P, directory=tmp_path, prefix="t") as a:
            info = a.path.stat()
    finally:
        os.umask(old)
    assert info.st_mode & 0o777 == 0o600


def test_a_write_lands_at_its_place_in_the_extent_and_must_fit(arena: ShmArena) -> None:
    offset = arena.allocate(2 * PAGE_SIZE)
    assert offset is not None
    arena.write(offset, b"head")
    arena.write(offset, b"tail", at=2 * PAGE_SIZE - 4)
    with arena.view(offset, 2 * PAGE_SIZE) as view:
        assert bytes(view[:4]) == b"head"
        assert bytes(view[-4:]) == b"tail"
        assert bytes(view[4:-4]) == bytes(2 * PAGE_SIZE - 8)
    with pytest.raises(ValueError, match="do not fit"):
        arena.write(offset, b"x", at=2 * PAGE_SIZE)
