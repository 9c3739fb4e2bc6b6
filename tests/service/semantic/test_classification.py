"""Category classification in the engine, with the bag-of-words model of the kit.

The categories' examples use disjoint vocabularies, so a prompt made of one category's
words is nearest that category's examples (the model is a hashed bag of words).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from semcached.cachepolicy.categories import CategoryTable, UnknownCategoryError
from semcached.index.docstore import DocumentStore
from semcached.index.lmdb_env import LmdbEnvironment
from semcached.service.config import ClassificationSettings
from semcached.service.semantic.classification import CategoryClassifier
from semcached.service.semantic.embedding.base import Embedder, EmbeddingError
from semcached.service.semantic.embedding.disabled import DisabledEmbedder
from semcached.service.semantic.embedding.embedder import BatchingEmbedder
from semcached.service.semantic.engine import Insert, Lookup, SemanticCache
from tests.service.semantic.kit import BowBackend, Clock, bow, new_index

DIM = 256
CODE = ["python function list sort", "python class method compile", "java function compile bug"]
VOLATILE = ["bitcoin price today now", "weather forecast today rain", "stock price now market"]
EXAMPLES = {"code": {"examples": CODE}, "volatile": {"examples": VOLATILE}}


def table(overrides: dict[str, dict[str, object]] = EXAMPLES) -> CategoryTable:
    return CategoryTable().with_overrides(overrides)


def make_engine(
    env: LmdbEnvironment,
    executor: ThreadPoolExecutor,
    clock: Clock,
    embedder: Embedder,
    categories: CategoryTable,
    *,
    settings: ClassificationSettings | None = None,
) -> SemanticCache:
    return SemanticCache(
        store=DocumentStore(env),
        index_factory=new_index,
        embedder=embedder,
        categories=categories,
        dim=embedder.dim,
        executor=executor,
        clock=clock,
        sweep_interval_s=3600,
        classifier=CategoryClassifier(embedder, categories, settings),
    )


@pytest.fixture
def backend() -> BowBackend:
    return BowBackend(DIM)


@pytest.fixture
async def embedder(backend: BowBackend) -> AsyncIterator[BatchingEmbedder]:
    e = BatchingEmbedder(backend, max_wait_s=0.0)
    await e.open()
    yield e
    await e.close()


@pytest.fixture
async def engine(
    env: LmdbEnvironment, executor: ThreadPoolExecutor, clock: Clock, embedder: BatchingEmbedder
) -> AsyncIterator[SemanticCache]:
    cache = make_engine(env, executor, clock, embedder, table())
    await cache.open()
    yield cache
    await cache.close()


def insert(prompt: str, **kw: object) -> Insert:
    return Insert(namespace="t1", prompt=prompt, response=b'"a"', **kw)  # type: ignore[arg-type]


async def test_examples_are_embedded_at_open(engine: SemanticCache, backend: BowBackend) -> None:
    assert sorted(backend.texts) == sorted(CODE + VOLATILE)
    current = engine.classifier.current
    assert current is not None
    assert current.example_counts == {"code": 3, "volatile": 3}
    assert engine.classifier.off_reason is None


async def test_an_unnamed_insert_and_lookup_are_classified(
    engine: SemanticCache, backend: BowBackend
) -> None:
    stored = await engine.insert(insert("sort python list function"))
    assert (stored.category, stored.category_source) == ("code", "inferred")
    assert stored.category_confidence is not None
    assert stored.category_confidence >= 0.5
    assert engine.get(stored.entry_id) is not None
    assert engine.get(stored.entry_id).category == "code"  # type: ignore[union-attr]

    embedded_before = len(backend.texts)
    result = await engine.lookup(Lookup("t1", text="python list sort function"))
    # The same words in another order: not the exact tier. One text embedded for the
    # lookup, none more for classifying it.
    assert backend.texts[embedded_before:] == ["python list sort function"]
    assert (result.category, result.category_source) == ("code", "inferred")
    assert result.category_confidence is not None
    assert result.category_confidence >= 0.5
    assert result.hit
    assert (result.strategy, result.entry_id) == ("semantic", stored.entry_id)

    stats = engine.classifier.stats
    assert stats.inferred == {"code": 2}
    assert engine.stats()["code"].hits == 1


async def test_a_volatile_prompt_gets_the_volatile_policy(engine: SemanticCache) -> None:
    stored = await engine.insert(insert("bitcoin price now"))
    assert (stored.category, stored.category_source) == ("volatile", "inferred")
    assert stored.expires_at == engine._clock() + table().resolve("volatile").ttl_s


async def test_a_named_category_is_never_classified(engine: SemanticCache) -> None:
    stored = await engine.insert(insert("bitcoin price now", category="code"))
    assert (stored.category, stored.category_source, stored.category_confidence) == (
        "code",
        "given",
        None,
    )
    result = await engine.lookup(Lookup("t1", text="python sort", category="factual"))
    assert (result.category, result.category_source) == ("factual", "given")
    assert engine.classifier.stats.inferred == {}
    with pytest.raises(UnknownCategoryError):
        await engine.lookup(Lookup("t1", text="python sort", category="nope"))


async def test_the_exact_tier_answers_before_any_embedding_or_classification(
    engine: SemanticCache, backend: BowBackend
) -> None:
    stored = await engine.insert(insert("python class method compile please"))
    embedded_before = len(backend.texts)
    inferred_before = sum(engine.classifier.stats.inferred.values())
    result = await engine.lookup(Lookup("t1", text="python  class method compile please"))
    assert result.hit
    assert (result.strategy, result.entry_id) == ("exact", stored.entry_id)
    assert (result.category, result.category_source) == ("code", "entry")
    assert len(backend.texts) == embedded_before
    assert sum(engine.classifier.stats.inferred.values()) == inferred_before


async def test_below_the_floor_goes_to_default(
    env: LmdbEnvironment, executor: ThreadPoolExecutor, clock: Clock, embedder: BatchingEmbedder
) -> None:
    strict = ClassificationSettings(min_confidence=1.0)
    cache = make_engine(env, executor, clock, embedder, table(), settings=strict)
    await cache.open()
    try:
        stored = await cache.insert(insert("python function sort"))
        assert (stored.category, stored.category_source) == ("default", "default")
        assert stored.category_confidence is None
        assert cache.classifier.stats.below_floor == {"code": 1}
        assert cache.classifier.stats.inferred == {}
    finally:
        await cache.close()


async def test_a_prompt_like_no_example_goes_to_default(engine: SemanticCache) -> None:
    # Words of neither vocabulary: both categories score about the same.
    stored = await engine.insert(insert("zebra"))
    assert (stored.category, stored.category_source) == ("default", "default")


async def test_a_vector_only_request_is_classified_by_its_vector(engine: SemanticCache) -> None:
    vector = bow("weather today rain forecast", DIM)
    result = await engine.lookup(Lookup("t1", vector=vector))
    assert (result.category, result.category_source) == ("volatile", "inferred")
    stored = await engine.insert(insert("an opaque prompt", vector=vector))
    assert (stored.category, stored.category_source) == ("volatile", "inferred")


async def test_without_a_server_side_embedder_classification_is_off(
    env: LmdbEnvironment, executor: ThreadPoolExecutor, clock: Clock
) -> None:
    cache = make_engine(env, executor, clock, DisabledEmbedder(DIM), table())
    await cache.open()
    try:
        assert cache.classifier.current is None
        assert "none" in (cache.classifier.off_reason or "")
        stored = await cache.insert(insert("python function sort", vector=bow("python", DIM)))
        assert (stored.category, stored.category_source) == ("default", "default")
        result = await cache.lookup(Lookup("t1", vector=bow("bitcoin price", DIM)))
        assert (result.category, result.category_source) == ("default", "default")
        assert cache.classifier.stats.unclassified == 2
    finally:
        await cache.close()


async def test_without_examples_classification_is_off(
    env: LmdbEnvironment, executor: ThreadPoolExecutor, clock: Clock, embedder: BatchingEmbedder
) -> None:
    cache = make_engine(env, executor, clock, embedder, CategoryTable())
    await cache.open()
    try:
        assert cache.classifier.current is None
        assert "no category lists examples" in (cache.classifier.off_reason or "")
        stored = await cache.insert(insert("python function sort"))
        assert (stored.category, stored.category_source) == ("default", "default")
    finally:
        await cache.close()


# --- reloads --------------------------------------------------------------------------


async def test_a_reload_swaps_in_the_new_examples(
    engine: SemanticCache, backend: BowBackend
) -> None:
    before = engine.classifier.current
    # The code examples now say what volatile's said, and volatile has none.
    swapped = table({"code": {"examples": VOLATILE}})
    assert await engine.classifier.reload(swapped, ClassificationSettings())
    assert engine.classifier.current is not before
    assert engine.classifier.current is not None
    assert engine.classifier.current.example_counts == {"code": 3}
    result = await engine.lookup(Lookup("t1", text="bitcoin price now"))
    assert (result.category, result.category_source) == ("code", "inferred")
    assert engine.classifier.stats.reloads == 1


async def test_a_failed_reload_keeps_the_old_classifier(
    engine: SemanticCache, backend: BowBackend, caplog: pytest.LogCaptureFixture
) -> None:
    before = engine.classifier.current
    backend.fail = EmbeddingError("the model fell over")
    new = table({"code": {"examples": ["rust borrow checker lifetime"]}})
    assert not await engine.classifier.reload(new, ClassificationSettings())
    assert engine.classifier.current is before
    assert "the model fell over" in (engine.classifier.last_error or "")
    assert "previous examples stay in force" in caplog.text
    assert engine.classifier.stats.reload_failures == 1
    backend.fail = None
    # Still classifying with the old examples.
    result = await engine.lookup(Lookup("t1", text="bitcoin price now"))
    assert (result.category, result.category_source) == ("volatile", "inferred")


async def test_a_reload_ignores_categories_the_daemon_does_not_serve(
    engine: SemanticCache, caplog: pytest.LogCaptureFixture
) -> None:
    new = table({"legal": {"examples": ["contract clause court"]}, "code": {"examples": CODE}})
    assert await engine.classifier.reload(new, ClassificationSettings())
    assert engine.classifier.current is not None
    assert engine.classifier.current.categories == ("code",)
    assert "'legal' is not served" in caplog.text


async def test_a_reload_can_turn_classification_off_and_change_the_floor(
    engine: SemanticCache,
) -> None:
    assert await engine.classifier.reload(CategoryTable(), ClassificationSettings())
    assert engine.classifier.current is None
    stored = await engine.insert(insert("python function sort"))
    assert stored.category_source == "default"
    assert await engine.classifier.reload(table(), ClassificationSettings(min_confidence=0.9))
    assert engine.classifier.current is not None
    assert engine.classifier.current.min_confidence == 0.9


async def test_disabled_categories_are_never_inferred(
    env: LmdbEnvironment, executor: ThreadPoolExecutor, clock: Clock, embedder: BatchingEmbedder
) -> None:
    categories = table(
        {"code": {"examples": CODE, "enabled": False}, "volatile": EXAMPLES["volatile"]}
    )
    cache = make_engine(env, executor, clock, embedder, categories)
    await cache.open()
    try:
        assert cache.classifier.current is not None
        assert cache.classifier.current.categories == ("volatile",)
        stored = await cache.insert(insert("python function list sort"))
        assert stored.category != "code"
    finally:
        await cache.close()
