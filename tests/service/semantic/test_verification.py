"""The verifier in the hit decision: only the grey band is verified, with both sides'
token embeddings; verified hits are calibrated apart."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import pytest

from semcached.cachepolicy.categories import CategoryTable
from semcached.cachepolicy.verify import Candidate
from semcached.index.docstore import DocumentStore
from semcached.index.lmdb_env import LmdbEnvironment
from semcached.service.semantic.embedding.embedder import BatchingEmbedder
from semcached.service.semantic.engine import FeedbackReport, Insert, Lookup, SemanticCache
from semcached.service.semantic.feedback import FeedbackBook
from tests.service.semantic.kit import DIM, BowTokenBackend, Clock, bow, new_index

Build = Callable[["ScriptedVerifier | None"], Awaitable[SemanticCache]]

STORED = "how do i reset my password"
ASKED = "how do i change my password"
SIMILARITY = float(bow(STORED) @ bow(ASKED))


@dataclass
class ScriptedVerifier:
    """A :class:`~semcached.cachepolicy.verify.Verifier` that answers ``probability``
    and records what it was shown."""

    band: tuple[float, float]
    probability: float = 0.9
    name: str = "scripted"
    embedding_model: str = "bow"
    threshold: float = 0.7
    seen: list[Candidate] = field(default_factory=list)

    def verify(self, candidates: Sequence[Candidate]) -> npt.NDArray[np.float64]:
        self.seen.extend(candidates)
        return np.full(len(candidates), self.probability)


def grey(verifier_probability: float = 0.9) -> ScriptedVerifier:
    return ScriptedVerifier((SIMILARITY - 0.1, SIMILARITY + 0.1), verifier_probability)


CATEGORIES = CategoryTable().with_overrides(
    {
        "default": {"threshold": 0.3, "min_threshold": 0.0, "max_false_hit_rate": 0.05},
        "code": {"threshold": 0.3, "min_threshold": 0.0, "verify": False},
    }
)


@pytest.fixture
async def make(
    env: LmdbEnvironment, executor: ThreadPoolExecutor, clock: Clock
) -> AsyncIterator[Build]:
    opened: list[tuple[SemanticCache, BatchingEmbedder]] = []

    async def build(verifier: ScriptedVerifier | None) -> SemanticCache:
        embedder = BatchingEmbedder(BowTokenBackend(), token_cache_bytes=1 << 20)
        await embedder.open()
        engine = SemanticCache(
            store=DocumentStore(env),
            index_factory=new_index,
            embedder=embedder,
            categories=CATEGORIES,
            dim=DIM,
            executor=executor,
            clock=clock,
            sweep_interval_s=3600,
            verifier=verifier,
            feedback=FeedbackBook(CATEGORIES, verifier_threshold=0.7),
        )
        await engine.open()
        opened.append((engine, embedder))
        return engine

    yield build
    for engine, embedder in opened:
        await engine.close()
        await embedder.close()


def stored(
    category: str | None = None, namespace: str = "t", vector: np.ndarray | None = None
) -> Insert:
    return Insert(namespace, STORED, b'"a"', category=category, vector=vector)


async def test_a_grey_band_candidate_is_verified_with_both_sides_tokens(make: Build) -> None:
    verifier = grey(0.9)
    engine = await make(verifier)
    entry = await engine.insert(stored())
    document = engine.get(entry.entry_id)
    assert document is not None
    assert document.tokens  # kept from the insert's own embedding call
    result = await engine.lookup(Lookup("t", text=ASKED))
    assert result.hit
    assert result.verifier_score == pytest.approx(0.9)
    (candidate,) = verifier.seen
    assert candidate.cached == STORED
    assert candidate.query == ASKED
    assert candidate.cached_tokens is not None
    assert candidate.query_tokens is not None
    assert len(candidate.query_tokens.ids) == len(ASKED.split())
    stats = engine.stats()["default"]
    assert (stats.verified, stats.verified_hits) == (1, 1)


async def test_the_verifier_can_refuse_a_grey_band_candidate(make: Build) -> None:
    engine = await make(grey(0.2))
    await engine.insert(stored())
    result = await engine.lookup(Lookup("t", text=ASKED))
    assert not result.hit
    assert result.verifier_score == pytest.approx(0.2)
    assert result.similarity == pytest.approx(SIMILARITY, abs=1e-5)
    stats = engine.stats()["default"]
    assert (stats.verified, stats.verified_hits, stats.misses) == (1, 0, 1)


@pytest.mark.parametrize(
    ("band", "hit"),
    [((SIMILARITY - 0.2, SIMILARITY - 0.01), True), ((SIMILARITY + 0.01, 0.99), False)],
    ids=["above-the-band", "below-the-band"],
)
async def test_outside_the_band_nothing_is_verified(
    make: Build, band: tuple[float, float], hit: bool
) -> None:
    verifier = ScriptedVerifier(band, probability=0.0 if hit else 1.0)
    engine = await make(verifier)
    await engine.insert(stored())
    result = await engine.lookup(Lookup("t", text=ASKED))
    assert result.hit is hit
    assert result.verifier_score is None
    assert verifier.seen == []


async def test_vectors_thresholds_and_opted_out_categories_skip_the_verifier(make: Build) -> None:
    verifier = grey(0.0)  # would refuse everything it saw
    engine = await make(verifier)
    await engine.insert(stored())
    await engine.insert(stored(category="code", namespace="c"))
    asked = bow(ASKED)
    assert (await engine.lookup(Lookup("t", text=ASKED, vector=asked))).hit
    assert (await engine.lookup(Lookup("t", text=ASKED, threshold=0.3))).hit
    assert (await engine.lookup(Lookup("c", text=ASKED, category="code"))).hit
    assert verifier.seen == []


async def test_without_a_verifier_no_tokens_are_kept(make: Build) -> None:
    engine = await make(None)
    entry = await engine.insert(stored())
    document = engine.get(entry.entry_id)
    assert document is not None
    assert document.tokens == b""
    assert (await engine.lookup(Lookup("t", text=ASKED))).hit  # similarity >= 0.3


async def test_entries_inserted_with_a_vector_are_verified_without_their_tokens(
    make: Build,
) -> None:
    verifier = grey(0.9)
    engine = await make(verifier)
    await engine.insert(stored(vector=bow(STORED)))
    assert (await engine.lookup(Lookup("t", text=ASKED))).hit
    (candidate,) = verifier.seen
    assert candidate.cached_tokens is None
    assert candidate.query_tokens is not None


async def test_feedback_on_a_verified_hit_calibrates_the_verified_rule(make: Build) -> None:
    engine = await make(grey(0.9))
    await engine.insert(stored())
    result = await engine.lookup(Lookup("t", text=ASKED))
    assert result.lookup_id is not None
    report = await engine.feedback(
        FeedbackReport(correct=True, lookup_id=result.lookup_id), lambda ns: True
    )
    assert report is not None
    assert report.counted
    assert report.calibration.configured == pytest.approx(0.7)  # the verified rule's
    assert engine.verified_calibrations()["default"].observations == 1
    assert engine.calibrations()["default"].observations == 0


async def test_a_verifier_for_another_model_is_refused(make: Build) -> None:
    verifier = grey()
    verifier.embedding_model = "all-MiniLM-L6-v2"
    with pytest.raises(ValueError, match="built for"):
        await make(verifier)
