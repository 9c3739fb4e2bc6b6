"""MilvusIndex's own parts on milvus-lite: descriptors, collections, errors, the daemon.

The protocol and the state machine against brute force run in test_vector_index.py.
Each test's milvus-lite server runs in this process (pymilvus starts it for a ``.db``
uri) and is stopped by the ``uri`` fixture; the daemon test's runs in the daemon.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from semcached.clients import SemcachedClient
from semcached.errors import ConfigError
from semcached.index.milvus_index import (
    SNAPSHOT_KIND,
    MilvusIndex,
    MilvusIndexError,
    MilvusUnavailableError,
    connect,
    stop_local_server,
)
from semcached.index.snapshot import read_snapshot
from semcached.index.vector_index import SnapshotError, VectorIndex
from semcached.service.config import IndexSettings
from semcached.service.semantic.component import index_backend
from tests.daemon import DaemonProcess
from tests.service.semantic.kit import unit

DIM = 8


@pytest.fixture
def uri(tmp_path: Path) -> Iterator[str]:
    path = str(tmp_path / "milvus.db")
    yield path
    stop_local_server(path)


def rows(n: int, seed: int = 0, dim: int = DIM) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)


def filled(uri: str, n: int = 30, **kwargs: int) -> tuple[MilvusIndex, np.ndarray]:
    index = MilvusIndex(DIM, uri=uri, **kwargs)  # type: ignore[arg-type]
    vectors = rows(n)
    index.add(np.arange(1, n + 1, dtype=np.uint64), vectors)
    return index, vectors


def test_descriptor_round_trip_reconnects_to_the_same_collection(uri: str, tmp_path: Path) -> None:
    index, vectors = filled(uri)
    assert index.remove(np.asarray([4, 4, 99], dtype=np.uint64)) == 1
    index.save(tmp_path / "snap")
    meta, parts = read_snapshot(tmp_path / "snap", kind=SNAPSHOT_KIND)
    assert parts == {}  # the vectors stay in Milvus
    assert meta["collection"] == index.collection
    assert (meta["dim"], meta["count"], meta["uri"]) == (DIM, 29, uri)

    loaded = MilvusIndex.load(tmp_path / "snap", dim=DIM)  # the recorded uri
    assert loaded.collection == index.collection
    assert sorted(loaded.ids().tolist()) == sorted(index.ids().tolist())
    assert 4 not in loaded
    assert len(loaded) == 29
    for (a, sa), (b, sb) in zip(
        index.search(vectors[:5], 3), loaded.search(vectors[:5], 3), strict=True
    ):
        assert a.tolist() == b.tolist()
        assert np.allclose(sa, sb)
    # Writes through the loaded index land in the same collection.
    loaded.add(np.asarray([100], dtype=np.uint64), vectors[:1] * -1)
    assert 100 in set(index.remote_ids().tolist())


def test_ids_enumerate_the_collection_past_one_iterator_page(uri: str, tmp_path: Path) -> None:
    index = MilvusIndex(DIM, uri=uri, flush_rows=0)
    labels = np.arange(1, 20_001, dtype=np.uint64) * np.uint64(7919)
    index.add(labels, rows(labels.size, seed=1))
    index.save(tmp_path / "snap")
    loaded = MilvusIndex.load(tmp_path / "snap", dim=DIM, uri=uri)
    assert np.array_equal(np.sort(loaded.ids()), np.sort(labels))


def test_missing_collection_or_other_dim_is_refused(uri: str, tmp_path: Path) -> None:
    index, _ = filled(uri)
    index.save(tmp_path / "snap")
    with pytest.raises(SnapshotError, match="dim 8, not 16"):
        MilvusIndex.load(tmp_path / "snap", dim=16, uri=uri)
    index.drop()
    with pytest.raises(SnapshotError, match="no collection"):
        MilvusIndex.load(tmp_path / "snap", dim=DIM, uri=uri)
    with pytest.raises(SnapshotError, match="no snapshot"):
        MilvusIndex.load(tmp_path / "absent", dim=DIM, uri=uri)


def test_two_indexes_in_one_database_are_kept_apart(uri: str) -> None:
    a, vectors = filled(uri, n=10)
    b = MilvusIndex(DIM, uri=uri)
    assert a.collection != b.collection
    b.add(np.asarray([1, 50], dtype=np.uint64), -vectors[:2])  # id 1 in both, another vector
    assert len(a) == 10
    assert len(b) == 2
    ((found, sims),) = b.search(vectors[:1], 5)
    assert sorted(found.tolist()) == [1, 50]
    assert sims[0] < -0.99 or sims[-1] < -0.99  # b's id 1 is -vectors[0]
    ((found, sims),) = a.search(vectors[:1], 1)
    assert (found.tolist(), round(float(sims[0]), 4)) == ([1], 1.0)
    assert b.remove(np.arange(1, 11, dtype=np.uint64)) == 1
    assert len(a) == 10
    assert set(a.remote_ids().tolist()) == set(range(1, 11))
    assert b.remote_ids().tolist() == [50]


def test_collection_is_created_at_the_first_write_and_a_taken_name_refused(uri: str) -> None:
    a = MilvusIndex(DIM, uri=uri, collection="shared")  # no Milvus call yet: see the module
    b = MilvusIndex(DIM, uri=uri, collection="shared")
    assert [len(f) for f, _ in a.search(rows(2), 3)] == [0, 0]
    assert a.remove(np.asarray([1], dtype=np.uint64)) == 0
    a.add(np.asarray([1], dtype=np.uint64), rows(1))
    with pytest.raises(MilvusIndexError, match="exists already"):
        b.add(np.asarray([2], dtype=np.uint64), rows(1))
    assert a.remote_ids().tolist() == [1]
    a.drop()


def test_saving_an_empty_index_creates_its_collection(uri: str, tmp_path: Path) -> None:
    index = MilvusIndex(DIM, uri=uri)
    index.save(tmp_path / "snap")
    loaded = MilvusIndex.load(tmp_path / "snap", dim=DIM)
    assert len(loaded) == 0
    loaded.add(np.asarray([5], dtype=np.uint64), rows(1))
    assert index.remote_ids().tolist() == [5]


def test_search_sees_adds_and_removes_at_once_in_memtable_and_segments(uri: str) -> None:
    # flush_rows=4: most rows sit in flushed segments, the last few in the memtable.
    index = MilvusIndex(DIM, uri=uri, flush_rows=4)
    vectors = rows(21, seed=2)
    for i, vector in enumerate(vectors):
        index.add(np.asarray([i + 1], dtype=np.uint64), vector[None])
        ((found, _),) = index.search(vector[None], 1)
        assert found.tolist() == [i + 1]
    for i in range(0, 21, 3):
        assert index.remove(np.asarray([i + 1], dtype=np.uint64)) == 1
        ((found, _),) = index.search(vectors[i : i + 1], 21)
        assert i + 1 not in found.tolist()
    assert sorted(index.remote_ids().tolist()) == sorted(index.ids().tolist())


def test_concurrent_searches_and_writes_end_with_right_contents(uri: str) -> None:
    index = MilvusIndex(DIM, uri=uri, flush_rows=64)
    vectors = rows(400, seed=3)
    errors: list[BaseException] = []
    done = threading.Event()

    def writer(offset: int) -> None:
        try:
            for start in range(offset, 400, 100):
                chunk = np.arange(start, start + 50, dtype=np.uint64)
                index.add(chunk + 1, vectors[start : start + 50])
                index.remove(chunk[::10] + 1)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    def reader() -> None:
        try:
            while not done.is_set():
                for found, sims in index.search(vectors[:4], 5):
                    assert len(set(found.tolist())) == len(found)
                    assert np.all(np.diff(sims) <= 1e-6)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    writers = [threading.Thread(target=writer, args=(o,)) for o in (0, 50)]
    readers = [threading.Thread(target=reader) for _ in range(2)]
    for t in writers + readers:
        t.start()
    for t in writers:
        t.join()
    done.set()
    for t in readers:
        t.join()
    assert not errors
    expected = {i + 1 for i in range(400) if i % 10}
    assert set(index.ids().tolist()) == expected
    assert set(index.remote_ids().tolist()) == expected


def test_unreachable_server_is_a_config_error_at_once() -> None:
    with pytest.raises(MilvusUnavailableError, match="cannot reach Milvus"):
        connect("http://127.0.0.1:1", timeout_s=1.0)
    with pytest.raises(ConfigError, match=r"index.backend = 'milvus': cannot reach"):
        index_backend(
            IndexSettings(backend="milvus", milvus_uri="http://127.0.0.1:1", milvus_timeout_s=1)
        )


def test_a_prefix_milvus_cannot_name_collections_with_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="milvus_collection_prefix 'sem-'"):
        index_backend(
            IndexSettings(backend="milvus", milvus_collection_prefix="sem-"), data_dir=tmp_path
        )


def test_missing_pymilvus_is_a_config_error_naming_the_extra(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "pymilvus", None)  # as if it were not installed
    with pytest.raises(ConfigError, match=r"index.backend = 'milvus': .*the `milvus` extra"):
        index_backend(IndexSettings(backend="milvus"), data_dir=tmp_path)


def test_backend_makes_and_loads_milvus_indexes_in_the_data_dir(tmp_path: Path) -> None:
    new, load = index_backend(IndexSettings(backend="milvus"), data_dir=tmp_path / "data")
    try:
        index = new(DIM)
        assert isinstance(index, MilvusIndex)
        assert index.uri == str(tmp_path / "data" / "milvus.db")
        index.add(np.arange(1, 4, dtype=np.uint64), rows(3))
        index.save(tmp_path / "snap")
        loaded: VectorIndex = load(tmp_path / "snap", DIM)
        assert isinstance(loaded, MilvusIndex)
        assert sorted(loaded.ids().tolist()) == [1, 2, 3]
    finally:
        stop_local_server(str(tmp_path / "data" / "milvus.db"))


def test_daemon_with_the_milvus_backend_restarts_with_its_entries(tmp_path: Path) -> None:
    data = tmp_path / "data"
    milvus = ["--index.backend", "milvus"]
    process = DaemonProcess(data, milvus)
    try:
        url = process.wait_ready()
        with SemcachedClient(url) as client:
            acknowledged = {
                n: client.insert("t1", f"p{n}", n, vector=unit(n, 384)).entry_id for n in range(20)
            }
            hit = client.lookup("t1", vector=unit(3, 384))
            assert (hit.hit, hit.entry_id) == (True, acknowledged[3])
    finally:
        assert process.terminate() == 0  # a clean shutdown writes the descriptor
    assert (data / "milvus.db").is_dir()
    assert " ERROR " not in process.log  # e.g. milvus-lite's unimplemented AllocTimestamp

    restarted = DaemonProcess(data, milvus)
    try:
        url = restarted.wait_ready()
        assert "loaded index t1/default from its snapshot" in restarted.log
        with SemcachedClient(url) as client:
            for n, entry_id in acknowledged.items():
                hit = client.lookup("t1", vector=unit(n, 384))
                assert (hit.hit, hit.entry_id) == (True, entry_id)
            fresh = client.insert("t1", "p99", 99, vector=unit(99, 384)).entry_id
            hit = client.lookup("t1", vector=unit(99, 384))
            assert (hit.hit, hit.entry_id) == (True, fresh)
    finally:
        assert restarted.terminate() == 0
    assert " ERROR " not in restarted.log


def test_daemon_with_an_unreachable_milvus_exits_2_at_start(tmp_path: Path) -> None:
    args = ["--index.backend", "milvus", "--index.milvus_uri", "http://127.0.0.1:1",
            "--index.milvus_timeout_s", "1"]  # fmt: skip
    process = DaemonProcess(tmp_path / "data", args)
    try:
        assert process.proc.wait(60) == 2
    finally:
        process.terminate()
    assert "index.backend = 'milvus': cannot reach Milvus at http://127.0.0.1:1" in process.log
