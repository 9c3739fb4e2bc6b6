"""`index.backend`: the component's choice of index, its errors, and switching backends.

The entries live in LMDB, so a snapshot of another backend (refused by its kind) is
rebuilt from LMDB at start and no entry is lost; the daemon test runs it end to end.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from semcached.cachepolicy.categories import CategoryTable
from semcached.clients import SemcachedClient
from semcached.errors import ConfigError
from semcached.index.docstore import DocumentStore
from semcached.index.faiss_index import FaissIndex, GpuUnavailableError, gpu_count
from semcached.index.hnsw import HnswlibIndex
from semcached.index.lmdb_env import LmdbEnvironment
from semcached.service.config import IndexSettings
from semcached.service.semantic.component import index_backend
from semcached.service.semantic.embedding.disabled import DisabledEmbedder
from semcached.service.semantic.engine import Insert, Lookup, SemanticCache
from semcached.service.semantic.snapshots import SnapshotDirectory
from tests.daemon import DaemonProcess
from tests.service.semantic.kit import DIM, Clock, unit


def test_backends_make_and_load_their_own_indexes(tmp_path: Path) -> None:
    for backend, cls in (("hnswlib", HnswlibIndex), ("faiss", FaissIndex)):
        new, load = index_backend(IndexSettings(backend=backend))  # type: ignore[arg-type]
        index = new(DIM)
        assert isinstance(index, cls)
        index.add(np.arange(1, 4, dtype=np.uint64), np.stack([unit(n) for n in range(3)]))
        index.save(tmp_path / backend)
        loaded = load(tmp_path / backend, DIM)
        assert isinstance(loaded, cls)
        assert sorted(loaded.ids().tolist()) == [1, 2, 3]


def test_missing_faiss_is_a_config_error_naming_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "faiss", None)  # as if it were not installed
    with pytest.raises(ConfigError, match=r"index.backend = 'faiss': .*the `faiss` extra"):
        index_backend(IndexSettings(backend="faiss"))
    index_backend(IndexSettings(backend="hnswlib"))  # needs no faiss


@pytest.mark.skipif(gpu_count() > 0, reason="faiss sees a GPU here")
def test_faiss_gpu_without_a_gpu_fails_at_start() -> None:
    with pytest.raises(GpuUnavailableError, match=r"index.backend = 'faiss-gpu': .*GPU"):
        index_backend(IndexSettings(backend="faiss-gpu"))


Factory = Callable[[str, Path], SemanticCache]


@pytest.fixture
def make(env: LmdbEnvironment, executor: ThreadPoolExecutor, clock: Clock) -> Factory:
    def build(backend: str, snapshots: Path) -> SemanticCache:
        new, load = index_backend(IndexSettings(backend=backend))  # type: ignore[arg-type]
        return SemanticCache(
            store=DocumentStore(env),
            index_factory=new,
            embedder=DisabledEmbedder(DIM),
            categories=CategoryTable(),
            dim=DIM,
            executor=executor,
            clock=clock,
            sweep_interval_s=3600,
            snapshots=SnapshotDirectory(snapshots, load),
        )

    return build


def insert(n: int) -> Insert:
    return Insert(namespace="t1", prompt=f"prompt {n}", response=b'"a"', vector=unit(n))


@pytest.mark.parametrize(("first", "then"), [("hnswlib", "faiss"), ("faiss", "hnswlib")])
async def test_switching_backend_rebuilds_from_lmdb_and_keeps_every_entry(
    make: Factory, tmp_path: Path, first: str, then: str
) -> None:
    engine = make(first, tmp_path / "snapshots")
    await engine.open()
    ids = {n: (await engine.insert(insert(n))).entry_id for n in range(30)}
    assert await engine.delete(ids.pop(7))
    await engine.close()
    assert engine.snapshot_stats().written == 1

    for backend, loaded, rebuilt in ((then, 0, 1), (then, 1, 0), (first, 0, 1)):
        again = make(backend, tmp_path / "snapshots")
        await again.open()
        try:
            report = again.last_open
            assert report is not None
            assert (report.indexes_loaded, report.indexes_rebuilt) == (loaded, rebuilt)
            assert report.entries == 29
            for n, entry_id in ids.items():
                result = await again.lookup(Lookup("t1", vector=unit(n)))
                assert result.hit
                assert result.entry_id == entry_id
            assert not (await again.lookup(Lookup("t1", vector=unit(7)))).hit
        finally:
            await again.close()


def test_daemon_with_the_faiss_backend_restarts_with_its_entries(tmp_path: Path) -> None:
    data = tmp_path / "data"
    faiss = ["--index.backend", "faiss"]
    process = DaemonProcess(data, faiss)
    try:
        url = process.wait_ready()
        with SemcachedClient(url) as client:
            acknowledged = {
                n: client.insert("t1", f"p{n}", n, vector=unit(n, 384)).entry_id for n in range(20)
            }
            hit = client.lookup("t1", vector=unit(3, 384))
            assert (hit.hit, hit.entry_id) == (True, acknowledged[3])
    finally:
        assert process.terminate() == 0  # a clean shutdown snapshots the index

    for args, outcome in ((faiss, "loaded index t1/default from its snapshot"),
                          ([], "index t1/default will be rebuilt")):  # fmt: skip
        restarted = DaemonProcess(data, args)
        try:
            url = restarted.wait_ready()
            assert outcome in restarted.log
            with SemcachedClient(url) as client:
                for n, entry_id in acknowledged.items():
                    hit = client.lookup("t1", vector=unit(n, 384))
                    assert (hit.hit, hit.entry_id) == (True, entry_id)
        finally:
            restarted.terminate()
