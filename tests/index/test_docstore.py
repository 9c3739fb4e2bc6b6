"""The semantic document store: encoding, exact map, durability, group commit, the cap."""

from __future__ import annotations

import dataclasses
import itertools
import shutil
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from semcached.index.docstore import (
    ENTRY_OVERHEAD_BYTES,
    Document,
    DocumentStore,
    exact_key,
    normalise_prompt,
)
from semcached.index.group_commit import GroupCommitter
from semcached.index.lmdb_env import LmdbEnvironment, StoreFullError

MiB = 1 << 20
DIM = 4


def make_doc(entry_id: int, prompt: str = "what is lmdb?", **changes: Any) -> Document:
    fields: dict[str, Any] = {
        "entry_id": entry_id,
        "namespace": "tenant",
        "category": "factual",
        "partition": "gpt-x|sys=1",
        "model": "gpt-x",
        "prompt": prompt,
        "response": b'{"answer": 42}',
        "response_format": "json",
        "created_at": 1_700_000_000.25,
        "expires_at": 1_700_003_600.5,
        "hit_count": 0,
        "last_hit_at": 0.0,
        "vector_dim": DIM,
    }
    fields.update(changes)
    return Document(**fields)


def vec(seed: int, dim: int = DIM) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=dim).astype(np.float32)


def open_env(path: Path, *, cap: int = 64 * MiB) -> LmdbEnvironment:
    return LmdbEnvironment(path, initial_map_bytes=MiB, max_map_bytes=cap)


@pytest.fixture(params=[True, False], ids=["group-commit", "direct"])
def store(env: LmdbEnvironment, request: pytest.FixtureRequest) -> DocumentStore:
    return DocumentStore(env, group_commit=request.param)


# -- documents --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "doc",
    [
        make_doc(1),
        make_doc(
            2,
            prompt="Ünïcödé ✓ 日本語 עברית e\u0301 🧪\n\ttabs",
            namespace="名前空間",
            category="código",
            partition="",
            model="",
            response=b"",
            response_format="bytes",
            hit_count=(1 << 63),
            last_hit_at=1e9,
            vector_dim=0,
        ),
        make_doc(3, response=bytes(range(256)) * 20_000, response_format="bytes"),  # ~5 MB
        make_doc((1 << 64) - 1, prompt="", created_at=-1.5, expires_at=float("inf")),
        make_doc(4, tokens=b"packed token embeddings"),
    ],
    ids=["plain", "unicode-empty-response", "large-response", "extremes", "tokens"],
)
def test_every_field_round_trips(store: DocumentStore, doc: Document) -> None:
    vector = vec(doc.entry_id % 1000)
    store.put_many([(doc, vector)])
    assert store.get(doc.entry_id) == doc
    stored = store.vector(doc.entry_id)
    assert stored is not None
    assert stored.dtype == np.float32
    assert np.array_equal(stored, vector)


def test_size_bytes_counts_strings_payload_vector_and_overhead() -> None:
    doc = make_doc(1, prompt="é" * 10, response=b"x" * 100, vector_dim=384)
    strings = len(b"tenant") + len(b"factual") + len(b"gpt-x|sys=1") + len(b"gpt-x") + 20
    assert doc.size_bytes == 50 + strings + 100 + 4 * 384 + ENTRY_OVERHEAD_BYTES
    assert dataclasses.replace(doc, vector_dim=0).size_bytes == doc.size_bytes - 4 * 384


def test_tokens_count_in_the_size_and_in_the_meta_record(store: DocumentStore) -> None:
    doc = make_doc(1, tokens=b"t" * 1000)
    assert doc.size_bytes == dataclasses.replace(doc, tokens=b"").size_bytes + 1000
    store.put_many([(doc, vec(1))])
    records, _ = store.scan_columns()
    assert int(records["size"][0]) == doc.size_bytes


