"""The LangChain cache with the real langchain-core: its fake chat models and fake LLM
under ``set_llm_cache``, against a real daemon (and a stopped, a stalled and a failing
one). A fake model answers from a list it consumes, so an answer that came from the
cache leaves the list where it was."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from langchain_core.globals import set_llm_cache
from langchain_core.language_models.fake import FakeListLLM
from langchain_core.language_models.fake_chat_models import (
    FakeListChatModel,
    GenericFakeChatModel,
)
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage

from semcached.clients import FailOpenPolicy, SemcachedClient
from semcached.integrations.langchain import SemcachedCache, cache_key
from tests.daemon import DaemonProcess
from tests.unwell import FlakyServer, StalledServer

PATIENT = FailOpenPolicy(lookup_budget_s=5.0)
FAST = FailOpenPolicy(lookup_budget_s=0.05, failures_to_open=2, cooldown_s=60.0)
QUESTION = "what is the capital city of france"
PARAPHRASE = "so what is the capital city of france"  # the same words, one more
OTHER = "how do i sort a list in python"


@pytest.fixture(autouse=True)
def no_global_cache() -> Iterator[None]:
    yield
    set_llm_cache(None)


def make_cache(url: str, **kwargs: object) -> SemcachedCache:
    cache = SemcachedCache(SemcachedClient(url), policy=PATIENT, **kwargs)  # type: ignore[arg-type]
    set_llm_cache(cache)
    return cache


def test_a_repeated_chat_call_is_served_from_the_cache(text_daemon_url: str) -> None:
    cache = make_cache(text_daemon_url)
    model = FakeListChatModel(responses=["Paris", "second"])
    first = model.invoke([SystemMessage("be brief"), HumanMessage(QUESTION)])
    assert cache.sync.flush(10)
    again = model.invoke([SystemMessage("be brief"), HumanMessage(QUESTION)])
    assert isinstance(again, AIMessage)
    assert (first.content, again.content) == ("Paris", "Paris")
    assert model.i == 1  # the second answer was never taken from the model
    assert cache.stats.hits == 1
    cache.close()


def test_a_paraphrase_hits_in_semantic_mode_and_misses_in_exact_mode(
    text_daemon_url: str,
) -> None:
    cache = make_cache(text_daemon_url)
    model = FakeListChatModel(responses=["Paris", "from the model"])
    assert model.invoke(QUESTION).content == "Paris"
    assert cache.sync.flush(10)
    assert model.invoke(PARAPHRASE).content == "Paris"
    assert model.invoke(OTHER).content == "from the model"
    cache.close()

    exact = make_cache(text_daemon_url, namespace="exact", mode="exact")
    model = FakeListChatModel(responses=["Paris", "from the model", "third"])
    assert model.invoke(QUESTION).content == "Paris"
    assert exact.sync.flush(10)
    assert model.invoke(PARAPHRASE).content == "from the model"
    assert model.invoke(QUESTION).content == "Paris"  # the same text still hits
    assert model.i == 2
    exact.close()


def test_different_model_parameters_miss(text_daemon_url: str) -> None:
    cache = make_cache(text_daemon_url)
    model = GenericFakeChatModel(messages=iter(["one", "two", "three"]))
    assert model.invoke(QUESTION).content == "one"
    assert cache.sync.flush(10)
    assert model.invoke(QUESTION).content == "one"
    assert model.invoke(QUESTION, stop=["."]).content == "two"  # another llm_string
    _, plain = cache_key(QUESTION, model._get_llm_string())
    _, stopped = cache_key(QUESTION, model._get_llm_string(stop=["."]))
    assert plain != stopped
    cache.close()


def test_chat_context_goes_into_the_partition() -> None:
    from langchain_core.load import dumps

    one = dumps([SystemMessage("be brief"), HumanMessage(QUESTION)])
    two = dumps([SystemMessage("be verbose"), HumanMessage(QUESTION)])
    (text_one, part_one), (text_two, part_two) = cache_key(one, "m"), cache_key(two, "m")
    assert text_one == text_two == QUESTION
    assert part_one != part_two
    assert cache_key(QUESTION, "m")[0] == QUESTION  # an LLM's prompt is the text


def test_an_llm_is_cached_and_clear_empties_the_cache(text_daemon_url: str) -> None:
    cache = make_cache(text_daemon_url)
    llm = FakeListLLM(responses=["first", "second"])
    assert llm.invoke(QUESTION) == "first"
    assert cache.sync.flush(10)
    assert llm.invoke(QUESTION) == "first"
    assert llm.i == 1
    cache.clear()
    assert llm.invoke(QUESTION) == "second"
    cache.close()


async def test_async_calls_are_cached(text_daemon_url: str) -> None:
    cache = make_cache(text_daemon_url)
    model = FakeListChatModel(responses=["Paris", "second"])
    assert (await model.ainvoke(QUESTION)).content == "Paris"
    assert await cache.aio.flush(10)
    hit = await model.ainvoke(PARAPHRASE)
    assert isinstance(hit, AIMessage)
    assert hit.content == "Paris"
    assert model.i == 1
    assert cache.aio.stats.hits == 1
    await cache.aclear()
    assert (await model.ainvoke(QUESTION)).content == "second"
    await cache.aclose()
    cache.close()


def test_the_model_answers_when_the_daemon_is_down_stalled_or_failing(
    daemon: DaemonProcess,
) -> None:
    url = daemon.wait_listening()
    daemon.terminate()
    with StalledServer() as stalled, FlakyServer() as flaky:
        for where in (url, stalled.url, flaky.url):
            cache = SemcachedCache(SemcachedClient(where, timeout_s=60), policy=FAST)
            set_llm_cache(cache)
            model = FakeListChatModel(responses=["a", "b", "c"])
            assert [model.invoke(QUESTION).content for _ in range(3)] == ["a", "b", "c"]
            stats = cache.stats
            # Two failures open the breaker: two lookups, or a lookup and the store
            # queued after it; the rest are not sent.
            assert stats.lookups == 3
            assert stats.errors + stats.budget_misses >= 1, (where, stats)
            assert stats.short_circuits >= 1
            assert stats.breaker_opens == 1
            cache.close()


async def test_async_model_answers_when_the_daemon_stalls() -> None:
    with StalledServer() as stalled:
        cache = SemcachedCache(SemcachedClient(stalled.url, timeout_s=60), policy=FAST)
        set_llm_cache(cache)
        model = FakeListChatModel(responses=["a", "b", "c"])
        assert [(await model.ainvoke(QUESTION)).content for _ in range(3)] == ["a", "b", "c"]
        assert cache.aio.stats.budget_misses >= 1
        assert cache.aio.stats.breaker_opens == 1
        await cache.aclose()
        cache.close()
