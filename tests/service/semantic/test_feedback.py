"""Feedback on served hits, in-process: lookup ids, removal of wrong entries, calibrated
thresholds applied to the hit decision, and all of it across a restart."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from semcached.cachepolicy.calibration import BANDS, ENTRY_MIN_CONFIRMATIONS
from semcached.cachepolicy.categories import CategoryTable
from semcached.index.docstore import DocumentStore
from semcached.index.feedback import FeedbackStore
from semcached.index.lmdb_env import LmdbEnvironment
from semcached.service.semantic.embedding.disabled import DisabledEmbedder
from semcached.service.semantic.engine import FeedbackReport, Lookup, SemanticCache
from semcached.service.semantic.feedback import FeedbackBook
from tests.service.semantic.kit import DIM, Clock, new_index, unit
from tests.service.semantic.test_engine import at_similarity, insert

MiB = 1 << 20
# A category with a 5% budget: 59 clean reports at one score are enough to calibrate.
CATEGORIES = CategoryTable().with_overrides(
    {"cal": {"threshold": 0.8, "min_threshold": 0.5, "max_false_hit_rate": 0.05}}
)


def everyone(namespace: str) -> bool:
    return True


def only(namespace: str) -> Callable[[str], bool]:
    return lambda name: name == namespace


class Daemonless:
    """An engine with its LMDB and feedback store under one directory, reopenable."""

    def __init__(self, path: Path, executor: ThreadPoolExecutor, clock: Clock) -> None:
        self.path, self.executor, self.clock = path, executor, clock
        self.env: LmdbEnvironment | None = None

    async def open(self) -> SemanticCache:
        self.env = LmdbEnvironment(self.path, initial_map_bytes=MiB, max_map_bytes=64 * MiB)
        engine = SemanticCache(
            store=DocumentStore(self.env),
            index_factory=new_index,
            embedder=DisabledEmbedder(DIM),
            categories=CATEGORIES,
            dim=DIM,
            executor=self.executor,
            clock=self.clock,
            sweep_interval_s=3600,
            feedback=FeedbackBook(CATEGORIES, FeedbackStore(self.env, bands=BANDS)),
        )
        await engine.open()
        return engine

    async def close(self, engine: SemanticCache) -> None:
        await engine.close()
        assert self.env is not None
        self.env.close()


@pytest.fixture
async def world(
    tmp_path: Path, executor: ThreadPoolExecutor, clock: Clock
) -> AsyncIterator[tuple[Daemonless, SemanticCache]]:
    place = Daemonless(tmp_path / "lmdb", executor, clock)
    engine = await place.open()
    yield place, engine
    await place.close(engine)


async def test_hits_carry_lookup_ids_and_misses_none(
    world: tuple[Daemonless, SemanticCache],
) -> None:
    _, engine = world
    base = unit(1)
    await engine.insert(insert("hello", base, category="cal"))
    semantic = await engine.lookup(Lookup("t1", vector=at_similarity(base, 0.9), category="cal"))
    exact = await engine.lookup(Lookup("t1", text="hello", category="cal"))
    miss = await engine.lookup(Lookup("t1", vector=at_similarity(base, 0.5), category="cal"))
    assert semantic.hit
    assert exact.strategy == "exact"
    assert semantic.lookup_id
    assert exact.lookup_id
    assert len({semantic.lookup_id, exact.lookup_id}) == 2
    assert miss.lookup_id is None


async def test_a_report_counts_once_and_a_wrong_entry_is_removed_durably(
    world: tuple[Daemonless, SemanticCache],
) -> None:
    _, engine = world
    base = unit(2)
    created = await engine.insert(insert("q", base, category="cal"))
    first = await engine.lookup(Lookup("t1", vector=at_similarity(base, 0.9), category="cal"))
    second = await engine.lookup(Lookup("t1", vector=at_similarity(base, 0.9), category="cal"))
    assert first.lookup_id is not None
    assert second.lookup_id is not None

    right = await engine.feedback(FeedbackReport(True, lookup_id=first.lookup_id), everyone)
    assert right is not None
    assert (right.entry_id, right.category, right.counted, right.removed) == (
        created.entry_id, "cal", True, False,
    )  # fmt: skip
    assert right.calibration.observations == 1
    again = await engine.feedback(FeedbackReport(True, lookup_id=first.lookup_id), everyone)
    assert again is not None
    assert not again.counted
    assert again.calibration.observations == 1

    wrong = await engine.feedback(FeedbackReport(False, lookup_id=second.lookup_id), everyone)
    assert wrong is not None
    assert (wrong.counted, wrong.removed) == (True, True)
    assert engine.get(created.entry_id) is None
    assert engine._store.get(created.entry_id) is None  # deleted from LMDB, not hidden
    after = await engine.lookup(Lookup("t1", vector=base, category="cal"))
    assert not after.hit
    # A report on a hit whose entry is gone still counts; it removes nothing more.
    late = await engine.feedback(FeedbackReport(False, lookup_id=first.lookup_id), everyone)
    assert late is not None
    assert (late.counted, late.removed) == (False, False)  # this id was reported already


async def test_unknown_forged_and_other_tenants_ids_resolve_to_nothing(
    world: tuple[Daemonless, SemanticCache],
) -> None:
    _, engine = world
    base = unit(3)
    created = await engine.insert(insert("q", base, category="cal"))
    hit = await engine.lookup(Lookup("t1", vector=base, category="cal"))
    assert hit.lookup_id is not None
    token = hit.lookup_id
    forged = token[:-2] + ("AA" if token[-2:] != "AA" else "BB")
    for lookup_id in ("nonsense", "", forged, token[:20]):
        assert await engine.feedback(FeedbackReport(True, lookup_id=lookup_id), everyone) is None
    other = only("t2")
    assert await engine.feedback(FeedbackReport(False, lookup_id=token), other) is None
    assert await engine.feedback(FeedbackReport(False, entry_id=created.entry_id), other) is None
    assert await engine.feedback(FeedbackReport(False, entry_id=12345), everyone) is None
    assert engine.get(created.entry_id) is not None  # nothing above removed it
    by_id = await engine.feedback(FeedbackReport(True, entry_id=created.entry_id), everyone)
    assert by_id is not None
    assert (by_id.counted, by_id.removed) == (False, False)  # no score: the entry's only


async def test_feedback_recalibrates_the_hit_decision(
    world: tuple[Daemonless, SemanticCache],
) -> None:
    """Configured 0.8: a candidate at 0.9 is a hit. Reports that hits at 0.972 are right
    move the threshold up to the lowest band with evidence (0.97), so 0.9 misses."""
    _, engine = world
    base = unit(4)
    await engine.insert(insert("q", base, category="cal"))
    near = at_similarity(base, 0.9, seed=5)
    assert (await engine.lookup(Lookup("t1", vector=near, category="cal"))).hit
    calibration = engine.calibrations()["cal"]
    assert (calibration.threshold, calibration.source) == (0.8, "configured")
    for i in range(59):
        hit = await engine.lookup(
            Lookup("t1", vector=at_similarity(base, 0.972, seed=10 + i), category="cal")
        )
        assert hit.lookup_id is not None
        await engine.feedback(FeedbackReport(True, lookup_id=hit.lookup_id), everyone)
    calibration = engine.calibrations()["cal"]
    assert calibration.source == "calibrated"
    assert calibration.threshold == pytest.approx(0.97)
    assert not (await engine.lookup(Lookup("t1", vector=near, category="cal"))).hit
    # A request's own threshold still wins (clamped to the category's bounds).
    assert (await engine.lookup(Lookup("t1", vector=near, category="cal", threshold=0.85))).hit


async def test_an_entry_confirmed_often_gets_its_own_threshold(
    world: tuple[Daemonless, SemanticCache],
) -> None:
    """Clean reports at 0.972 and wrong ones at 0.862 put the category at 0.865; an entry
    confirmed right three times at 0.852 answers down to 0.852 all the same."""
    _, engine = world

    async def report(target: np.ndarray, similarity: float, seed: int, correct: bool) -> int:
        hit = await engine.lookup(
            Lookup("t1", vector=at_similarity(target, similarity, seed), category="cal",
                   threshold=0.85)
        )  # fmt: skip
        assert hit.lookup_id is not None
        assert hit.entry_id is not None
        await engine.feedback(FeedbackReport(correct, lookup_id=hit.lookup_id), everyone)
        return hit.entry_id

    confirmed, other = unit(6), unit(7)
    created = await engine.insert(insert("q", confirmed, category="cal"))
    await engine.insert(insert("other", other, category="cal"))
    for i in range(59):
        await report(other, 0.972, 40 + i, True)
    for i in range(5):
        bad = unit(200 + i)
        await engine.insert(insert(f"bad {i}", bad, category="cal"))
        await report(bad, 0.862, 300 + i, False)
    for i in range(ENTRY_MIN_CONFIRMATIONS):
        assert await report(confirmed, 0.852, 20 + i, True) == created.entry_id
    assert engine.calibrations()["cal"].threshold == pytest.approx(0.865)

    served = await engine.lookup(
        Lookup("t1", vector=at_similarity(confirmed, 0.86, seed=99), category="cal")
    )
    assert served.hit
    assert served.entry_id == created.entry_id
    assert not (
        await engine.lookup(
            Lookup("t1", vector=at_similarity(other, 0.86, seed=98), category="cal")
        )
    ).hit


async def test_feedback_and_lookup_ids_survive_a_restart(
    tmp_path: Path, executor: ThreadPoolExecutor, clock: Clock
) -> None:
    place = Daemonless(tmp_path / "lmdb", executor, clock)
    engine = await place.open()
    base = unit(8)
    created = await engine.insert(insert("q", base, category="cal"))
    ids = []
    for i in range(60):
        hit = await engine.lookup(
            Lookup("t1", vector=at_similarity(base, 0.972, seed=60 + i), category="cal")
        )
        assert hit.lookup_id is not None
        ids.append(hit.lookup_id)
    for lookup_id in ids[:59]:
        await engine.feedback(FeedbackReport(True, lookup_id=lookup_id), everyone)
    before = engine.calibrations()["cal"]
    assert before.source == "calibrated"
    await place.close(engine)

    engine = await place.open()
    try:
        assert engine.calibrations()["cal"] == before
        late = await engine.feedback(FeedbackReport(False, lookup_id=ids[59]), everyone)
        assert late is not None  # issued before the restart, resolved after it
        assert (late.entry_id, late.counted, late.removed) == (created.entry_id, True, True)
        assert late.calibration.observations == before.observations + 1
    finally:
        await place.close(engine)
    engine = await place.open()  # the removal and the last report were durable too
    try:
        assert engine.get(created.entry_id) is None
        assert engine.calibrations()["cal"].observations == before.observations + 1
    finally:
        await place.close(engine)