def test_tokens_follow_their_entry_through_overwrite_scan_and_delete(
    store: DocumentStore,
) -> None:
    store.put_many([(make_doc(1, tokens=b"old"), vec(1)), (make_doc(2, tokens=b"two"), vec(2))])
    store.put_many([(make_doc(1), vec(1))])  # rewritten without tokens: none left behind
    assert [d.tokens for d, _ in next(store.scan())] == [b"", b"two"]
    assert [d.tokens for d in store.delete_many([2])] == [b"two"]
    store.put_many([(make_doc(2), vec(2))])
    assert store.get(2) == make_doc(2)


def test_document_is_frozen() -> None:
    doc = make_doc(1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        doc.hit_count = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    ("doc", "vector", "message"),
    [
        (make_doc(0), vec(0), "entry_id"),
        (make_doc(1, response_format="xml"), vec(0), "response_format"),
        (make_doc(1, hit_count=-1), vec(0), "negative"),
        (make_doc(1), np.zeros(DIM, dtype=np.float32), "zero"),
        (make_doc(1), np.full(DIM, np.nan, dtype=np.float32), "finite"),
        (make_doc(1), vec(0, DIM + 1), "document says"),
        (make_doc(1), np.ones((2, DIM), dtype=np.float32), "1-D"),
        (make_doc(1, namespace="n" * 70_000), vec(0), "64 KiB"),
    ],
)
def test_bad_input_raises_and_writes_nothing(
    store: DocumentStore, doc: Document, vector: np.ndarray, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        store.put_many([(make_doc(7), vec(7)), (doc, vector)])
    assert store.count() == 0


# -- the exact key ----------------------------------------------------------------------


def test_exact_key_is_stable_and_16_bytes() -> None:
    # Persisted in LMDB: changing the encoding orphans every stored mapping.
    assert exact_key("ns", "p", "hello").hex() == "6e2bd22215e020284c674d9d95147303"


def test_exact_key_normalisation() -> None:
    key = exact_key("ns", "p", "What is  the\tcapital\nof France?")
    assert exact_key("ns", "p", "  What is the capital of France?  ") == key
    assert exact_key("ns", "p", "\uff37hat is the capital of France?") == key  # NFKC: full-width
    assert exact_key("ns", "p", "what is the capital of france?") != key  # case is kept
    assert normalise_prompt("ﬁ\u00a0x") == "fi x"  # ligature and no-break space


def test_exact_key_separates_its_parts() -> None:
    assert exact_key("a", "bc", "x") != exact_key("ab", "c", "x")
    assert exact_key("ns", "p", "x") != exact_key("ns", "q", "x")
    assert exact_key("ns", "", "p x") != exact_key("ns", "p", "x")


# -- the store's operations -------------------------------------------------------------


def test_exact_map_follows_the_newest_entry(store: DocumentStore) -> None:
    key = exact_key("tenant", "gpt-x|sys=1", "what is lmdb?")
    store.put_many([(make_doc(1), vec(1))])
    assert store.exact_lookup(key) == 1
    store.put_many([(make_doc(2), vec(2))])  # the same prompt again, a new id
    assert store.exact_lookup(key) == 2
    assert [d.entry_id for d in store.delete_many([1])] == [1]
    assert store.exact_lookup(key) == 2  # deleting the old id keeps the new mapping
    store.delete_many([2])
    assert store.exact_lookup(key) is None


def test_overwriting_an_id_with_a_new_prompt_moves_its_mapping(store: DocumentStore) -> None:
    store.put_many([(make_doc(1, "first"), vec(1))])
    store.put_many([(make_doc(1, "second"), vec(2))])
    assert store.exact_lookup(exact_key("tenant", "gpt-x|sys=1", "first")) is None
    assert store.exact_lookup(exact_key("tenant", "gpt-x|sys=1", "second")) == 1
    assert store.count() == 1
    assert np.array_equal(store.vector(1), vec(2))  # type: ignore[arg-type]


def test_reads_in_order_with_gaps(store: DocumentStore) -> None:
    store.put_many([(make_doc(i, f"p{i}"), vec(i)) for i in (1, 3)])
    assert [d and d.entry_id for d in store.get_many([3, 2, 1])] == [3, None, 1]
    vectors = store.vectors([2, 3])
    assert vectors[0] is None
    assert np.array_equal(vectors[1], vec(3))  # type: ignore[arg-type]
    assert store.get(2) is None
    assert store.vector(2) is None
    assert store.delete_many([2, 2]) == []


def test_update_hits(store: DocumentStore) -> None:
    store.put_many([(make_doc(1), vec(1))])
    assert store.update_hits([(1, 2, 100.0), (9, 1, 5.0), (1, 1, 50.0)]) == 2
    doc = store.get(1)
    assert doc is not None
    assert (doc.hit_count, doc.last_hit_at) == (3, 100.0)  # the time never goes back
    assert dataclasses.replace(doc, hit_count=0, last_hit_at=0.0) == make_doc(1)


def test_max_id_count_and_scan(store: DocumentStore) -> None:
    assert store.max_id() == 0
    assert list(store.scan(10)) == []
    ids = [5, 1, 300, 2**40, 7]
    store.put_many([(make_doc(i, f"p{i}"), vec(i)) for i in ids])
    assert store.max_id() == 2**40
    assert store.count() == 5
    batches = list(store.scan(2))
    assert [len(b) for b in batches] == [2, 2, 1]
    assert [d.entry_id for b in batches for d, _ in b] == sorted(ids)
    assert all(np.array_equal(v, vec(d.entry_id)) for b in batches for d, v in b)
    with pytest.raises(ValueError, match="batch_size"):
        next(store.scan(0))


def test_scan_sees_entries_added_behind_its_position(store: DocumentStore) -> None:
    store.put_many([(make_doc(i, f"p{i}"), vec(i)) for i in range(1, 5)])
    seen = []
    for batch in store.scan(2):
        seen.extend(d.entry_id for d, _ in batch)
        if len(seen) == 2:
            store.put_many([(make_doc(10, "late"), vec(10))])
            store.delete_many([3])
    assert seen == [1, 2, 4, 10]


def test_purge_by_namespace_category_partition(store: DocumentStore) -> None:
    docs = [
        make_doc(1, "a"),
        make_doc(2, "b", category="code"),
        make_doc(3, "c", partition="other"),
        make_doc(4, "d", namespace="elsewhere"),
    ]
    store.put_many([(d, vec(d.entry_id)) for d in docs])
    assert store.purge("tenant", category="code") == [2]
    assert store.purge("tenant", partition="other") == [3]
    assert store.purge("nobody") == []
    assert store.purge("tenant") == [1]
    assert [d and d.entry_id for d in store.get_many([1, 2, 3, 4])] == [None, None, None, 4]
    assert store.exact_lookup(exact_key("tenant", "gpt-x|sys=1", "a")) is None


def test_data_survives_close_and_reopen(tmp_path: Path) -> None:
    env = open_env(tmp_path / "lmdb")
    store = DocumentStore(env)
    store.put_many([(make_doc(i, f"p{i}"), vec(i)) for i in range(1, 101)])
    store.delete_many([50])
    store.update_hits([(7, 3, 9.0)])
    env.close()
    again = DocumentStore(open_env(tmp_path / "lmdb"))
    assert again.count() == 99
    assert again.max_id() == 100
    assert again.get(50) is None
    assert again.get(7) == make_doc(7, "p7", hit_count=3, last_hit_at=9.0)
    assert again.exact_lookup(exact_key("tenant", "gpt-x|sys=1", "p8")) == 8
    assert np.array_equal(again.vector(8), vec(8))  # type: ignore[arg-type]


def test_store_full_at_the_cap_writes_nothing(tmp_path: Path) -> None:
    env = open_env(tmp_path / "lmdb", cap=2 * MiB)
    store = DocumentStore(env)
    store.put_many([(make_doc(1), vec(1))])
    big = [(make_doc(i, f"p{i}", response=b"x" * 50_000), vec(i)) for i in range(2, 100)]
    with pytest.raises(StoreFullError, match="cap"):
        store.put_many(big)
    assert store.count() == 1
    assert store.vectors([2, 50]) == [None, None]
    assert store.exact_lookup(exact_key("tenant", "gpt-x|sys=1", "p2")) is None
    assert store.get(1) == make_doc(1)
    env.close()


def fill_to_the_cap(store: DocumentStore, response: bytes = b"x" * 3000) -> list[int]:
    """Insert one document at a time until the store refuses; the ids stored."""
    stored: list[int] = []
    while True:
        entry_id = len(stored) + 1
        try:
            store.put_many([(make_doc(entry_id, f"p{entry_id}", response=response), vec(entry_id))])
        except StoreFullError:
            return stored
        stored.append(entry_id)


def test_delete_and_purge_work_at_the_cap(tmp_path: Path) -> None:
    env = open_env(tmp_path / "lmdb", cap=2 * MiB)
    store = DocumentStore(env)
    stored = fill_to_the_cap(store)
    assert len(stored) > 100
    # Deleting copies pages too: without free pages kept for it, this failed.
    assert [d.entry_id for d in store.delete_many(stored[:300])] == stored[:300]
    assert store.purge("tenant") == stored[300:]
    assert store.count() == 0
    assert fill_to_the_cap(store) != []  # the space is usable again
    env.close()


def test_evicting_at_the_cap_makes_room_for_inserts_indefinitely(tmp_path: Path) -> None:
    env = open_env(tmp_path / "lmdb", cap=2 * MiB)
    store = DocumentStore(env)
    live = fill_to_the_cap(store)
    sizes = [100, 1000, 3000, 9000]
    for entry_id in range(len(live) + 1, len(live) + 3000):
        doc = make_doc(entry_id, f"p{entry_id}", response=b"y" * sizes[entry_id % 4])
        while True:
            try:
                store.put_many([(doc, vec(entry_id))])
                break
            except StoreFullError:
                victims, live = live[:4], live[4:]
                assert victims, "evicted everything and still no room"
                store.delete_many(victims)
        live.append(entry_id)
    assert store.count() == len(live)
    assert store.get(live[-1]) is not None
    env.close()


def test_hit_counts_are_written_back_at_the_cap(tmp_path: Path) -> None:
    env = open_env(tmp_path / "lmdb", cap=2 * MiB)
    store = DocumentStore(env)
    stored = fill_to_the_cap(store)
    # Each rewrite frees a document's pages; batches stay small enough for the reserve.
    assert store.update_hits([(i, 1, 5.0) for i in stored]) == len(stored)
    assert store.delete_many(stored[:10]) != []
    env.close()


def insert_until_full(store: DocumentStore, start: int) -> tuple[list[int], StoreFullError]:
    """Insert 3 kB documents from id ``start`` on until the store refuses one."""
    stored: list[int] = []
    for entry_id in itertools.count(start):
        doc = make_doc(entry_id, f"p{entry_id}", response=b"x" * 3000)
        try:
            store.put_many([(doc, vec(entry_id))])
        except StoreFullError as exc:
            return stored, exc
        stored.append(entry_id)
    raise AssertionError("unreachable")


def test_a_full_filesystem_is_store_full_and_deletes_still_work(
    small_filesystem: Callable[[int], Path],
) -> None:
    env = open_env(small_filesystem(4 * MiB) / "lmdb", cap=64 * MiB)
    store = DocumentStore(env)
    stored, full = insert_until_full(store, 1)
    assert full.disk  # ENOSPC, not the map cap (64 MiB)
    assert len(stored) > 100
    assert all(d is not None for d in store.get_many(stored))  # nothing committed is lost
    # Evict a little and fill the freed pages again: the file has no free page left.
    store.delete_many(stored[:50])
    more, _ = insert_until_full(store, stored[-1] + 1)
    stored = stored[50:] + more
    # Deleting needs new pages too; the ballast gives them back to the filesystem.
    assert store.purge("tenant") == stored
    assert store.count() == 0
    doc = make_doc(30_000, "after", response=b"x" * 3000)
    store.put_many([(doc, vec(1))])  # the freed pages are reused within the file
    assert store.get(30_000) == doc
    env.close()


# -- group commit -----------------------------------------------------------------------


def test_group_commit_merges_waiting_callers_into_one_commit() -> None:
    gate = threading.Event()
    commits: list[list[int]] = []

    def commit(items: list[int]) -> None:
        if not commits and items == [0]:
            commits.append(items)
            gate.wait()  # hold the first commit open while the others queue
            return
        commits.append(items)

    committer = GroupCommitter(commit, max_items=256)
    first = threading.Thread(target=committer.submit, args=([0],))
    first.start()
    while not commits:
        threading.Event().wait(0.001)
    others = [threading.Thread(target=committer.submit, args=([i],)) for i in range(1, 8)]
    for t in others:
        t.start()
    while len(committer._queue) < 7:  # all seven are queued behind the open commit
        threading.Event().wait(0.001)
    gate.set()
    for t in [first, *others]:
        t.join()
    assert commits[0] == [0]
    assert sorted(commits[1]) == list(range(1, 8))  # one transaction for the seven
    assert (committer.commits, committer.requests) == (2, 8)


def test_group_commit_bounds_the_group() -> None:
    committer: GroupCommitter[int] = GroupCommitter(lambda items: None, max_items=3, max_bytes=100)
    committer._queue.extend(_requests([[1, 2], [3], [4], [5]], [10] * 4))
    assert [r.items for r in committer._take_group()] == [[1, 2], [3]]
    assert [r.items for r in committer._take_group()] == [[4], [5]]
    committer._queue.extend(_requests([[1] * 9, [2]], [10, 10]))
    assert [r.items for r in committer._take_group()] == [[1] * 9]  # too big alone: alone
    committer._queue.extend(_requests([[3], [4]], [60, 60]))
    assert [r.items for r in committer._take_group()] == [[2], [3]]
    assert [r.items for r in committer._take_group()] == [[4]]  # 60 + 60 bytes > 100


def _requests(items: list[list[int]], sizes: list[int]) -> list[Any]:
    from semcached.index.group_commit import _Request

    return [_Request(i, n) for i, n in zip(items, sizes, strict=True)]


def test_group_commit_failure_reaches_every_caller_of_the_group() -> None:
    def commit(items: list[int]) -> None:
        if -1 in items:
            raise StoreFullError("full")

    committer = GroupCommitter(commit)
    with pytest.raises(StoreFullError):
        committer.submit([1, -1])
    committer.submit([2])  # the committer carries on after a failure


def test_eight_threads_all_durable_and_errors_reach_their_callers(tmp_path: Path) -> None:
    env = open_env(tmp_path / "lmdb", cap=4 * MiB)
    store = DocumentStore(env, max_batch_items=16)
    outcome: dict[int, BaseException | None] = {}
    lock = threading.Lock()

    def worker(t: int) -> None:
        for i in range(40):
            entry_id = t * 1000 + i + 1
            # Thread 7 sends documents far too large for the cap: they must fail alone
            # or with their group, never half-written.
            payload = b"y" * (5 * MiB) if t == 7 and i % 10 == 0 else b"x" * 200
            doc = make_doc(entry_id, f"t{t} q{i}", response=payload)
            try:
                store.put_many([(doc, vec(entry_id))])
                result: BaseException | None = None
            except StoreFullError as exc:
                result = exc
            with lock:
                outcome[entry_id] = result

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(outcome) == 320
    failed = {i for i, err in outcome.items() if err is not None}
    assert {7001, 7011, 7021, 7031} <= failed  # the oversized ones always fail
    for entry_id, err in outcome.items():
        doc = store.get(entry_id)
        assert (doc is None) == (err is not None)  # acknowledged <=> stored
        if doc is not None:
            assert doc.prompt.startswith(f"t{entry_id // 1000}")
    assert store.count() == 320 - len(failed)
    committer = store.committer
    assert committer is not None
    assert committer.requests == 320
    env.close()


# -- property test against a dict ------------------------------------------------------

IDS = st.integers(1, 12)
PROMPTS = st.sampled_from(["a", "b", " a ", "c d", "A"])
NAMESPACES = st.sampled_from(["n1", "n2"])
PARTITIONS = st.sampled_from(["", "p"])
CATEGORIES = st.sampled_from(["x", "y"])


def key_of(doc: Document) -> bytes:
    return exact_key(doc.namespace, doc.partition, doc.prompt)


class StoreAgainstDict(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp())
        self.env = open_env(self.tmp / "lmdb")
        self.store = DocumentStore(self.env)
        self.docs: dict[int, Document] = {}
        self.vectors: dict[int, np.ndarray] = {}
        self.exact: dict[bytes, int] = {}
        self.keys_seen: set[bytes] = set()

    def teardown(self) -> None:
        self.env.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def _forget(self, entry_id: int) -> None:
        doc = self.docs.pop(entry_id)
        del self.vectors[entry_id]
        if self.exact.get(key_of(doc)) == entry_id:
            del self.exact[key_of(doc)]

    @rule(
        batch=st.lists(
            st.tuples(IDS, PROMPTS, NAMESPACES, PARTITIONS, CATEGORIES, st.integers(0, 99)),
            min_size=1,
            max_size=5,
        )
    )
    def put(self, batch: list[tuple[int, str, str, str, str, int]]) -> None:
        items = []
        for entry_id, prompt, ns, part, cat, seed in batch:
            doc = make_doc(entry_id, prompt, namespace=ns, partition=part, category=cat)
            items.append((doc, vec(seed)))
            old = self.docs.get(entry_id)
            if (
                old is not None
                and key_of(old) != key_of(doc)
                and self.exact.get(key_of(old)) == entry_id
            ):
                del self.exact[key_of(old)]
            self.docs[entry_id] = doc
            self.vectors[entry_id] = vec(seed)
            self.exact[key_of(doc)] = entry_id
            self.keys_seen.add(key_of(doc))
        self.store.put_many(items)

    @rule(ids=st.lists(IDS, max_size=4))
    def delete(self, ids: list[int]) -> None:
        expected = [self.docs[i] for i in dict.fromkeys(ids) if i in self.docs]
        for doc in expected:
            self._forget(doc.entry_id)
        assert self.store.delete_many(ids) == expected

    @rule(updates=st.lists(st.tuples(IDS, st.integers(1, 3), st.floats(0, 100)), max_size=4))
    def update_hits(self, updates: list[tuple[int, int, float]]) -> None:
        count = 0
        for entry_id, added, at in updates:
            doc = self.docs.get(entry_id)
            if doc is None:
                continue
            count += 1
            self.docs[entry_id] = dataclasses.replace(
                doc, hit_count=doc.hit_count + added, last_hit_at=max(doc.last_hit_at, at)
            )
        assert self.store.update_hits(updates) == count

    @rule(ns=NAMESPACES, cat=st.none() | CATEGORIES, part=st.none() | PARTITIONS)
    def purge(self, ns: str, cat: str | None, part: str | None) -> None:
        doomed = [
            d.entry_id
            for d in self.docs.values()
            if d.namespace == ns
            and (cat is None or d.category == cat)
            and (part is None or d.partition == part)
        ]
        for entry_id in doomed:
            self._forget(entry_id)
        assert sorted(self.store.purge(ns, cat, part)) == sorted(doomed)

    @rule(entry_id=IDS)
    def get(self, entry_id: int) -> None:
        assert self.store.get(entry_id) == self.docs.get(entry_id)

    @invariant()
    def same_contents(self) -> None:
        assert self.store.count() == len(self.docs)
        assert self.store.max_id() == max(self.docs, default=0)
        scanned = [(d, v) for batch in self.store.scan(3) for d, v in batch]
        assert [d for d, _ in scanned] == [self.docs[i] for i in sorted(self.docs)]
        assert all(np.array_equal(v, self.vectors[d.entry_id]) for d, v in scanned)
        for key in self.keys_seen:
            assert self.store.exact_lookup(key) == self.exact.get(key)
        records, groups = self.store.scan_columns(batch_size=3)
        assert [
            (int(r["id"]), groups[int(r["group"])], float(r["expires_at"]), int(r["size"]))
            for r in records
        ] == [
            ((d := self.docs[i]).entry_id, (d.namespace, d.category, d.partition),
             d.expires_at, d.size_bytes)
            for i in sorted(self.docs)
        ]  # fmt: skip


StoreAgainstDict.TestCase.settings = settings(
    max_examples=40,
    stateful_step_count=20,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestStoreAgainstDict = StoreAgainstDict.TestCase
