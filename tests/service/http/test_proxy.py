"""The caching proxy with the real ``openai`` package (sync and async, streamed or not)
in front of a scripted upstream: hits replay what misses recorded, in either form."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from semcached.service.http.appkeys import METRICS
from tests.service.http.proxy_kit import Proxied, ServerFactory, proxied
from tests.service.proxy.upstream_kit import HUGE_CHARS, USAGE, answer_text

MODEL = "gpt-test"


def messages(prompt: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": "Be terse."}, {"role": "user", "content": prompt}]


@pytest.fixture
async def daemon(aiohttp_server: ServerFactory, tmp_path: Path) -> Proxied:
    return await proxied(aiohttp_server, tmp_path, proxy_prices="gpt-test=1000000/2000000")


async def streamed(
    client: openai.AsyncOpenAI, prompt: str, **extra: Any
) -> tuple[str, str, list[Any]]:
    """(X-Cache-Status, the text, the chunks) of a streamed chat call."""
    raw = await client.chat.completions.with_raw_response.create(
        model=MODEL, messages=messages(prompt), stream=True, **extra
    )
    chunks = [chunk async for chunk in raw.parse()]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return raw.headers["X-Cache-Status"], text, chunks


async def whole(client: openai.AsyncOpenAI, prompt: str, **extra: Any) -> tuple[str, Any]:
    raw = await client.chat.completions.with_raw_response.create(
        model=MODEL, messages=messages(prompt), **extra
    )
    return raw.headers["X-Cache-Status"], raw.parse()


def metric(daemon: Proxied, name: str, **labels: str) -> float:
    text = daemon.server.app[METRICS].render().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


async def test_streamed_miss_then_streamed_hit(daemon: Proxied) -> None:
    client = daemon.async_openai()
    options = {"stream_options": {"include_usage": True}}
    status, first, _ = await streamed(client, "What is the capital of France?", **options)
    assert (status, first) == ("MISS", answer_text("What is the capital of France?"))
    status, again, chunks = await streamed(client, "What is the capital of France?", **options)
    assert (status, again) == ("HIT", first)
    assert daemon.upstream.calls["What is the capital of France?"] == 1
    # A well-formed stream: role first, one finish reason, then the usage chunk.
    assert chunks[0].choices[0].delta.role == "assistant"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "stop"
    assert finishes.count("stop") == 1
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.total_tokens == USAGE["total_tokens"]
    assert len({c.id for c in chunks}) == 1
    assert metric(daemon, "semcached_proxy_requests_total", model=MODEL, cache="hit") == 1
    assert metric(daemon, "semcached_proxy_requests_total", model=MODEL, cache="miss") == 1
    saved = metric(daemon, "semcached_proxy_tokens_saved_total", model=MODEL, kind="completion")
    assert saved == USAGE["completion_tokens"]
    # Priced at 1 and 2 USD per token: 11 prompt and 7 completion tokens saved.
    assert metric(daemon, "semcached_proxy_cost_saved_usd_total", model=MODEL) == 11 + 2 * 7


async def test_whole_miss_then_streamed_hit_and_back(daemon: Proxied) -> None:
    client = daemon.async_openai()
    status, answer = await whole(client, "Name a prime number")
    assert status == "MISS"
    status, text, chunks = await streamed(client, "Name a prime number")
    assert (status, text) == ("HIT", answer.choices[0].message.content)
    assert chunks[-1].choices[0].finish_reason == "stop"
    # The other way: a stream recorded, a whole answer served from it.
    status, text, _ = await streamed(client, "Name an even number")
    assert status == "MISS"
    status, hit = await whole(client, "Name an even number")
    assert status == "HIT"
    assert hit.choices[0].message.content == text
    assert hit.choices[0].message.role == "assistant"
    assert hit.choices[0].finish_reason == "stop"
    assert hit.id != answer.id
    assert daemon.upstream.calls["Name a prime number"] == 1
    assert daemon.upstream.calls["Name an even number"] == 1


async def test_sync_client_both_ways(daemon: Proxied) -> None:
    client = daemon.openai()

    def run() -> tuple[str, str, str]:
        answer = client.chat.completions.create(model=MODEL, messages=messages("sync hello"))
        stream = client.chat.completions.create(
            model=MODEL, messages=messages("sync hello"), stream=True
        )
        text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        raw = client.chat.completions.with_raw_response.create(
            model=MODEL, messages=messages("sync hello")
        )
        return str(answer.choices[0].message.content), text, raw.headers["X-Cache-Status"]

    content, text, status = await asyncio.to_thread(run)
    assert content == text == answer_text("sync hello")
    assert status == "HIT"
    assert daemon.upstream.calls["sync hello"] == 1


async def test_text_completions_are_cached_and_replayed(daemon: Proxied) -> None:
    client = daemon.async_openai()
    first = await client.completions.create(model=MODEL, prompt="Complete this line")
    stream = await client.completions.create(model=MODEL, prompt="Complete this line", stream=True)
    text = "".join([c.choices[0].text async for c in stream if c.choices])
    assert text == first.choices[0].text == answer_text("Complete this line")
    assert daemon.upstream.calls["Complete this line"] == 1


async def test_hit_headers_similarity_and_age(daemon: Proxied) -> None:
    client = daemon.async_openai()
    await whole(client, "headers please")
    raw = await client.chat.completions.with_raw_response.create(
        model=MODEL, messages=messages("headers please")
    )
    assert raw.headers["X-Cache-Status"] == "HIT"
    assert float(raw.headers["X-Semcached-Similarity"]) == pytest.approx(1.0, abs=1e-5)
    assert int(raw.headers["Age"]) >= 0


async def test_cache_control(daemon: Proxied) -> None:
    client = daemon.async_openai()
    prompt = "cache control question"
    await whole(client, prompt)
    status, _ = await whole(client, prompt, extra_headers={"Cache-Control": "no-cache"})
    assert status == "MISS"
    assert daemon.upstream.calls[prompt] == 2
    status, _ = await whole(client, prompt, extra_headers={"Cache-Control": "no-store"})
    assert status == "BYPASS"
    assert daemon.upstream.calls[prompt] == 3
    status, _ = await whole(client, prompt, extra_headers={"Cache-Control": "max-age=3600"})
    assert status == "HIT"
    # no-store stores nothing: a new prompt asked with it is still a miss afterwards.
    await whole(client, "never stored", extra_headers={"Cache-Control": "no-store"})
    status, _ = await whole(client, "never stored")
    assert status == "MISS"


async def test_max_age_refuses_older_entries(daemon: Proxied) -> None:
    client = daemon.async_openai()
    await whole(client, "aging answer")
    await asyncio.sleep(1.1)  # the entry must be older than the max-age below
    status, _ = await whole(client, "aging answer", extra_headers={"Cache-Control": "max-age=1"})
    assert status == "MISS"
    assert daemon.upstream.calls["aging answer"] == 2


async def test_concurrent_identical_misses_share_one_upstream_call(daemon: Proxied) -> None:
    client = daemon.async_openai()
    prompt = "gated question for everyone"
    calls = [
        asyncio.create_task(whole(client, prompt)),
        *(asyncio.create_task(streamed(client, prompt)) for _ in range(2)),
        *(asyncio.create_task(whole(client, prompt)) for _ in range(2)),
    ]
    coalescer = daemon.proxy.coalescer
    for _ in range(1000):
        if coalescer.waiting == len(calls) - 1:
            break
        await asyncio.sleep(0.01)
    assert coalescer.waiting == len(calls) - 1
    daemon.upstream.gate.set()
    results = await asyncio.gather(*calls)
    assert daemon.upstream.calls[prompt] == 1
    statuses = sorted(r[0] for r in results)
    assert statuses == ["HIT"] * 4 + ["MISS"]
    texts = {r[1] if isinstance(r[1], str) else r[1].choices[0].message.content for r in results}
    assert texts == {answer_text(prompt)}
    assert metric(daemon, "semcached_proxy_coalesced_total") == 4


@pytest.mark.parametrize(
    ("word", "error"),
    [("error400", openai.BadRequestError), ("error500", openai.InternalServerError)],
)
async def test_upstream_errors_pass_through_and_are_not_cached(
    daemon: Proxied, word: str, error: type[openai.APIStatusError]
) -> None:
    client = daemon.async_openai()
    for _ in range(2):
        with pytest.raises(error) as caught:
            await client.chat.completions.create(model=MODEL, messages=messages(f"{word} now"))
        assert f"scripted {word[-3:]}" in str(caught.value)
    assert daemon.upstream.calls[f"{word} now"] == 2


async def test_timeout_is_504(aiohttp_server: ServerFactory, tmp_path: Path) -> None:
    daemon = await proxied(aiohttp_server, tmp_path, proxy_upstream_timeout_s="0.2")
    client = daemon.async_openai()
    with pytest.raises(openai.APIStatusError) as caught:
        await client.chat.completions.create(model=MODEL, messages=messages("slow one"))
    assert caught.value.status_code == 504
    assert metric(daemon, "semcached_proxy_upstream_failures_total", reason="timeout") == 1


async def test_unreachable_upstream_is_502(aiohttp_server: ServerFactory, tmp_path: Path) -> None:
    daemon = await proxied(aiohttp_server, tmp_path)
    # Point the proxy at a port nobody listens on (the upstream session is the same).
    daemon.proxy.upstream.base_url = "http://127.0.0.1:9/v1"
    with pytest.raises(openai.APIStatusError) as caught:
        await daemon.async_openai().chat.completions.create(
            model=MODEL, messages=messages("nobody home")
        )
    assert caught.value.status_code == 502
    assert caught.value.body["code"] == "upstream_unreachable"  # type: ignore[index]


async def test_broken_and_cut_streams_are_not_stored(daemon: Proxied) -> None:
    client = daemon.async_openai()
    for _ in range(2):
        with pytest.raises(openai.APIError, match="broke off"):
            await streamed(client, "broken stream please")
    assert daemon.upstream.calls["broken stream please"] == 2
    for _ in range(2):
        status, text, _ = await streamed(client, "cut stream please")
        assert status == "MISS"
        assert answer_text("cut stream please").startswith(text)
    assert daemon.upstream.calls["cut stream please"] == 2
    assert metric(daemon, "semcached_proxy_not_stored_total", reason="truncated") == 4


async def test_huge_answer_streams_through_and_replays(daemon: Proxied) -> None:
    client = daemon.async_openai()
    status, text, _ = await streamed(client, "huge answer please")
    assert (status, len(text)) == ("MISS", HUGE_CHARS)
    status, again = await whole(client, "huge answer please")
    assert status == "HIT"
    assert again.choices[0].message.content == text


async def test_huge_answer_over_the_record_limit_is_not_stored(
    aiohttp_server: ServerFactory, tmp_path: Path
) -> None:
    daemon = await proxied(aiohttp_server, tmp_path, proxy_max_record_bytes="65536")
    client = daemon.async_openai()
    for form in ("stream", "whole"):
        if form == "stream":
            status, text, _ = await streamed(client, "huge streamed")
        else:
            status, answer = await whole(client, "huge whole")
            text = answer.choices[0].message.content
        assert (status, len(text)) == ("MISS", HUGE_CHARS)
    assert metric(daemon, "semcached_proxy_not_stored_total", reason="too_large") == 2
    status, _ = await whole(client, "huge whole")
    assert status == "MISS"


@pytest.mark.parametrize(
    ("extra", "prompt", "reason"),
    [
        ({"n": 2}, "two answers", "n"),
        ({"temperature": 1.5}, "hot answer", "temperature"),
        ({"logprobs": True}, "with logprobs", "logprobs"),
    ],
)
async def test_uncacheable_requests_bypass(
    daemon: Proxied, extra: dict[str, Any], prompt: str, reason: str
) -> None:
    client = daemon.async_openai()
    for _ in range(2):
        status, _ = await whole(client, prompt, **extra)
        assert status == "BYPASS"
    assert daemon.upstream.calls[prompt] == 2
    assert metric(daemon, "semcached_proxy_bypasses_total", reason=reason) == 2


async def test_no_user_message_bypasses(daemon: Proxied) -> None:
    client = daemon.async_openai()
    raw = await client.chat.completions.with_raw_response.create(
        model=MODEL, messages=[{"role": "system", "content": "only a system prompt"}]
    )
    assert raw.headers["X-Cache-Status"] == "BYPASS"


async def test_tool_calls_are_not_stored_unless_enabled(
    aiohttp_server: ServerFactory, tmp_path: Path, daemon: Proxied
) -> None:
    client = daemon.async_openai()
    for _ in range(2):
        status, answer = await whole(client, "tool use please")
        assert status == "MISS"
        assert answer.choices[0].message.tool_calls[0].function.name == "f"
    on = await proxied(aiohttp_server, tmp_path / "on", proxy_cache_tool_calls="true")
    client = on.async_openai()
    await whole(client, "tool use please")
    status, _, chunks = await streamed(client, "tool use please")
    assert status == "HIT"
    calls = [
        c.choices[0].delta.tool_calls for c in chunks if c.choices and c.choices[0].delta.tool_calls
    ]
    assert calls[0][0].function.name == "f"
