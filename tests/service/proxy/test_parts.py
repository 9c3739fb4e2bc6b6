"""The proxy's small parts: Cache-Control, SSE reading, coalescing, prices and labels."""

from __future__ import annotations

import asyncio

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from semcached.errors import ConfigError
from semcached.service.proxy.cache_control import CacheDirectives, parse_cache_control
from semcached.service.proxy.coalesce import Coalescer
from semcached.service.proxy.metrics import OTHER_MODEL, Price, ProxyMetrics, parse_prices
from semcached.service.proxy.sse import DONE_EVENT, SseReader, encode_event


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, CacheDirectives()),
        ("no-cache", CacheDirectives(no_cache=True)),
        ("No-Store", CacheDirectives(no_store=True)),
        ("max-age=60, no-cache", CacheDirectives(no_cache=True, max_age=60)),
        ('max-age="5"', CacheDirectives(max_age=5)),
        ("max-age=-1, private", CacheDirectives()),
        ("max-age=9, max-age=3", CacheDirectives(max_age=3)),
    ],
)
def test_cache_control(header: str | None, expected: CacheDirectives) -> None:
    assert parse_cache_control(header) == expected


def test_cache_control_lookup_and_store() -> None:
    assert (parse_cache_control("no-cache").lookup, parse_cache_control("no-cache").store) == (
        False,
        True,
    )
    assert (parse_cache_control("no-store").lookup, parse_cache_control("no-store").store) == (
        False,
        False,
    )


events = st.lists(
    st.dictionaries(st.text(max_size=5), st.text(max_size=20), max_size=3), max_size=6
)


@given(events, st.lists(st.integers(1, 40), max_size=20), st.booleans())
def test_sse_reader_gets_every_event_however_the_bytes_are_cut(
    docs: list[dict[str, str]], cuts: list[int], crlf: bool
) -> None:
    wire = b": a comment\n\n" + b"".join(map(encode_event, docs)) + DONE_EVENT
    if crlf:
        wire = wire.replace(b"\n", b"\r\n")
    reader = SseReader()
    out: list[str] = []
    at = 0
    for cut in cuts:
        out.extend(reader.feed(wire[at : at + cut]))
        at += cut
    out.extend(reader.feed(wire[at:]))
    assert out == [orjson.dumps(d).decode() for d in docs] + ["[DONE]"]
    assert reader.pending == 0


def test_sse_multiline_data_and_other_fields() -> None:
    reader = SseReader()
    got = list(reader.feed(b"event: x\nid: 3\ndata: a\ndata:b\nretry: 5\n\n"))
    assert got == ["a\nb"]


async def test_coalescer_leader_and_followers() -> None:
    coalescer = Coalescer(wait_s=5)
    flight = coalescer.lead("k")
    assert flight is not None
    assert coalescer.lead("k") is None
    followers = [asyncio.create_task(coalescer.follow("k")) for _ in range(3)]
    for _ in range(100):
        if coalescer.waiting == 3:
            break
        await asyncio.sleep(0)
    assert coalescer.waiting == 3
    flight.publish({"answer": 1})
    assert await asyncio.gather(*followers) == [{"answer": 1}] * 3
    # Until it is stored the flight stays: a late miss still gets the record.
    assert await coalescer.follow("k") == {"answer": 1}
    flight.finish()
    assert not coalescer.flying("k")
    assert await coalescer.follow("k") is None
    assert coalescer.lead("k") is not None


async def test_coalescer_followers_give_up_and_nothing_cacheable() -> None:
    coalescer = Coalescer(wait_s=0.05)
    flight = coalescer.lead("k")
    assert flight is not None
    assert await coalescer.follow("k") is None
    assert coalescer.timed_out == 1
    follower = asyncio.create_task(Coalescer.follow(coalescer, "k"))
    coalescer.wait_s = 5
    flight.finish()  # nothing cacheable came: followers go upstream themselves
    assert await follower is None
    assert Coalescer(wait_s=0).lead("k") is None  # coalescing off


def test_prices() -> None:
    assert parse_prices(["gpt-4o-mini=0.15/0.6", "org/model=a=1/2"]) == {
        "gpt-4o-mini": Price(0.15, 0.6),
        "org/model=a": Price(1, 2),
    }
    for bad in ("gpt", "gpt=1", "=1/2", "m=x/1", "m=-1/1"):
        with pytest.raises(ConfigError, match=r"proxy\.prices"):
            parse_prices([bad])


def test_model_labels_are_bounded() -> None:
    metrics = ProxyMetrics(CollectorRegistry(), {"priced": Price(1, 1)}, max_model_labels=2)
    assert [metrics.label(m) for m in ("a", "b", "c", "priced", "a", "")] == [
        "a",
        "b",
        OTHER_MODEL,
        "priced",
        "a",
        OTHER_MODEL,
    ]
