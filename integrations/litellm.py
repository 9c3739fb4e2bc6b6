"""LiteLLM's in-process response cache on semcached: one line of configuration,

    litellm.cache = semcached.integrations.litellm.cache("http://127.0.0.1:8080")

:func:`cache` returns a ``litellm.Cache`` whose backend is a :class:`SemcachedBackend`
(LiteLLM's ``BaseCache`` interface: ``get_cache``, ``set_cache``, their async twins,
``async_set_cache_pipeline``, ``batch_cache_write``, ``delete_cache``, ``flush_cache``,
``disconnect``…), passed as ``Cache(_backend=...)``, which LiteLLM provides for a
backend of one's own.

Two modes:

- ``semantic`` (the default). The ``Cache`` is made with a semantic ``type`` so that
  LiteLLM's own key leaves the prompt out: the key (model, parameters, the caller's
  key/team scope) becomes the entry's *partition*, hashed with the messages before the
  last user message (the system prompt and earlier turns); the last user message is the
  text the daemon embeds and compares, so a paraphrase hits.
- ``exact``. LiteLLM's key covers the whole request, prompt included; it is the entry's
  text and partition both, and only the daemon's exact tier answers.

Every call goes through the fail-open layer (:mod:`semcached.clients.failopen`):
lookups within a budget (a miss after it), a breaker, stores queued off the answer path.
LiteLLM's own callers already swallow a cache's exceptions; this layer also bounds the
time they may take. Counters live in ``backend.sync.stats`` and ``backend.aio.stats``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import orjson
import xxhash
from litellm.caching.base_cache import BaseCache
from litellm.caching.caching import Cache
from litellm.types.caching import LiteLLMCacheType

from semcached.clients import FailOpenPolicy, SemcachedClient
from semcached.clients.openai import chat_cache_key
from semcached.integrations.session import CacheMode, CacheSession

__all__ = ["CacheMode", "SemcachedBackend", "cache"]


class SemcachedBackend(BaseCache):
    """LiteLLM's ``BaseCache`` on a semcached daemon (see the module docstring).

    ``client``: a :class:`SemcachedClient` or the daemon's URL (then this backend owns
    it and :meth:`close` closes it); the async methods use an
    :class:`AsyncSemcachedClient` to the same daemon. ``category``: the category of
    every entry (None: the daemon classifies the prompt). ``default_ttl``: seconds an
    entry lives when LiteLLM passes no ``ttl`` (None: the category's TTL).
    """

    def __init__(
        self,
        client: SemcachedClient | str = "http://127.0.0.1:8080",
        *,
        namespace: str = "litellm",
        mode: CacheMode = "semantic",
        category: str | None = None,
        default_ttl: float | None = None,
        policy: FailOpenPolicy | None = None,
        token: str | None = None,
    ) -> None:
        super().__init__()
        self.session = CacheSession(
            client, namespace=namespace, mode=mode, category=category, policy=policy, token=token
        )
        self.mode: CacheMode = mode
        self.default_ttl = default_ttl  # type: ignore[assignment]
        self.sync = self.session.sync  # the fail-open clients: stats, flush
        self.aio = self.session.aio

    # -- keys --------------------------------------------------------------------------

    def _key(self, key: str, kwargs: Mapping[str, Any]) -> tuple[str, str]:
        """(text compared, partition) of LiteLLM's ``key`` and the call's kwargs."""
        messages = kwargs.get("messages")
        if self.mode == "semantic" and isinstance(messages, Sequence) and messages:
            try:
                chat = chat_cache_key({"messages": messages})
            except ValueError:  # no user message: nothing to compare
                pass
            else:
                if chat.text.strip():
                    partition = xxhash.xxh3_128_hexdigest(f"{key}\n{chat.partition}".encode())
                    return chat.text, partition
        text = kwargs.get("input")
        if self.mode == "semantic" and isinstance(text, str) and text.strip():
            return text, key
        return key, key  # exact: the key names the whole request

    def _ttl(self, kwargs: Mapping[str, Any]) -> float | None:
        ttl = kwargs.get("ttl")
        if ttl is None:
            return self.default_ttl
        try:
            return float(ttl)
        except (TypeError, ValueError):
            return self.default_ttl

    def _insert_args(self, key: str, value: Any, kwargs: Mapping[str, Any]) -> dict[str, Any]:
        text, partition = self._key(key, kwargs)
        return {
            "text": text,
            "response": _jsonable(value),
            "partition": partition,
            "model": str(kwargs.get("model") or "") or None,
            "ttl_s": self._ttl(kwargs),
        }

    # -- sync --------------------------------------------------------------------------

    def get_cache(self, key: str, **kwargs: Any) -> Any:
        return self.session.get(*self._key(key, kwargs))

    def set_cache(self, key: str, value: Any, **kwargs: Any) -> None:
        self.session.put(**self._insert_args(key, value, kwargs))

    def delete_cache(self, key: str) -> None:
        """Remove the entries stored under LiteLLM's ``key`` (its partition)."""
        self.session.purge(partition=key)

    def flush_cache(self) -> None:
        """Remove every entry of this backend's namespace."""
        self.session.purge()

    def close(self) -> None:
        """Send the queued stores, stop the workers, close a client made here."""
        self.session.close()

    # -- async -------------------------------------------------------------------------

    async def async_get_cache(self, key: str, **kwargs: Any) -> Any:
        return await self.session.aget(*self._key(key, kwargs))

    async def async_set_cache(self, key: str, value: Any, **kwargs: Any) -> None:
        self.session.aput(**self._insert_args(key, value, kwargs))

    async def async_set_cache_pipeline(
        self, cache_list: Sequence[tuple[str, Any]], **kwargs: Any
    ) -> None:
        """Several ``(key, value)`` pairs (LiteLLM's embedding results, one per input):
        each stored under its own key, exactly."""
        rest = {k: v for k, v in kwargs.items() if k not in ("messages", "input")}
        for key, value in cache_list:
            self.session.aput(**self._insert_args(key, value, rest))

    async def batch_cache_write(self, key: str, value: Any, **kwargs: Any) -> None:
        await self.async_set_cache(key, value, **kwargs)

    async def async_batch_get_cache(self, keys: Sequence[str], **kwargs: Any) -> list[Any]:
        return [await self.async_get_cache(key, **kwargs) for key in keys]

    def batch_get_cache(self, keys: Sequence[str], **kwargs: Any) -> list[Any]:
        return [self.get_cache(key, **kwargs) for key in keys]

    async def ping(self) -> bool:
        return bool(await self.session.async_client.health())

    async def test_connection(self) -> dict[str, Any]:
        try:
            ready = await self.session.async_client.ready()
        except Exception as exc:  # reported, not raised: LiteLLM's health check shows it
            return {"status": "failed", "message": "semcached unreachable", "error": str(exc)}
        status = "success" if ready.ready else "failed"
        return {"status": status, "message": f"semcached is {ready.status}"}

    async def disconnect(self) -> None:
        """Send the queued stores and close the async client (LiteLLM calls it on
        shutdown); :meth:`close` does the same for the sync side."""
        await self.session.aclose()


def _jsonable(value: Any) -> Any:
    """LiteLLM's cached data as JSON: its response is already a JSON string; anything
    else that orjson cannot encode is stored as its ``str``."""
    return orjson.loads(orjson.dumps(value, default=str))


def cache(
    client: SemcachedClient | str = "http://127.0.0.1:8080",
    *,
    mode: CacheMode = "semantic",
    **options: Any,
) -> Cache:
    """A ``litellm.Cache`` on a :class:`SemcachedBackend` (``options`` go to it, e.g.
    ``namespace``, ``category``, ``default_ttl``, ``policy``): assign it to
    ``litellm.cache``. In semantic mode the Cache gets a semantic ``type``, so its key
    leaves the prompt to the backend (the module docstring)."""
    backend = SemcachedBackend(client, mode=mode, **options)
    kind = LiteLLMCacheType.REDIS_SEMANTIC if mode == "semantic" else LiteLLMCacheType.LOCAL
    return Cache(type=kind, _backend=backend)
