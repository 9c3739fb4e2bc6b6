"""FaissIndex specifics: tombstones and compaction, ids, snapshots, threads, the GPU.

The VectorIndex protocol and the property tests against brute force run on FaissIndex
in test_vector_index.py; the tests marked ``gpu`` need faiss's GPU build and a device.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from semcached.index.exact import ExactIndex
from semcached.index.faiss_index import (
    SNAPSHOT_KIND,
    FaissIndex,
    FaissUnavailableError,
    GpuUnavailableError,
    gpu_count,
    import_faiss,
)
from semcached.index.hnsw import HnswlibIndex
from semcached.index.snapshot import read_snapshot, write_snapshot
from semcached.index.vector_index import IndexFullError, SnapshotError

DIM = 8

needs_gpu = pytest.mark.skipif(
    gpu_count() == 0,
    reason="needs faiss's GPU build and a CUDA device (faiss sees none: "
    "install the `faiss-gpu` extra on a CUDA machine)",
)


def rows(seed: int, n: int, dim: int = DIM) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)


def labels(start: int, stop: int) -> np.ndarray:
    return np.arange(start, stop, dtype=np.uint64)


def assert_same_as_exact(index: FaissIndex, exact: ExactIndex, seed: int = 99) -> None:
    index._check()
    assert sorted(index.ids().tolist()) == sorted(exact.ids().tolist())
    queries = rows(seed, 16, index.dim)
    for (g, gs), (w, ws) in zip(index.search(queries, 5), exact.search(queries, 5), strict=True):
        assert np.allclose(gs, ws, atol=1e-5)
        assert set(g.tolist()) <= set(exact.ids().tolist())
        assert len(g) == len(w)


def filled(n: int = 100, **kwargs: int) -> tuple[FaissIndex, ExactIndex]:
    index, exact = FaissIndex(DIM, **kwargs), ExactIndex(DIM)  # type: ignore[arg-type]
    for idx in (index, exact):
        idx.add(labels(1, n + 1), rows(1, n))
    return index, exact


# -- tombstones and compaction ----------------------------------------------------------


def test_removes_leave_tombstones_until_a_quarter_then_compact() -> None:
    index, exact = filled(100, compact_min=8)
    for idx in (index, exact):
        idx.remove(labels(1, 21))  # 20 of 100 rows dead: under a quarter
    assert (index.rows, index.tombstones, len(index)) == (100, 20, 80)
    assert_same_as_exact(index, exact)  # the selector skips the dead rows
    for idx in (index, exact):
        idx.remove(labels(21, 31))  # 30 of 100: compacted
    assert (index.rows, index.tombstones, len(index)) == (70, 0, 70)
    assert_same_as_exact(index, exact)
    for idx in (index, exact):  # added after a compaction: new rows at the end
        idx.add(labels(1, 11), rows(2, 10))
    assert_same_as_exact(index, exact)


def test_compact_min_holds_tombstones_of_a_small_index() -> None:
    index, exact = filled(20)  # compact_min 64 by default
    for idx in (index, exact):
        idx.remove(labels(1, 16))
    assert index.tombstones == 15
    assert_same_as_exact(index, exact)


def test_readding_a_live_id_tombstones_its_old_row() -> None:
    index, exact = filled(10)
    for idx in (index, exact):
        idx.add(labels(1, 4), rows(3, 3))
    assert (index.rows, index.tombstones, len(index)) == (13, 3, 10)
    assert_same_as_exact(index, exact)
    ((found, sims),) = index.search(rows(3, 3)[1:2], 1)
    assert (int(found[0]), float(sims[0])) == (2, pytest.approx(1.0, abs=1e-5))


def test_removing_everything_resets() -> None:
    index, _ = filled(10)
    assert index.remove(labels(0, 100)) == 10
    assert (index.rows, len(index)) == (0, 0)
    assert [len(f) for f, _ in index.search(rows(4, 2), 3)] == [0, 0]
    index.add(labels(5, 7), rows(4, 2))
    index._check()
    assert sorted(index.ids().tolist()) == [5, 6]


def test_overfetch_compacts_past_its_bound() -> None:
    """The GPU's handling of tombstones, on the CPU: over-fetch up to 4, then compact."""
    index, exact = filled(30, overfetch_dead=4)
    for idx in (index, exact):
        idx.remove(labels(1, 5))
    assert index.tombstones == 4
    assert_same_as_exact(index, exact)  # each search fetches k + 4 rows and drops the dead
    for idx in (index, exact):
        idx.remove(labels(5, 6))
    assert (index.rows, index.tombstones) == (25, 0)
    assert_same_as_exact(index, exact)
    with pytest.raises(ValueError, match="at most 2044"):
        index.search(rows(5, 1), 2045)


def test_max_capacity_counts_live_entries_and_adds_nothing_over_it() -> None:
    index = FaissIndex(DIM, max_capacity=10)
    index.add(labels(0, 10), rows(6, 10))
    index.add(labels(0, 5), rows(7, 5))  # re-adds need no room
    with pytest.raises(IndexFullError, match="max_capacity is 10"):
        index.add(labels(9, 11), rows(8, 2))
    assert len(index) == 10
    assert 10 not in index
    index.remove(labels(0, 1))
    index.add(labels(10, 11), rows(8, 1))
    assert len(index) == 10


