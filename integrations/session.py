"""What the LangChain and LiteLLM caches share: a namespace on a daemon, reached through
the fail-open clients (:mod:`semcached.clients.failopen`), sync and async, in semantic or
exact mode.

``mode="semantic"``: the daemon embeds the text and a paraphrase hits. ``mode="exact"``:
lookups are ``exact_only`` (the same normalised text in the same partition; a miss costs
the daemon no embedding), and only an exact-tier answer is served.
"""

from __future__ import annotations

from typing import Any, Literal

from semcached.clients import (
    AsyncFailOpenClient,
    AsyncSemcachedClient,
    FailOpenClient,
    FailOpenPolicy,
    SemcachedClient,
)
from semcached.clients.commands import LookupResult

__all__ = ["CacheMode", "CacheSession"]

CacheMode = Literal["semantic", "exact"]


class CacheSession:
    """A namespace on a daemon, for one integration.

    ``client``: a :class:`SemcachedClient` or the daemon's URL; ``async_client``: for the
    async methods (default: one to the same daemon). Clients made here are closed by
    :meth:`close` / :meth:`aclose`; given ones stay the caller's. ``category``: every
    entry's (None: the daemon classifies); ``policy``: the fail-open budget, breaker and
    store queue. ``sync`` and ``aio`` are the fail-open clients (their ``stats``,
    ``flush``).
    """

    def __init__(
        self,
        client: SemcachedClient | str,
        *,
        async_client: AsyncSemcachedClient | None = None,
        namespace: str,
        mode: CacheMode = "semantic",
        category: str | None = None,
        policy: FailOpenPolicy | None = None,
        token: str | None = None,
    ) -> None:
        if mode not in ("semantic", "exact"):
            raise ValueError(f"mode must be 'semantic' or 'exact', got {mode!r}")
        self._owns_client = isinstance(client, str)
        sync = SemcachedClient(client, token=token) if isinstance(client, str) else client
        self._owns_async = async_client is None
        self.async_client = async_client or AsyncSemcachedClient(
            sync.options.base_url,
            token=sync.options.token,
            timeout_s=sync.options.timeout_s,
            connect_timeout_s=sync.options.connect_timeout_s,
        )
        self.namespace = namespace
        self.mode: CacheMode = mode
        self.category = category
        self.sync = FailOpenClient(sync, policy)
        self.aio = AsyncFailOpenClient(self.async_client, self.sync.policy)

    def _served(self, result: LookupResult | None) -> Any:
        """The cached response of a hit the mode accepts, else None."""
        if result is None or not result.hit:
            return None
        if self.mode == "exact" and result.strategy != "exact":
            return None
        return result.response

    def _query(self, partition: str) -> dict[str, Any]:
        return {
            "partition": partition,
            "category": self.category,
            "exact_only": self.mode == "exact",
        }

    def get(self, text: str, partition: str) -> Any:
        """The cached response for ``text`` in ``partition``, or None (a miss, or the
        cache could not answer within the budget)."""
        return self._served(self.sync.lookup(self.namespace, text, **self._query(partition)))

    async def aget(self, text: str, partition: str) -> Any:
        """:meth:`get` for the async paths."""
        found = await self.aio.lookup(self.namespace, text, **self._query(partition))
        return self._served(found)

    def put(self, text: str, response: Any, **options: Any) -> bool:
        """Queue a store (``partition``, ``ttl_s``, ``model``); False if it was dropped."""
        return self.sync.store(self.namespace, text, response, category=self.category, **options)

    def aput(self, text: str, response: Any, **options: Any) -> bool:
        """:meth:`put` on the async client's queue (call it from its loop)."""
        return self.aio.store(self.namespace, text, response, category=self.category, **options)

    def purge(self, **narrow: Any) -> None:
        """Remove the namespace's entries (``partition=``, ``category=`` narrow it),
        after the stores still queued."""
        self.sync.flush(self.sync.policy.store_timeout_s)
        self.sync.client.purge(self.namespace, **narrow)

    async def apurge(self, **narrow: Any) -> None:
        await self.aio.flush(self.aio.policy.store_timeout_s)
        await self.aio.client.purge(self.namespace, **narrow)

    def close(self) -> None:
        """Send the queued stores, stop the workers, close the sync client made here."""
        self.sync.close()
        if self._owns_client:
            self.sync.client.close()

    async def aclose(self) -> None:
        """:meth:`close` for the async side."""
        await self.aio.close()
        if self._owns_async:
            await self.async_client.close()
