"""LiteLLM's own ``qdrant-semantic`` cache against the daemon's Qdrant routes.

The real ``litellm`` package: ``litellm.Cache(type="qdrant-semantic",
qdrant_api_base=<daemon>)`` and ``completion``/``acompletion`` with ``mock_response``
(no network). Its embedding model is ``openai/bow``, routed through
``OPENAI_API_BASE`` to a local bag-of-words ``/v1/embeddings`` server.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import urllib3
import yaml

from tests.daemon import DaemonProcess
from tests.service.http.bow_embeddings import DIM, EmbeddingServer
from tests.service.http.tenancy_kit import TOKENS, tokens_file_text

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # offline: before the import
litellm = pytest.importorskip("litellm")

QUESTION = "What is the capital city of France?"
PARAPHRASE = "what is the capital city of france please"
OTHER = "How do I bake sourdough bread at home?"
pytestmark = pytest.mark.filterwarnings("ignore:.*ReadOnly.*:UserWarning")  # litellm's types


@pytest.fixture(scope="module")
def embeddings() -> Iterator[EmbeddingServer]:
    server = EmbeddingServer()
    yield server
    server.stop()


def _daemon(data_dir: Path, *args: str) -> DaemonProcess:
    return DaemonProcess(data_dir, ["--qdrant.enabled", "true", "--embedding.dim", str(DIM), *args])


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    daemon = _daemon(tmp_path_factory.mktemp("qdrant") / "data")
    try:
        yield daemon.wait_ready()
    finally:
        daemon.terminate()


@pytest.fixture(autouse=True)
def offline_embeddings(
    embeddings: EmbeddingServer, monkeypatch: pytest.MonkeyPatch
) -> Iterator[None]:
    monkeypatch.setenv("OPENAI_API_BASE", embeddings.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-local-test")
    yield
    litellm.cache = None


def use_cache(url: str, collection: str, api_key: str | None = None) -> None:
    litellm.cache = litellm.Cache(
        type="qdrant-semantic",
        qdrant_api_base=url,
        qdrant_api_key=api_key,
        qdrant_collection_name=collection,
        similarity_threshold=0.8,
        qdrant_semantic_cache_embedding_model="openai/bow",
        qdrant_semantic_cache_vector_size=DIM,
    )


def ask(prompt: str, answer: str, model: str = "gpt-4o-mini") -> tuple[str, bool]:
    response = litellm.completion(
        model=model,
        messages=[{"role": "user", "content": prompt}],
        mock_response=answer,
        caching=True,
    )
    return response.choices[0].message.content, bool(response._hidden_params.get("cache_hit"))


async def aask(prompt: str, answer: str) -> tuple[str, bool]:
    response = await litellm.acompletion(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": prompt}],
        mock_response=answer,
        caching=True,
    )
    return response.choices[0].message.content, bool(response._hidden_params.get("cache_hit"))


def stored(url: str) -> int:
    """Entries inserted so far (LiteLLM may store after it has answered)."""
    http = urllib3.PoolManager(retries=False)
    stats = http.request("GET", url + "/v1/semantic/stats").json()
    return sum(c["inserts"] for c in stats["categories"].values())


def wait_stored(url: str, count: int) -> None:
    deadline = time.monotonic() + 20
    while stored(url) < count:
        assert time.monotonic() < deadline, f"LiteLLM stored fewer than {count} entries"
        time.sleep(0.02)


def test_the_second_identical_call_is_a_hit(url: str) -> None:
    use_cache(url, "identical")
    before = stored(url)
    assert ask(QUESTION, "Paris") == ("Paris", False)
    wait_stored(url, before + 1)
    assert ask(QUESTION, "a different answer") == ("Paris", True)


def test_a_paraphrase_is_a_hit_and_another_prompt_a_miss(url: str) -> None:
    use_cache(url, "paraphrase")
    before = stored(url)
    ask(QUESTION, "Paris")
    wait_stored(url, before + 1)
    assert ask(PARAPHRASE, "not from the cache") == ("Paris", True)
    assert ask(OTHER, "Flour, water, salt and time.") == ("Flour, water, salt and time.", False)


def test_another_model_is_another_partition(url: str) -> None:
    # LiteLLM's cache key (model and parameters, not the prompt) filters the search:
    # the same prompt for another model must miss.
    use_cache(url, "models")
    before = stored(url)
    ask(QUESTION, "Paris", model="gpt-4o-mini")
    wait_stored(url, before + 1)
    assert ask(QUESTION, "from gpt-4o", model="gpt-4o") == ("from gpt-4o", False)


def test_the_async_path(url: str) -> None:
    use_cache(url, "async")
    before = stored(url)

    async def run() -> tuple[tuple[str, bool], ...]:
        first = await aask(QUESTION, "Paris")
        await asyncio.to_thread(wait_stored, url, before + 1)
        return first, await aask(PARAPHRASE, "not from the cache"), await aask(OTHER, "Bake it.")

    assert asyncio.run(run()) == (("Paris", False), ("Paris", True), ("Bake it.", False))


def test_the_readmes_proxy_config_makes_a_working_cache(url: str) -> None:
    readme = (Path(__file__).parents[3] / "README.md").read_text()
    section = readme[readme.index("## LiteLLM proxy (qdrant-semantic)") :]
    block = re.search(r"```yaml\n(.*?)```", section, re.S)
    assert block is not None
    params = yaml.safe_load(block[1])["litellm_settings"]["cache_params"]
    assert params["type"] == "qdrant-semantic"
    # The proxy builds litellm.Cache(**cache_params); offline: this daemon (no tokens)
    # and the local embedding model with its dimension.
    params.update(
        qdrant_api_base=url,
        qdrant_api_key=None,
        qdrant_semantic_cache_embedding_model="openai/bow",
        qdrant_semantic_cache_vector_size=DIM,
    )
    litellm.cache = litellm.Cache(**params)
    before = stored(url)
    assert ask(QUESTION, "Paris") == ("Paris", False)
    wait_stored(url, before + 1)
    assert ask(PARAPHRASE, "other") == ("Paris", True)


def test_the_api_key_is_a_daemon_token(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens.toml"
    tokens.write_text(tokens_file_text())
    daemon = _daemon(
        tmp_path / "data",
        "--auth.tokens_file",
        str(tokens),
        "--qdrant.namespace_prefix",
        "acme-",
    )
    try:
        url = daemon.wait_ready()
        with pytest.raises(ValueError, match="collections exist"):
            use_cache(url, "tokens", api_key="not-a-token")
        with pytest.raises(ValueError, match="collections exist"):
            use_cache(url, "tokens", api_key=TOKENS["bob"])  # bobco's: not acme's namespace
        use_cache(url, "tokens", api_key=TOKENS["acme_rw"])
        assert ask(QUESTION, "Paris") == ("Paris", False)
        deadline = time.monotonic() + 20
        while (hit := ask(QUESTION, "a different answer")) != ("Paris", True):
            assert time.monotonic() < deadline, hit
            time.sleep(0.05)
    finally:
        daemon.terminate()
