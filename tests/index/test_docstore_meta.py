"""DocumentStore.scan_meta: the header-only scan a restart uses, against full documents."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from semcached.index.docstore import Document, DocumentStore, EntryMeta
from semcached.index.lmdb_env import LmdbEnvironment

MiB = 1 << 20
DIM = 8


@pytest.fixture
def store(tmp_path: Path) -> Iterator[DocumentStore]:
    env = LmdbEnvironment(tmp_path / "lmdb", initial_map_bytes=MiB, max_map_bytes=64 * MiB)
    yield DocumentStore(env, group_commit=False)
    env.close()


names = st.text(max_size=12)


@settings(max_examples=50, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    rows=st.lists(
        st.tuples(names, names, names, names, st.text(min_size=1, max_size=40), st.binary()),
        min_size=1,
        max_size=12,
    )
)
def test_scan_meta_matches_the_documents(
    store: DocumentStore, rows: list[tuple[str, str, str, str, str, bytes]]
) -> None:
    store.delete_many(range(1, 100))
    docs = [
        Document(i + 1, ns, cat, part, model, prompt, response, "bytes",
                 10.0 + i, 99.5 + i, 0, 0.0, DIM)
        for i, (ns, cat, part, model, prompt, response) in enumerate(rows)
    ]  # fmt: skip
    store.put_many([(d, np.ones(DIM, dtype=np.float32)) for d in docs])
    metas = [m for batch in store.scan_meta(batch_size=5) for m in batch]
    assert metas == [
        EntryMeta(
            d.entry_id, d.namespace, d.category, d.partition, d.created_at, d.expires_at,
            d.size_bytes,
        )
        for d in docs
    ]  # fmt: skip


def test_scan_meta_of_an_empty_store(store: DocumentStore) -> None:
    assert list(store.scan_meta()) == []
