"""The caching proxy's answers: a hit from its record, a miss relayed from the upstream.

A streamed miss is forwarded byte for byte as it arrives (nothing is buffered for the
caller) while an :class:`~semcached.service.proxy.sse.SseReader` records its events;
the record is complete only if the stream reached ``[DONE]`` with a finish reason. A
hit is the record itself, or its replay as a chunk stream, under a new id.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from semcached.protocol.headers import (
    CACHE_STATUS_HEADER,
    CACHE_STATUS_HIT,
    EVENT_STREAM,
    JSON,
    SIMILARITY_HEADER,
)
from semcached.service.proxy.component import Proxy
from semcached.service.proxy.requests import Endpoint, unstorable_reason
from semcached.service.proxy.sse import DONE, DONE_EVENT, SseReader, encode_event
from semcached.service.proxy.upstream import Upstream, passed_back

__all__ = ["Call", "Store", "answer_hit", "relay"]

Record = dict[str, Any]
Store = Callable[[Record], Awaitable[None]]
"""Stores a complete, storable record (and hands it to coalesced followers)."""

_BROKEN = {
    "error": {
        "message": "the upstream's stream broke off before its end",
        "type": "upstream_error",
        "code": "upstream_broken_stream",
    }
}


@dataclass(frozen=True, slots=True)
class Call:
    """One proxied request, as the relay needs it."""

    request: web.Request
    proxy: Proxy
    endpoint: Endpoint
    body: bytes  # as the caller sent it: forwarded unchanged
    parsed: Mapping[str, Any]
    model: str
    stream: bool
    include_usage: bool
    upstream_headers: Mapping[str, str]


def _fresh(record: Mapping[str, Any], prefix: str) -> Record:
    """The record as a new answer: its own id and creation time."""
    return {**record, "id": prefix + uuid.uuid4().hex, "created": int(time.time())}


async def answer_hit(
    call: Call, record: Mapping[str, Any], similarity: float | None, age_s: float
) -> web.StreamResponse:
    headers = {CACHE_STATUS_HEADER: CACHE_STATUS_HIT, "Age": str(int(age_s))}
    if similarity is not None:
        headers[SIMILARITY_HEADER] = f"{similarity:.6f}"
    answer = _fresh(record, call.endpoint.id_prefix)
    if not call.stream:
        return web.Response(body=orjson.dumps(answer), content_type=JSON, headers=headers)
    response = web.StreamResponse(headers={**headers, "Cache-Control": "no-cache"})
    response.content_type = EVENT_STREAM
    await response.prepare(call.request)
    chunks = call.endpoint.to_chunks(answer, include_usage=call.include_usage)
    await response.write(b"".join(map(encode_event, chunks)) + DONE_EVENT)
    await response.write_eof()
    return response


async def relay(call: Call, cache_status: str, store: Store | None) -> web.StreamResponse:
    """Send the request upstream and its answer to the caller; ``store`` what may be."""
    proxy = call.proxy
    metrics = proxy.metrics
    started = time.perf_counter()
    try:
        upstream = await proxy.upstream.send(call.endpoint.path, call.body, call.upstream_headers)
    except Exception as exc:
        metrics.upstream_failures.labels(_failure(exc)).inc()
        raise
    try:
        headers = {CACHE_STATUS_HEADER: cache_status, **passed_back(upstream.headers)}
        if upstream.status == 200 and upstream.content_type == EVENT_STREAM:
            return await _relay_stream(call, upstream, headers, store)
        return await _relay_whole(call, upstream, headers, store)
    finally:
        upstream.release()
        metrics.upstream_seconds.labels(metrics.label(call.model)).observe(
            time.perf_counter() - started
        )


def _failure(exc: BaseException) -> str:
    status = getattr(exc, "status", 0)
    return "timeout" if status == 504 else "unreachable"


async def _relay_whole(
    call: Call,
    upstream: aiohttp.ClientResponse,
    headers: dict[str, str],
    store: Store | None,
) -> web.StreamResponse:
    metrics = call.proxy.metrics
    try:
        body, whole = await Upstream.read(upstream, call.proxy.settings.max_record_bytes)
    except Exception as exc:
        metrics.upstream_failures.labels(_failure(exc)).inc()
        raise
    response = web.StreamResponse(status=upstream.status, headers=headers)
    response.content_type = upstream.content_type or JSON
    if not whole:  # too large to keep: the rest follows as it comes, never stored
        if store is not None:
            metrics.not_stored.labels("too_large").inc()
        await response.prepare(call.request)
        await response.write(body)
        async for chunk in upstream.content.iter_any():
            await response.write(chunk)
        await response.write_eof()
        return response
    record: Record | None = None
    if not 200 <= upstream.status < 300:
        metrics.upstream_failures.labels("status").inc()
        if store is not None:
            metrics.not_stored.labels("status").inc()
    elif store is not None:
        record = _storable(call, body)
    response.content_length = len(body)
    await response.prepare(call.request)
    await response.write(body)
    await response.write_eof()  # the caller has its answer before it is stored
    if record is not None and store is not None:
        await store(record)
    return response


def _storable(call: Call, body: bytes) -> Record | None:
    try:
        record = orjson.loads(body)
    except orjson.JSONDecodeError:
        record = None
    if not isinstance(record, dict):
        call.proxy.metrics.not_stored.labels("not_json").inc()
        return None
    reason = unstorable_reason(record, call.proxy.settings)
    if reason is not None:
        call.proxy.metrics.not_stored.labels(reason).inc()
        return None
    return record


async def _relay_stream(
    call: Call,
    upstream: aiohttp.ClientResponse,
    headers: dict[str, str],
    store: Store | None,
) -> web.StreamResponse:
    proxy = call.proxy
    metrics = proxy.metrics
    limit = proxy.settings.max_record_bytes
    response = web.StreamResponse(headers={**headers, "Cache-Control": "no-cache"})
    response.content_type = EVENT_STREAM
    await response.prepare(call.request)
    reader = SseReader()
    events: list[Record] = []
    recording = store is not None
    done = broken = False
    size = 0
    try:
        async for chunk in upstream.content.iter_any():
            await response.write(chunk)  # the caller sees each piece as it comes
            if not recording:
                continue
            size += len(chunk)
            if size > limit:
                recording = False
                metrics.not_stored.labels("too_large").inc()
                continue
            for data in reader.feed(chunk):
                if data == DONE:
                    done = True
                    continue
                try:
                    events.append(orjson.loads(data))
                except orjson.JSONDecodeError:
                    recording = False
                    metrics.not_stored.labels("not_json").inc()
                    break
    except (TimeoutError, aiohttp.ClientError, OSError) as exc:
        if isinstance(exc, ConnectionResetError) and _caller_gone(call.request):
            raise  # the caller hung up: nobody to tell
        broken = True
        metrics.upstream_failures.labels("broken_stream").inc()
        # The status is sent already: say it in the stream, as OpenAI does (its SDKs
        # raise on an error event), so the caller does not take half an answer as whole.
        await response.write(encode_event(_BROKEN))
    await response.write_eof()
    if recording and store is not None:
        record = call.endpoint.from_chunks(events)
        reason = "truncated" if broken or not done else unstorable_reason(record, proxy.settings)
        if reason is None:
            await store(record)
        else:
            metrics.not_stored.labels(reason).inc()
    return response


def _caller_gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()