def test_ids_with_the_top_bit_set_survive_compaction_and_snapshots(tmp_path: Path) -> None:
    top = 1 << 63
    big = labels(top, top + 50)
    big[-1] = (1 << 64) - 1
    index, exact = FaissIndex(DIM, compact_min=1), ExactIndex(DIM)
    for idx in (index, exact):
        idx.add(big, rows(9, 50))
        idx.remove(big[:20])
    assert index.tombstones == 0  # compacted
    assert_same_as_exact(index, exact)
    index.save(tmp_path / "snap")
    loaded = FaissIndex.load(tmp_path / "snap", dim=DIM)
    assert_same_as_exact(loaded, exact)
    assert (1 << 64) - 1 in loaded


def test_constructor_arguments_are_checked() -> None:
    for kwargs in (
        {"max_capacity": 0},
        {"omp_threads": 0},
        {"compact_fraction": 0.0},
        {"compact_min": 0},
        {"overfetch_dead": 5000},
    ):
        with pytest.raises(ValueError, match="must be"):
            FaissIndex(DIM, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="dim"):
        FaissIndex(0)


# -- snapshots --------------------------------------------------------------------------


def test_snapshot_keeps_tombstones_and_results(tmp_path: Path) -> None:
    index, exact = filled(100)
    for idx in (index, exact):
        idx.remove(labels(1, 11))
    assert index.tombstones == 10
    index.save(tmp_path / "snap")
    meta, parts = read_snapshot(tmp_path / "snap", kind=SNAPSHOT_KIND)
    assert meta == {"dim": DIM, "rows": 100, "count": 90}
    assert set(parts) == {"faiss", "ids", "alive"}
    loaded = FaissIndex.load(tmp_path / "snap", dim=DIM)
    assert (loaded.rows, loaded.tombstones) == (100, 10)
    assert_same_as_exact(loaded, exact)
    q = rows(10, 8)
    for (a, sa), (b, sb) in zip(index.search(q, 5), loaded.search(q, 5), strict=True):
        assert a.tolist() == b.tolist()
        assert np.array_equal(sa, sb)
    # Loaded with a smaller bound on tombstones (as on a GPU), it compacts at once.
    strict = FaissIndex.load(tmp_path / "snap", dim=DIM, overfetch_dead=4)
    assert strict.tombstones == 0
    assert_same_as_exact(strict, exact)


def test_snapshot_of_an_empty_index(tmp_path: Path) -> None:
    FaissIndex(DIM).save(tmp_path / "snap")
    loaded = FaissIndex.load(tmp_path / "snap", dim=DIM)
    assert len(loaded) == 0
    loaded.add(labels(1, 3), rows(11, 2))
    loaded._check()


def test_snapshots_of_another_backend_kind_or_dim_are_refused(tmp_path: Path) -> None:
    index, _ = filled(10)
    index.save(tmp_path / "faiss")
    with pytest.raises(SnapshotError, match="dim 8, not 16"):
        FaissIndex.load(tmp_path / "faiss", dim=16)
    with pytest.raises(SnapshotError, match="holds a 'faiss-ip' index"):
        HnswlibIndex.load(tmp_path / "faiss", dim=DIM)
    with pytest.raises(SnapshotError, match="max_capacity"):
        FaissIndex.load(tmp_path / "faiss", dim=DIM, max_capacity=5)
    hnsw = HnswlibIndex(DIM, m=8, ef_construction=32, ef_search=32)
    hnsw.add(labels(1, 3), rows(12, 2))
    hnsw.save(tmp_path / "hnsw")
    with pytest.raises(SnapshotError, match="holds a 'hnswlib-cosine' index, not 'faiss-ip'"):
        FaissIndex.load(tmp_path / "hnsw", dim=DIM)


def test_snapshot_whose_parts_disagree_is_refused(tmp_path: Path) -> None:
    """Checksums pass (the files are what the manifest says) but the contents disagree."""
    index, _ = filled(10)
    index.save(tmp_path / "snap")
    meta, parts = read_snapshot(tmp_path / "snap", kind=SNAPSHOT_KIND)
    contents = {part: file.read_bytes() for part, file in parts.items()}

    def rewrite(meta: dict[str, int], **changed: bytes) -> None:
        data = contents | changed
        write_snapshot(
            tmp_path / "bad",
            kind=SNAPSHOT_KIND,
            meta=meta,
            files={part: (lambda t, b=blob: t.write_bytes(b)) for part, blob in data.items()},
        )

    rewrite(meta | {"count": 9})
    with pytest.raises(SnapshotError, match="lists 10 live ids, not 9"):
        FaissIndex.load(tmp_path / "bad", dim=DIM)
    rewrite(meta | {"rows": 11})
    with pytest.raises(SnapshotError, match="does not match its metadata"):
        FaissIndex.load(tmp_path / "bad", dim=DIM)
    rewrite(meta, faiss=b"not a faiss index")
    with pytest.raises(SnapshotError, match="faiss cannot read"):
        FaissIndex.load(tmp_path / "bad", dim=DIM)
    duplicated = np.frombuffer(contents["ids"], dtype="<u8").copy()
    duplicated[1] = duplicated[0]
    rewrite(meta, ids=duplicated.tobytes())
    with pytest.raises(SnapshotError, match="live ids"):
        FaissIndex.load(tmp_path / "bad", dim=DIM)
    rewrite({"dim": DIM})
    with pytest.raises(SnapshotError, match="malformed"):
        FaissIndex.load(tmp_path / "bad", dim=DIM)


