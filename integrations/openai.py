"""The OpenAI SDK, cached in-process: for an app that calls OpenAI directly and runs no proxy.

::

    from openai import OpenAI
    from semcached.clients import SemcachedClient
    from semcached.integrations.openai import cached

    llm = cached(OpenAI(), client=SemcachedClient("http://127.0.0.1:8080"))
    answer = llm.chat.completions.create(model="gpt-4o-mini", messages=[...])

``cached`` returns a stand-in for the client: ``chat.completions.create`` looks the
request up first (key and partition: :func:`~semcached.protocol.chat.chat_cache_key`)
and answers a hit with the cached ``ChatCompletion``, or, for ``stream=True``, with a
stream of ``ChatCompletionChunk`` replayed from it (:mod:`semcached.protocol.chat_replay`)
— whether it was cached from a streamed call or not. A miss calls OpenAI; a streamed
miss is recorded as the caller reads it and stored when it ends complete. Everything
else (other resources, ``with_options``…) is the wrapped client's. The async twin
wraps ``AsyncOpenAI`` with an ``AsyncSemcachedClient``.

The cache never stands between the app and its answer: lookups have a budget and a
circuit breaker, and stores go through a bounded background queue
(:mod:`semcached.clients.failopen`); a cache that is down or slow is a miss.
Requests that must not be cached pass through untouched (:func:`bypass_reason`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, overload

from semcached.clients.aio import AsyncSemcachedClient
from semcached.clients.commands import LookupResult
from semcached.clients.failopen import AsyncFailOpenClient, FailOpenClient, FailOpenStats
from semcached.clients.sync import SemcachedClient
from semcached.protocol.chat import ChatCacheKey
from semcached.protocol.chat_replay import (
    chunks_from_completion,
    completion_from_chunks,
    is_complete,
)
from semcached.protocol.chat_rules import CachingRules, bypass_reason, unstorable_reason

__all__ = ["AsyncCachedOpenAI", "CachedOpenAI", "WrapperCounts", "cached"]

T = TypeVar("T")

# create()'s keyword arguments that are not part of the request body.
_TRANSPORT_ARGS = frozenset({"extra_headers", "extra_query", "extra_body", "timeout"})


def _given(value: Any) -> bool:
    # The SDK's "not given" sentinels (NOT_GIVEN, omit) are instances of its own
    # classes; a real argument is of a JSON type.
    return value is None or isinstance(value, str | int | float | bool | list | tuple | dict)


def request_body(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON body ``create(**kwargs)`` sends (keyword arguments plus ``extra_body``)."""
    body = {k: v for k, v in kwargs.items() if k not in _TRANSPORT_ARGS and _given(v)}
    extra = kwargs.get("extra_body")
    if isinstance(extra, Mapping):
        body.update(extra)
    return body


@dataclass
class WrapperCounts:
    """What the wrapper did with ``create`` calls (the cache's own counters are
    :class:`~semcached.clients.failopen.FailOpenStats`)."""

    hits: int = 0  # answered from the cache
    misses: int = 0  # asked the model (the cache had nothing, or could not answer in time)
    bypasses: int = 0  # may not be cached (n > 1, temperature, logprobs, no user message)
    unstored: int = 0  # asked the model, but its answer may not be stored


@dataclass(frozen=True, slots=True)
class _Where:
    namespace: str
    category: str | None
    ttl_s: float | None
    rules: CachingRules


def _usable(result: LookupResult | None) -> dict[str, Any] | None:
    """A hit's record, when it is one a replay can use (a namespace may be shared)."""
    if result is None or not result.hit or not isinstance(result.response, dict):
        return None
    record: dict[str, Any] = result.response
    return record if is_complete(record) else None


def _types() -> tuple[Any, Any]:
    # Imported on first use: the module imports without the openai package.
    from openai.types.chat import ChatCompletion, ChatCompletionChunk

    return ChatCompletion, ChatCompletionChunk


def _replay(record: Mapping[str, Any], body: Mapping[str, Any]) -> Iterator[Any]:
    _, chunk_type = _types()
    include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
    for chunk in chunks_from_completion(record, include_usage=include_usage):
        yield chunk_type.model_validate(chunk)


