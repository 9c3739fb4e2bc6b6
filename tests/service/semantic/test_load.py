"""Load adaptation in-process: the per-(namespace, model) registry and its bounds, the
relaxed hit rule and TTL in the engine, isolation between namespaces, and staleness."""

from __future__ import annotations

from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from semcached.cachepolicy.calibration import Calibrator
from semcached.cachepolicy.categories import CategoryTable
from semcached.cachepolicy.load import LoadSettings, LoadTarget
from semcached.errors import BadRequestError, TooManyRequestsError
from semcached.index.docstore import DocumentStore
from semcached.index.lmdb_env import LmdbEnvironment
from semcached.service.semantic.embedding.disabled import DisabledEmbedder
from semcached.service.semantic.engine import Lookup, SemanticCache
from semcached.service.semantic.load import LoadBook
from tests.service.semantic.kit import DIM, Clock, new_index, unit
from tests.service.semantic.test_engine import at_similarity, insert

# Smoothing so short that the level follows the last report.
FOLLOW = LoadSettings(engage=1.0, release=0.7, saturate=2.0, half_life_s=1e-6, stale_s=60)
CATEGORIES = CategoryTable().with_overrides(
    {"busy": {"threshold": 0.9, "load_min_threshold": 0.8, "load_ttl_factor": 4.0}}
)
BUSY = CATEGORIES.resolve("busy")
TARGET = LoadTarget("gpt", queue_depth=10.0, latency_ms=1000.0)


def book(clock: Clock, max_models: int = 64) -> LoadBook:
    return LoadBook(FOLLOW, targets=lambda m: TARGET, max_models=max_models, clock=clock)


def calibrator() -> Calibrator:
    return Calibrator(configured=0.9, min_threshold=0.5, max_threshold=1.0, budget=0.0)


def test_a_report_sets_the_level_of_its_namespace_and_model_only(clock: Clock) -> None:
    loads = book(clock)
    state = loads.report("acme", "gpt", queue_depth=30.0)  # 3x the target: saturated
    assert (state.pressure, state.level, state.engaged) == (3.0, 1.0, True)
    assert loads.level("acme", "gpt", clock.now) == 1.0
    assert loads.level("bobco", "gpt", clock.now) == 0.0  # another tenant's namespace
    assert loads.level("acme", "other", clock.now) == 0.0
    assert loads.level("acme", "", clock.now) == 0.0  # a request naming no model


def test_hysteresis_and_staleness(clock: Clock) -> None:
    loads = book(clock)
    levels = []
    for depth in (8.0, 11.0, 8.0, 6.0, 8.0):
        clock.now += 1
        levels.append(loads.report("acme", "gpt", queue_depth=depth).level)
    assert levels == pytest.approx([0.0, 0.4 / 1.3, 0.1 / 1.3, 0.0, 0.0])
    loads.report("acme", "gpt", latency_ms=3000.0)
    clock.now += 61  # the gateway stopped reporting: back to the static policy
    assert loads.level("acme", "gpt", clock.now) == 0.0
    assert loads.state("acme", "gpt").engaged is False


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({}, "queue_depth"),
        ({"queue_depth": -1.0}, "queue_depth"),
        ({"latency_ms": float("nan")}, "latency_ms"),
    ],
)
def test_bad_reports_are_400_naming_the_field(
    clock: Clock, kwargs: dict[str, float], field: str
) -> None:
    with pytest.raises(BadRequestError) as info:
        book(clock).report("acme", "gpt", **kwargs)
    assert info.value.field == field


def test_each_owner_tracks_at_most_max_models_and_stale_ones_give_way(clock: Clock) -> None:
    loads = book(clock, max_models=2)
    loads.report("acme", "a", queue_depth=1.0, owner="acme")
    loads.report("acme-2", "b", queue_depth=1.0, owner="acme")
    loads.report("acme", "a", queue_depth=2.0, owner="acme")  # already tracked: fine
    loads.report("bobco", "a", queue_depth=1.0, owner="bobco")  # another owner's bound
    with pytest.raises(TooManyRequestsError) as info:
        loads.report("acme", "c", queue_depth=1.0, owner="acme")
    assert (info.value.status, info.value.field) == (429, "model")
    clock.now += 61
    loads.report("acme", "c", queue_depth=1.0, owner="acme")  # the stale two went
    assert [(m.namespace, m.model) for m in loads.models()] == [("acme", "c"), ("bobco", "a")]


