"""DocumentStore.scan_columns: the bookkeeping records a restart reads, against the documents."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from semcached.index.docstore import META_DTYPE, Document, DocumentStore
from semcached.index.lmdb_env import LmdbEnvironment

MiB = 1 << 20
DIM = 8


@pytest.fixture
def store(env: LmdbEnvironment) -> DocumentStore:
    return DocumentStore(env, group_commit=False)


def columns_as_rows(store: DocumentStore, batch_size: int = 5) -> list[tuple[object, ...]]:
    """(id, namespace, category, partition, created, expires, size) per scanned record."""
    records, groups = store.scan_columns(batch_size=batch_size)
    assert records.dtype == META_DTYPE
    return [
        (int(r["id"]), *groups[int(r["group"])], float(r["created_at"]),
         float(r["expires_at"]), int(r["size"]))
        for r in records
    ]  # fmt: skip


def doc_row(d: Document) -> tuple[object, ...]:
    return (d.entry_id, d.namespace, d.category, d.partition, d.created_at, d.expires_at,
            d.size_bytes)  # fmt: skip


names = st.text(max_size=12)


@settings(max_examples=50, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    rows=st.lists(
        st.tuples(names, names, names, names, st.text(min_size=1, max_size=40), st.binary()),
        min_size=1,
        max_size=12,
    ),
    deleted=st.sets(st.integers(1, 12), max_size=4),
)
def test_scan_columns_matches_the_documents(
    store: DocumentStore, rows: list[tuple[str, str, str, str, str, bytes]], deleted: set[int]
) -> None:
    store.delete_many(range(1, 100))
    docs = [
        Document(i + 1, ns, cat, part, model, prompt, response, "bytes",
                 10.0 + i, 99.5 + i, 0, 0.0, DIM)
        for i, (ns, cat, part, model, prompt, response) in enumerate(rows)
    ]  # fmt: skip
    store.put_many([(d, np.ones(DIM, dtype=np.float32)) for d in docs])
    store.delete_many(deleted)
    assert columns_as_rows(store) == [doc_row(d) for d in docs if d.entry_id not in deleted]


def test_scan_columns_of_an_empty_store(store: DocumentStore) -> None:
    records, groups = store.scan_columns()
    assert len(records) == 0
    assert groups == {}


def test_overwriting_an_entry_replaces_its_record(store: DocumentStore) -> None:
    first = Document(7, "ns", "code", "p1", "m", "q", b"a", "bytes", 1.0, 2.0, 0, 0.0, DIM)
    second = Document(7, "ns", "chat", "p2", "m", "q?", b"abc", "bytes", 3.0, 4.0, 0, 0.0, DIM)
    for doc in (first, second):
        store.put_many([(doc, np.ones(DIM, dtype=np.float32))])
    assert columns_as_rows(store) == [doc_row(second)]


def test_ensure_meta_rebuilds_records_a_store_lacks(
    env: LmdbEnvironment, store: DocumentStore
) -> None:
    docs = [
        Document(i, f"ns{i % 2}", "code", f"p{i % 3}", "m", f"q{i}", b"r", "bytes",
                 float(i), 100.0 + i, 0, 0.0, DIM)
        for i in range(1, 30)
    ]  # fmt: skip
    store.put_many([(d, np.ones(DIM, dtype=np.float32)) for d in docs])
    assert store.ensure_meta() == 0  # written with the documents: nothing to do
    # A store written before sem.meta existed: documents without records.
    env.write(lambda txn: txn.drop(env.database(b"sem.meta"), delete=False))
    env.write(lambda txn: txn.drop(env.database(b"sem.groups"), delete=False))
    assert len(store.scan_columns()[0]) == 0
    assert store.ensure_meta(batch_size=7) == len(docs)
    assert columns_as_rows(store) == [doc_row(d) for d in docs]
    assert store.ensure_meta() == 0