# -- threads ----------------------------------------------------------------------------


def test_concurrent_searches_adds_and_removes_end_with_right_contents() -> None:
    index = FaissIndex(16, compact_min=8)  # compacts many times under load
    vectors = rows(13, 2000, 16)
    errors: list[BaseException] = []
    done = threading.Event()

    def writer(offset: int) -> None:
        try:
            for start in range(offset, 2000, 200):
                chunk = np.arange(start, start + 100, dtype=np.uint64)
                index.add(chunk + 1, vectors[start : start + 100])
                index.remove(chunk[::10] + 1)  # every tenth id goes again
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    def reader() -> None:
        try:
            while not done.is_set():
                for found, sims in index.search(vectors[:8], 5):
                    assert len(set(found.tolist())) == len(found)
                    assert np.all(np.diff(sims) <= 1e-6)
                    assert not {int(f) for f in found} & {1, 11, 21}  # removed at once
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    writers = [threading.Thread(target=writer, args=(o,)) for o in (0, 100)]
    readers = [threading.Thread(target=reader) for _ in range(2)]
    for t in writers + readers:
        t.start()
    for t in writers:
        t.join()
    done.set()
    for t in readers:
        t.join()
    assert not errors
    index._check()
    live = [i for i in range(2000) if i % 10]
    assert set(index.ids().tolist()) == {i + 1 for i in live}
    exact = ExactIndex(16)
    exact.add(np.asarray(live, dtype=np.uint64) + 1, vectors[live])
    assert_same_as_exact(index, exact)


def test_openmp_threads_are_set_on_the_searching_thread() -> None:
    faiss = import_faiss()
    index, _ = filled(10, omp_threads=1)
    seen: list[int] = []

    def search() -> None:
        index.search(rows(14, 1), 1)
        seen.append(int(faiss.omp_get_max_threads()))

    worker = threading.Thread(target=search)
    worker.start()
    worker.join()
    assert seen == [1]


# -- missing faiss, missing GPU, and the GPU ----------------------------------------------


def test_missing_faiss_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "faiss", None)  # as if it were not installed
    with pytest.raises(FaissUnavailableError, match=r"the `faiss` extra"):
        FaissIndex(DIM)
    assert gpu_count() == 0


@pytest.mark.skipif(gpu_count() > 0, reason="faiss sees a GPU here")
def test_gpu_index_without_a_gpu_is_an_error_not_a_fallback() -> None:
    with pytest.raises(GpuUnavailableError, match="faiss-gpu"):
        FaissIndex(DIM, gpu=True)
    with pytest.raises(GpuUnavailableError):
        FaissIndex(DIM, gpu=3)


@pytest.mark.gpu
@needs_gpu
def test_gpu_index_against_exact_with_tombstones_and_snapshots(tmp_path: Path) -> None:
    index, exact = FaissIndex(64, gpu=True), ExactIndex(64)
    assert index.device == 0
    vectors = rows(15, 5000, 64)
    for idx in (index, exact):
        idx.add(labels(1, 5001), vectors)
        idx.remove(labels(1, 1101))  # past GPU_MAX_DEAD: compacted through the host
        idx.add(labels(1, 11), rows(16, 10, 64))
        idx.remove(labels(2000, 2100))  # tombstones, skipped by over-fetching
    assert (index.rows, index.tombstones) == (4010, 100)
    assert_same_as_exact(index, exact)
    index.save(tmp_path / "snap")
    on_cpu = FaissIndex.load(tmp_path / "snap", dim=64)
    assert on_cpu.device is None
    assert_same_as_exact(on_cpu, exact)
    on_cpu.save(tmp_path / "snap")
    back = FaissIndex.load(tmp_path / "snap", dim=64, gpu=0)
    assert back.device == 0
    assert_same_as_exact(back, exact)


@pytest.mark.gpu
@needs_gpu
def test_gpu_index_concurrent_searches_are_serialised_and_right() -> None:
    index = FaissIndex(32, gpu=True)
    vectors = rows(17, 3000, 32)
    index.add(labels(0, 3000), vectors)
    results: list[list[int]] = []

    def search(offset: int) -> None:
        found = index.search(vectors[offset : offset + 256], 1)
        results.append([int(f[0]) - offset for f, _ in found])

    threads = [threading.Thread(target=search, args=(o,)) for o in range(0, 2048, 256)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(r == list(range(256)) for r in results)