class _Core:
    """What both clients decide the same way; they only differ in how they wait."""

    def __init__(self, cache: FailOpenClient | AsyncFailOpenClient, where: _Where) -> None:
        self.cache = cache
        self.where = where
        self.counts = WrapperCounts()

    def key(self, body: Mapping[str, Any]) -> ChatCacheKey | None:
        """The request's key, or None (counted) when it may not be cached."""
        _, key = bypass_reason(body, self.where.rules)
        if key is None:
            self.counts.bypasses += 1
        return key

    def hit(self, found: LookupResult | None, body: Mapping[str, Any], stream: type) -> Any:
        """The answer a lookup gives (a completion or a ``stream`` replay), or None."""
        record = _usable(found)
        if record is None:
            self.counts.misses += 1
            return None
        self.counts.hits += 1
        if body.get("stream"):
            return stream(_replay(record, body))
        return _types()[0].model_validate(record)

    def miss(self, answer: Any, body: Mapping[str, Any], key: ChatCacheKey, stream: type) -> Any:
        """The model's answer, stored (a ``stream`` recording it as it is read)."""

        def store(record: dict[str, Any]) -> None:
            where = self.where
            if unstorable_reason(record, where.rules) is not None:
                self.counts.unstored += 1
                return
            self.cache.store(
                where.namespace, key.text, record, partition=key.partition,
                category=where.category, ttl_s=where.ttl_s,
            )  # fmt: skip

        if body.get("stream"):
            return stream(answer, _Recorder(store))
        store(answer.model_dump(mode="json", exclude_none=True))
        return answer

    def lookup_args(self, key: ChatCacheKey) -> tuple[tuple[str, str], dict[str, Any]]:
        where = self.where
        return (where.namespace, key.text), {"partition": key.partition, "category": where.category}


class _Recorder:
    """Collects a streamed miss's chunks; hands the record over once, when complete."""

    def __init__(self, store: Callable[[dict[str, Any]], None]) -> None:
        self._chunks: list[dict[str, Any]] = []
        self._store: Callable[[dict[str, Any]], None] | None = store

    def add(self, chunk: Any) -> None:
        self._chunks.append(chunk.model_dump(mode="json", exclude_none=True))

    def finish(self) -> None:
        store, self._store = self._store, None
        if store is not None:
            store(completion_from_chunks(self._chunks))

    def abandon(self) -> None:
        self._store = None  # a stream closed before its end is truncated: never stored


