"""The OpenAI SDK wrapper with the real ``openai`` package: a scripted OpenAI-compatible
upstream (tests/service/proxy/upstream_kit.py, in a thread of its own) and a real daemon
that embeds through the bag-of-words service of this folder's conftest."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import openai
import pytest

from semcached.clients import AsyncSemcachedClient, SemcachedClient
from semcached.clients.failopen import FailOpenClient, FailOpenPolicy
from semcached.integrations.openai import AsyncCachedOpenAI, CachedOpenAI, cached
from tests.service.proxy.upstream_kit import USAGE, ScriptedUpstream, answer_text
from tests.unwell import AppThread, StalledServer

MODEL = "gpt-test"


@pytest.fixture
def upstream() -> Iterator[tuple[ScriptedUpstream, str]]:
    scripted = ScriptedUpstream()
    with AppThread(scripted.app()) as server:
        yield scripted, server.url + "/v1"


def wrap(upstream_url: str, daemon_url: str, **kwargs: Any) -> CachedOpenAI:
    sdk = openai.OpenAI(base_url=upstream_url, api_key="sk-test", max_retries=0)
    return cached(sdk, client=SemcachedClient(daemon_url), **kwargs)


def ask(llm: CachedOpenAI, prompt: str, **kwargs: Any) -> Any:
    messages = [{"role": "user", "content": prompt}]
    return llm.chat.completions.create(model=MODEL, messages=messages, **kwargs)


def streamed(llm: CachedOpenAI, prompt: str, **kwargs: Any) -> list[Any]:
    with ask(llm, prompt, stream=True, **kwargs) as stream:
        return list(stream)


def text_of(chunks: list[Any]) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def assert_well_formed(chunks: list[Any]) -> None:
    """A role delta first, then content, then one finish reason (as OpenAI streams)."""
    with_choices = [c for c in chunks if c.choices]
    assert with_choices[0].choices[0].delta.role == "assistant"
    finishes = [c.choices[0].finish_reason for c in with_choices if c.choices[0].finish_reason]
    assert finishes == ["stop"]
    assert with_choices[-1].choices[0].finish_reason == "stop"
    assert all(c.object == "chat.completion.chunk" for c in chunks)


def test_a_repeated_call_is_answered_from_the_cache(
    upstream: tuple[ScriptedUpstream, str], text_daemon_url: str
) -> None:
    scripted, url = upstream
    llm = wrap(url, text_daemon_url)
    first = ask(llm, "what is a semantic cache")
    llm.semcached.flush()
    second = ask(llm, "what is a semantic cache")
    assert isinstance(second, openai.types.chat.ChatCompletion)
    assert second.choices[0].message.content == first.choices[0].message.content
    assert second.usage is not None
    assert second.usage.total_tokens == USAGE["total_tokens"]
    assert scripted.calls["what is a semantic cache"] == 1
    assert (llm.counts.hits, llm.counts.misses) == (1, 1)


def test_a_streamed_miss_replays_as_the_same_text_streamed_or_whole(
    upstream: tuple[ScriptedUpstream, str], text_daemon_url: str
) -> None:
    scripted, url = upstream
    llm = wrap(url, text_daemon_url)
    prompt = "explain streaming replay"
    live = streamed(llm, prompt, stream_options={"include_usage": True})
    llm.semcached.flush()
    replayed = streamed(llm, prompt, stream_options={"include_usage": True})
    whole = ask(llm, prompt)
    assert text_of(live) == text_of(replayed) == whole.choices[0].message.content
    assert text_of(live) == answer_text(prompt)
    assert_well_formed(replayed)
    assert replayed[-1].choices == []
    assert replayed[-1].usage.total_tokens == USAGE["total_tokens"]
    assert scripted.calls[prompt] == 1


def test_a_whole_answer_replays_as_a_stream(
    upstream: tuple[ScriptedUpstream, str], text_daemon_url: str
) -> None:
    scripted, url = upstream
    llm = wrap(url, text_daemon_url)
    prompt = "a question answered whole first"
    whole = ask(llm, prompt)
    llm.semcached.flush()
    replayed = streamed(llm, prompt)
    assert_well_formed(replayed)
    assert text_of(replayed) == whole.choices[0].message.content
    assert all(c.usage is None for c in replayed)  # usage only when asked for
    assert scripted.calls[prompt] == 1


def test_a_paraphrase_hits(upstream: tuple[ScriptedUpstream, str], text_daemon_url: str) -> None:
    scripted, url = upstream
    llm = wrap(url, text_daemon_url)
    ask(llm, "how do I reset my router password")
    llm.semcached.flush()
    answer = ask(llm, "how do I reset my password router")
    assert answer.choices[0].message.content == answer_text("how do I reset my router password")
    assert scripted.calls["how do I reset my password router"] == 0


def test_what_may_not_be_cached_passes_through(
    upstream: tuple[ScriptedUpstream, str], text_daemon_url: str
) -> None:
    scripted, url = upstream
    llm = wrap(url, text_daemon_url, max_temperature=1.0)
    for _ in range(2):
        ask(llm, "hot question", temperature=1.5)
        ask(llm, "several answers", n=2)
        llm.semcached.flush()
    assert scripted.calls["hot question"] == scripted.calls["several answers"] == 2
    assert llm.counts.bypasses == 4
    assert llm.semcached_stats.lookups == 0


def test_truncated_tool_and_failed_answers_are_never_stored(
    upstream: tuple[ScriptedUpstream, str], text_daemon_url: str
) -> None:
    scripted, url = upstream
    llm = wrap(url, text_daemon_url)
    for _ in range(2):
        streamed(llm, "cut short stream")  # ends before its finish reason
        ask(llm, "tool please")
        with pytest.raises(openai.BadRequestError):
            ask(llm, "error400 bad request")
        with ask(llm, "abandoned halfway", stream=True) as stream:
            next(iter(stream))  # the caller stops reading: a truncated record
        llm.semcached.flush()
    for prompt in ("cut short stream", "tool please", "error400 bad request", "abandoned halfway"):
        assert scripted.calls[prompt] == 2, prompt
    assert llm.semcached_stats.stores_sent == 0


def test_tool_calls_are_cached_when_enabled(
    upstream: tuple[ScriptedUpstream, str], text_daemon_url: str
) -> None:
    scripted, url = upstream
    llm = wrap(url, text_daemon_url, cache_tool_calls=True)
    ask(llm, "tool please")
    llm.semcached.flush()
    again = ask(llm, "tool please")
    assert again.choices[0].message.tool_calls[0].function.name == "f"
    assert scripted.calls["tool please"] == 1


def test_other_resources_are_the_wrapped_clients(
    upstream: tuple[ScriptedUpstream, str], text_daemon_url: str
) -> None:
    _, url = upstream
    sdk = openai.OpenAI(base_url=url, api_key="sk-test", max_retries=0)
    llm = cached(sdk, client=SemcachedClient(text_daemon_url))
    assert llm.embeddings is sdk.embeddings
    assert llm.chat.completions.with_raw_response is sdk.chat.completions.with_raw_response
    assert llm.base_url == sdk.base_url


@pytest.mark.parametrize("where", ["stopped", "stalled"])
def test_the_model_answers_when_the_daemon_is_down(
    upstream: tuple[ScriptedUpstream, str], where: str
) -> None:
    scripted, url = upstream
    with StalledServer() as stalled:
        daemon_url = stalled.url if where == "stalled" else "http://127.0.0.1:9"
        policy = FailOpenPolicy(lookup_budget_s=0.05, failures_to_open=2, cooldown_s=60)
        sdk = openai.OpenAI(base_url=url, api_key="sk-test", max_retries=0)
        llm = cached(sdk, client=FailOpenClient(SemcachedClient(daemon_url), policy))
        answers = [ask(llm, "still answered").choices[0].message.content for _ in range(4)]
    assert answers == [answer_text("still answered")] * 4
    stats = llm.semcached_stats
    assert stats.breaker_opens == 1
    assert stats.short_circuits >= 2
    assert scripted.calls["still answered"] == 4


async def test_the_async_twin(upstream: tuple[ScriptedUpstream, str], text_daemon_url: str) -> None:
    scripted, url = upstream
    sdk = openai.AsyncOpenAI(base_url=url, api_key="sk-test", max_retries=0)
    async with AsyncSemcachedClient(text_daemon_url) as client:
        llm = cached(sdk, client=client)
        assert isinstance(llm, AsyncCachedOpenAI)
        messages = [{"role": "user", "content": "an async question"}]
        stream = await llm.chat.completions.create(model=MODEL, messages=messages, stream=True)
        live = [chunk async for chunk in stream]
        await llm.semcached.flush()
        async with await llm.chat.completions.create(
            model=MODEL, messages=messages, stream=True
        ) as replay:
            replayed = [chunk async for chunk in replay]
        whole = await llm.chat.completions.create(model=MODEL, messages=messages)
        await llm.semcached.close()
    assert text_of(live) == text_of(replayed) == whole.choices[0].message.content
    assert_well_formed(replayed)
    assert scripted.calls["an async question"] == 1
    assert (llm.counts.hits, llm.counts.misses) == (2, 1)