def test_the_threshold_relaxes_toward_the_floor_and_a_request_threshold_wins(
    clock: Clock,
) -> None:
    loads = book(clock)
    cal = calibrator()
    assert loads.threshold(BUSY, 0.9, 0.0, cal) == 0.9
    assert loads.threshold(BUSY, 0.9, 0.5, cal, score=0.86) == pytest.approx(0.85)
    assert loads.threshold(BUSY, 0.9, 1.0, cal, score=0.95) == pytest.approx(0.8)
    assert loads.threshold(BUSY, 0.9, 1.0, cal, requested=0.95) == 0.9
    default = CATEGORIES.resolve(None)  # no load_min_threshold: never relaxes
    assert loads.threshold(default, 0.85, 1.0, cal) == 0.85
    counts = loads.counts["busy"]
    assert (counts.relaxed_lookups, counts.relaxed_hits) == (2, 1)


def test_a_budget_without_feedback_keeps_the_threshold(clock: Clock) -> None:
    budgeted = CATEGORIES.with_overrides({"busy": {"load_max_false_hit_rate": 0.05}})
    policy = budgeted.resolve("busy")
    cal = calibrator()
    loads = book(clock)
    assert loads.threshold(policy, 0.9, 1.0, cal) == 0.9
    for _ in range(100):  # right hits certify relaxing...
        cal.observe(0.95, correct=True)
    assert loads.threshold(policy, 0.9, 1.0, cal) == pytest.approx(0.8)
    for _ in range(20):  # ...until wrong ones served while relaxed are reported
        cal.observe(0.81, correct=False)
    assert loads.threshold(policy, 0.9, 1.0, cal) == pytest.approx(0.815)


def test_ttls_lengthen_within_max_ttl_and_a_request_ttl_wins(clock: Clock) -> None:
    loads = book(clock)
    assert loads.ttl(BUSY, None, 0.0) == BUSY.ttl_s
    assert loads.ttl(BUSY, None, 1.0) == 4 * BUSY.ttl_s
    assert loads.ttl(BUSY, 60.0, 1.0) == 60.0
    short = CATEGORIES.with_overrides({"busy": {"max_ttl_s": 2 * BUSY.ttl_s}}).resolve("busy")
    assert loads.ttl(short, None, 1.0) == 2 * BUSY.ttl_s


def test_a_reload_changes_how_reports_are_read(clock: Clock) -> None:
    loads = book(clock)
    loads.report("acme", "gpt", queue_depth=12.0)
    loads.configure(LoadSettings(engage=1.5, release=1.0, saturate=3.0), lambda m: TARGET, 64)
    clock.now += 1
    # Still engaged (1.2 is above the new release), at the new span: (1.2 - 1) / 2.
    assert loads.report("acme", "gpt", queue_depth=12.0).level == pytest.approx(0.1)


@pytest.fixture
async def engine(
    env: LmdbEnvironment, executor: ThreadPoolExecutor, clock: Clock
) -> AsyncIterator[SemanticCache]:
    cache = SemanticCache(
        store=DocumentStore(env),
        index_factory=new_index,
        embedder=DisabledEmbedder(DIM),
        categories=CATEGORIES,
        dim=DIM,
        executor=executor,
        clock=clock,
        sweep_interval_s=3600,
        load=book(clock),
    )
    await cache.open()
    yield cache
    await cache.close()


async def test_the_engine_relaxes_lookups_and_lengthens_ttls_of_the_loaded_model(
    engine: SemanticCache, clock: Clock
) -> None:
    base = unit(1)
    await engine.insert(insert("q", base, category="busy"))
    near = Lookup("t1", vector=at_similarity(base, 0.85), category="busy", model="gpt")
    assert not (await engine.lookup(near)).hit
    engine.load.report("t1", "gpt", queue_depth=30.0)
    relaxed = await engine.lookup(near)
    assert (relaxed.hit, relaxed.load_level) == (True, 1.0)
    other_space = Lookup("t2", vector=near.vector, category="busy", model="gpt")
    assert (await engine.lookup(other_space)).load_level == 0.0
    stored = await engine.insert(insert("r", unit(2), category="busy", model="gpt"))
    assert stored.expires_at == clock.now + 4 * BUSY.ttl_s
    clock.now += 61  # stale: the static policy again
    assert not (await engine.lookup(near)).hit
    plain = await engine.insert(insert("s", unit(3), category="busy", model="gpt"))
    assert plain.expires_at == clock.now + BUSY.ttl_s