class ReplayStream(Generic[T]):
    """A cached answer as a chunk stream: iterable, a context manager, closable (what
    callers do with the SDK's own ``Stream``)."""

    def __init__(self, chunks: Iterator[T]) -> None:
        self._chunks = chunks

    def __iter__(self) -> Iterator[T]:
        return self._chunks

    def __next__(self) -> T:
        return next(self._chunks)

    def __enter__(self) -> ReplayStream[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._chunks = iter(())


class RecordingStream(Generic[T]):
    """The SDK's stream of a miss, passed through chunk by chunk while it is recorded."""

    def __init__(self, stream: Any, recorder: _Recorder) -> None:
        self._stream = stream
        self._recorder = recorder
        self._iterator: Iterator[T] = self._pass_through()

    def _pass_through(self) -> Iterator[T]:
        for chunk in self._stream:
            self._recorder.add(chunk)
            yield chunk
        self._recorder.finish()

    def __iter__(self) -> Iterator[T]:
        return self._iterator

    def __next__(self) -> T:
        return next(self._iterator)

    def __enter__(self) -> RecordingStream[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._recorder.abandon()
        self._stream.close()

    def __getattr__(self, name: str) -> Any:  # .response and the rest of the SDK's Stream
        return getattr(self._stream, name)


class AsyncReplayStream(Generic[T]):
    """:class:`ReplayStream` for ``async for``."""

    def __init__(self, chunks: Iterator[T]) -> None:
        self._chunks = chunks

    def __aiter__(self) -> AsyncReplayStream[T]:
        return self

    async def __anext__(self) -> T:
        try:
            return next(self._chunks)
        except StopIteration:
            raise StopAsyncIteration from None

    async def __aenter__(self) -> AsyncReplayStream[T]:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        self._chunks = iter(())


class AsyncRecordingStream(Generic[T]):
    """:class:`RecordingStream` for ``async for``."""

    def __init__(self, stream: Any, recorder: _Recorder) -> None:
        self._stream = stream
        self._recorder = recorder
        self._iterator: AsyncIterator[T] = self._pass_through()

    async def _pass_through(self) -> AsyncIterator[T]:
        async for chunk in self._stream:
            self._recorder.add(chunk)
            yield chunk
        self._recorder.finish()

    def __aiter__(self) -> AsyncIterator[T]:
        return self._iterator

    async def __anext__(self) -> T:
        return await self._iterator.__anext__()

    async def __aenter__(self) -> AsyncRecordingStream[T]:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        self._recorder.abandon()
        await self._stream.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


class _Delegate:
    """Everything not overridden is the wrapped object's."""

    def __init__(self, wrapped: Any) -> None:
        self._wrapped = wrapped

    def __getattr__(self, name: str) -> Any:
        return getattr(self._wrapped, name)


class _Completions(_Delegate):
    def __init__(self, wrapped: Any, owner: CachedOpenAI) -> None:
        super().__init__(wrapped)
        self._owner = owner

    def create(self, **kwargs: Any) -> Any:
        return self._owner._create(self._wrapped.create, kwargs)


class _AsyncCompletions(_Delegate):
    def __init__(self, wrapped: Any, owner: AsyncCachedOpenAI) -> None:
        super().__init__(wrapped)
        self._owner = owner

    async def create(self, **kwargs: Any) -> Any:
        return await self._owner._create(self._wrapped.create, kwargs)


class _Chat(_Delegate):
    def __init__(self, wrapped: Any, completions: _Delegate) -> None:
        super().__init__(wrapped)
        self.completions = completions


class CachedOpenAI(_Delegate):
    """An ``OpenAI`` client whose ``chat.completions.create`` goes through semcached."""

    def __init__(self, openai: Any, cache: FailOpenClient, where: _Where) -> None:
        super().__init__(openai)
        self.semcached = cache
        self._core = _Core(cache, where)
        self.counts = self._core.counts
        self.chat = _Chat(openai.chat, _Completions(openai.chat.completions, self))

    @property
    def semcached_stats(self) -> FailOpenStats:
        """The cache's counters: lookups, hits, over budget, breaker, stores."""
        return self.semcached.stats

    def _create(self, create: Callable[..., Any], kwargs: dict[str, Any]) -> Any:
        core, body = self._core, request_body(kwargs)
        key = core.key(body)
        if key is None:
            return create(**kwargs)
        args, options = core.lookup_args(key)
        answer = core.hit(self.semcached.lookup(*args, **options), body, ReplayStream)
        if answer is not None:
            return answer
        return core.miss(create(**kwargs), body, key, RecordingStream)


class AsyncCachedOpenAI(_Delegate):
    """:class:`CachedOpenAI` for ``AsyncOpenAI``."""

    def __init__(self, openai: Any, cache: AsyncFailOpenClient, where: _Where) -> None:
        super().__init__(openai)
        self.semcached = cache
        self._core = _Core(cache, where)
        self.counts = self._core.counts
        self.chat = _Chat(openai.chat, _AsyncCompletions(openai.chat.completions, self))

    @property
    def semcached_stats(self) -> FailOpenStats:
        return self.semcached.stats

    async def _create(self, create: Callable[..., Any], kwargs: dict[str, Any]) -> Any:
        core, body = self._core, request_body(kwargs)
        key = core.key(body)
        if key is None:
            return await create(**kwargs)
        args, options = core.lookup_args(key)
        found = await self.semcached.lookup(*args, **options)
        answer = core.hit(found, body, AsyncReplayStream)
        if answer is not None:
            return answer
        return core.miss(await create(**kwargs), body, key, AsyncRecordingStream)


@overload
def cached(
    openai: Any,
    *,
    client: SemcachedClient | FailOpenClient,
    namespace: str = ...,
    category: str | None = ...,
    ttl_s: float | None = ...,
    max_temperature: float = ...,
    cache_tool_calls: bool = ...,
) -> CachedOpenAI: ...
@overload
def cached(
    openai: Any,
    *,
    client: AsyncSemcachedClient | AsyncFailOpenClient,
    namespace: str = ...,
    category: str | None = ...,
    ttl_s: float | None = ...,
    max_temperature: float = ...,
    cache_tool_calls: bool = ...,
) -> AsyncCachedOpenAI: ...
def cached(
    openai: Any,
    *,
    client: SemcachedClient | FailOpenClient | AsyncSemcachedClient | AsyncFailOpenClient,
    namespace: str = "openai",
    category: str | None = None,
    ttl_s: float | None = None,
    max_temperature: float = 1.0,
    cache_tool_calls: bool = False,
) -> CachedOpenAI | AsyncCachedOpenAI:
    """``openai`` with its chat completions cached in semcached's ``namespace``.

    ``openai``: an ``openai.OpenAI`` with a :class:`SemcachedClient`, or an
    ``openai.AsyncOpenAI`` with an :class:`AsyncSemcachedClient` (either wrapped
    fail-open with the default policy), or a :class:`FailOpenClient` /
    :class:`AsyncFailOpenClient` configured by the caller. ``max_temperature`` and
    ``cache_tool_calls``: :class:`~semcached.protocol.chat_rules.CachingRules`.
    """
    where = _Where(namespace, category, ttl_s, CachingRules(max_temperature, cache_tool_calls))
    if isinstance(client, AsyncSemcachedClient):
        client = AsyncFailOpenClient(client)
    if isinstance(client, AsyncFailOpenClient):
        return AsyncCachedOpenAI(openai, client, where)
    if isinstance(client, SemcachedClient):
        client = FailOpenClient(client)
    return CachedOpenAI(openai, client, where)
