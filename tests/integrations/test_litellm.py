"""LiteLLM's in-process cache on semcached with the real litellm: ``completion`` with a
``mock_response`` (no network) answers a repeated, or paraphrased, call from the daemon,
sync and async, and goes on without the cache when the daemon is down or stalls."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # before litellm is imported

import litellm
import pytest

from semcached.clients import FailOpenPolicy, SemcachedClient
from semcached.integrations.litellm import SemcachedBackend, cache
from tests.daemon import DaemonProcess
from tests.unwell import StalledServer

PATIENT = FailOpenPolicy(lookup_budget_s=5.0)
FAST = FailOpenPolicy(lookup_budget_s=0.05, failures_to_open=2, cooldown_s=60.0)
QUESTION = "what is the capital city of france"
PARAPHRASE = "so what is the capital city of france"
OTHER = "how do i sort a list in python"


@pytest.fixture(autouse=True)
def no_global_cache() -> Iterator[None]:
    yield
    litellm.cache = None


def backend_of() -> SemcachedBackend:
    assert litellm.cache is not None
    backend = litellm.cache.cache
    assert isinstance(backend, SemcachedBackend)
    return backend


def ask(text: str, answer: str, **kwargs: Any) -> Any:
    return litellm.completion(
        model="gpt-3.5-turbo",
        messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": text}],
        mock_response=answer,
        **kwargs,
    )


def cache_hit(response: Any) -> bool:
    return bool(response._hidden_params.get("cache_hit"))


def test_a_repeated_completion_is_served_from_the_cache(text_daemon_url: str) -> None:
    litellm.cache = cache(SemcachedClient(text_daemon_url), policy=PATIENT)
    first = ask(QUESTION, "Paris")
    assert not cache_hit(first)
    assert backend_of().sync.flush(10)
    again = ask(QUESTION, "not from the model")
    assert cache_hit(again)
    assert again.choices[0].message.content == "Paris"
    paraphrase = ask(PARAPHRASE, "not from the model")
    assert cache_hit(paraphrase)
    assert paraphrase.choices[0].message.content == "Paris"
    other = ask(OTHER, "sorted()")
    assert not cache_hit(other)
    assert other.choices[0].message.content == "sorted()"
    hotter = ask(QUESTION, "from the model", temperature=1.5)  # another partition
    assert not cache_hit(hotter)
    assert backend_of().sync.stats.hits == 2
    backend_of().close()


def test_exact_mode_misses_a_paraphrase(text_daemon_url: str) -> None:
    litellm.cache = cache(SemcachedClient(text_daemon_url), mode="exact", policy=PATIENT)
    ask(QUESTION, "Paris")
    assert backend_of().sync.flush(10)
    assert cache_hit(ask(QUESTION, "x"))
    paraphrase = ask(PARAPHRASE, "from the model")
    assert not cache_hit(paraphrase)
    assert paraphrase.choices[0].message.content == "from the model"
    backend_of().flush_cache()
    assert not cache_hit(ask(QUESTION, "x"))
    backend_of().close()


async def test_async_completions_are_cached(text_daemon_url: str) -> None:
    litellm.cache = cache(SemcachedClient(text_daemon_url), policy=PATIENT)
    messages = [{"role": "user", "content": QUESTION}]
    first = await litellm.acompletion(
        model="gpt-3.5-turbo", messages=messages, mock_response="Paris"
    )
    assert not cache_hit(first)
    backend = backend_of()
    for _ in range(500):  # litellm stores from a task it schedules after answering
        if backend.aio.stats.stores_sent:
            break
        await asyncio.sleep(0.01)
    assert await backend.aio.flush(10)
    assert backend.aio.stats.stores_sent == 1
    again = await litellm.acompletion(
        model="gpt-3.5-turbo",
        messages=[{"role": "user", "content": PARAPHRASE}],
        mock_response="not from the model",
    )
    assert cache_hit(again)
    assert again.choices[0].message.content == "Paris"
    await backend.disconnect()
    backend.close()


def test_completions_go_on_when_the_daemon_is_down_or_stalls(daemon: DaemonProcess) -> None:
    url = daemon.wait_listening()
    daemon.terminate()
    with StalledServer() as stalled:
        for where in (url, stalled.url):
            litellm.cache = cache(SemcachedClient(where, timeout_s=60), policy=FAST)
            answers = [ask(QUESTION, f"answer {i}") for i in range(3)]
            assert [a.choices[0].message.content for a in answers] == [
                "answer 0",
                "answer 1",
                "answer 2",
            ]
            assert not any(cache_hit(a) for a in answers)
            stats = backend_of().sync.stats
            assert stats.lookups == 3
            assert stats.errors + stats.budget_misses >= 1, (where, stats)
            assert stats.breaker_opens == 1
            backend_of().close()
