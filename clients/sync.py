"""The blocking client, on urllib3's connection pool."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar, cast

import urllib3
from numpy.typing import NDArray
from urllib3.exceptions import HTTPError, NewConnectionError
from urllib3.exceptions import TimeoutError as Urllib3Timeout

from semcached.clients import commands, kv
from semcached.clients.base import Attempts, ClientOptions
from semcached.clients.commands import (
    CategoryStats,
    Entry,
    InsertResult,
    LookupQuery,
    LookupResult,
    Readiness,
    Reply,
    Request,
    VectorLike,
)
from semcached.clients.retry import RetryPolicy
from semcached.clients.shm import ShmUnavailableError
from semcached.errors import BadRequestError, SemcachedConnectionError, SemcachedTimeoutError

__all__ = ["SemcachedClient"]

T = TypeVar("T")


class SemcachedClient:
    """Talks to a semcached daemon; safe to share between threads.

    Use it as a context manager, or call :meth:`close` when done::

        with SemcachedClient("http://127.0.0.1:8080") as client:
            client.ready()
    """

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8080",
        *,
        token: str | None = None,
        timeout_s: float = 10.0,
        connect_timeout_s: float = 2.0,
        retry: RetryPolicy | None = None,
        pool_size: int = 10,
        shm: bool = True,
        shm_dir: str | Path = "/dev/shm",
    ) -> None:
        self.options = ClientOptions(
            base_url, token, timeout_s, connect_timeout_s, retry or RetryPolicy(), pool_size
        )
        # Zero-copy reads of KV blobs when the daemon is on this host (see ``get_chunk``).
        self._shm = kv.ShmPath(shm, Path(shm_dir))
        self._pool = urllib3.PoolManager(
            maxsize=pool_size,
            block=False,
            retries=False,  # retries are ours: only idempotent requests, with jitter
            timeout=urllib3.Timeout(connect=connect_timeout_s, read=timeout_s),
        )

    # -- lifecycle -------------------------------------------------------------------

    def close(self) -> None:
        self._pool.clear()
        self._shm.close()

    def __enter__(self) -> SemcachedClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- transport -------------------------------------------------------------------

    def execute(self, request: Request[T]) -> T:
        """Send ``request`` (retrying if it is idempotent) and return its parsed result."""
        attempts = Attempts(request, self.options.retry)
        while True:
            try:
                reply = self._send(request)
            except (SemcachedConnectionError, SemcachedTimeoutError) as exc:
                delay = attempts.retry_delay(type(exc).__name__)
                if delay is None:
                    raise
                time.sleep(delay)
                continue
            if attempts.should_retry_status(reply):
                delay = attempts.retry_delay(f"HTTP {reply.status}")
                if delay is not None:
                    time.sleep(delay)
                    continue
            return attempts.result(reply)

    def _send(self, request: Request[Any]) -> Reply:
        url = self.options.url(request)
        try:
            response = self._pool.request(
                request.method,
                url,
                # urllib3 sends any buffer (memoryview of a KV blob) as it is.
                body=cast("bytes | None", request.body()),
                headers=self.options.headers(request),
            )
        except NewConnectionError as exc:
            raise SemcachedConnectionError(f"cannot connect to {url}: {exc}") from exc
        except Urllib3Timeout as exc:
            raise SemcachedTimeoutError(f"{request.method} {url} timed out: {exc}") from exc
        except HTTPError as exc:
            raise SemcachedConnectionError(f"{request.method} {url} failed: {exc}") from exc
        return Reply(
            response.status, {k.lower(): v for k, v in response.headers.items()}, response.data
        )

    # -- commands --------------------------------------------------------------------

    def health(self) -> bool:
        """True when the daemon process answers ``/livez``."""
        return self.execute(commands.health())

    def ready(self) -> Readiness:
        """The daemon's readiness (``ready`` is False while it starts or stops)."""
        return self.execute(commands.ready())

    def metrics(self) -> str:
        """The Prometheus exposition text of ``/metrics``."""
        return self.execute(commands.metrics())

    def get_config(self) -> dict[str, Any]:
        """The daemon's effective settings, secrets redacted."""
        return self.execute(commands.get_config())

    def set_log_level(self, level: str) -> str:
        """Change the daemon's log level until it restarts."""
        return self.execute(commands.set_log_level(level))

    # -- semantic cache --------------------------------------------------------------

    def lookup(
        self,
        namespace: str,
        text: str | None = None,
        *,
        vector: VectorLike | None = None,
        category: str | None = None,
        partition: str | None = None,
        threshold: float | None = None,
    ) -> LookupResult:
        """Find a cached response to a prompt meaning the same thing (text and/or vector)."""
        query = LookupQuery(namespace, text, vector, category, partition, threshold)
        return self.execute(commands.lookup(query))

    def lookup_many(self, queries: Sequence[LookupQuery]) -> list[LookupResult]:
        """Several lookups in one request; results in order."""
        return self.execute(commands.lookup_many(queries))

    def insert(
        self,
        namespace: str,
        prompt: str,
        response: Any,
        *,
        category: str | None = None,
        partition: str | None = None,
        model: str | None = None,
        vector: VectorLike | None = None,
        ttl_s: float | None = None,
    ) -> InsertResult:
        """Cache ``response`` (JSON value, or bytes) for ``prompt``; returns once durable."""
        return self.execute(
            commands.insert(
                namespace, prompt, response, category=category, partition=partition,
                model=model, vector=vector, ttl_s=ttl_s,
            )
        )  # fmt: skip

    def get(self, entry_id: int, namespace: str) -> Entry:
        """One entry; raises NotFoundError if it is absent, expired or in another namespace."""
        return self.execute(commands.get_entry(entry_id, namespace))

    def delete(self, entry_id: int, namespace: str) -> bool:
        """Remove one entry; False if there was none."""
        return self.execute(commands.delete_entry(entry_id, namespace))

    def purge(
        self, namespace: str, *, category: str | None = None, partition: str | None = None
    ) -> int:
        """Remove a namespace's entries (optionally one category or partition); the count."""
        return self.execute(commands.purge(namespace, category=category, partition=partition))

    def stats(self) -> dict[str, CategoryStats]:
        """Counters per category."""
        return self.execute(commands.stats())

    # -- chunk KV cache --------------------------------------------------------------

    def put_chunk(
        self,
        key: bytes | str,
        data: bytes | bytearray | memoryview | NDArray[Any],
        *,
        model: str,
        dtype: str,
        shape: Sequence[int],
        prefix: Sequence[bytes | str] = (),
        prefix_tokens: Sequence[int] = (),
        rope_base: int = 0,
        rope: Mapping[str, Any] | None = None,
        inter: Sequence[float] | NDArray[Any] | None = None,
        intra: float | None = None,
        token_scores: Sequence[float] | NDArray[Any] | None = None,
        transfer: kv.Transfer = "auto",
    ) -> kv.ChunkMeta:
        """Store one variant of a chunk's KV (layout ``[layers, 2, kv_heads, tokens,
        head_dim]``) with its Cache-Craft statistics; returns once durable.

        On the daemon's host (``transfer`` ``auto`` or ``shm``) the bytes are staged in
        a shared-memory file the daemon reads, instead of crossing a socket.
        """
        blob = kv.as_bytes(data)

        def command(staged: str | None = None) -> Request[kv.ChunkMeta]:
            return kv.put_chunk(
                key, blob, model=model, dtype=dtype, shape=shape, prefix=prefix,
                prefix_tokens=prefix_tokens, rope_base=rope_base, rope=rope, inter=inter,
                intra=intra, token_scores=token_scores, staged=staged,
            )  # fmt: skip

        if self._shm.wanted_put(transfer):
            try:
                with self._shm.staged(blob) as name:
                    return self.execute(command(name))
            except BadRequestError as exc:
                if transfer == "shm" or not self._shm.put_failed(exc):
                    raise
            except OSError:
                if transfer == "shm":
                    raise
                self._shm.same_host = False  # no usable shm directory here
        return self.execute(command())

    def get_chunk(
        self,
        key: bytes | str,
        variant: bytes | str | None = None,
        *,
        transfer: kv.Transfer = "auto",
        lease_s: float | None = None,
    ) -> kv.KvChunk:
        """One variant's bytes (the newest variant by default).

        Zero-copy from shared memory when the daemon is on this host (``transfer``
        ``auto`` or ``shm``): the view is pinned by a lease; release it with
        :meth:`release_lease` when done. Otherwise a copy over HTTP.
        """
        if self._shm.wanted(transfer):
            meta, ref, lease = self.execute(kv.lease_chunk(key, variant, lease_s=lease_s))
            chunk = self._shm.view(meta, ref, lease)
            if chunk is not None:
                return chunk
            self.release_lease(lease.id)
            if transfer == "shm":
                raise ShmUnavailableError(f"segment {ref.segment} is not on this host")
        return self.execute(kv.get_chunk(key, variant))

    def fetch(self, planned: kv.PlannedChunk, lease: kv.LeaseInfo | None = None) -> kv.KvChunk:
        """The bytes of a hit of a plan: zero-copy when the plan handed out a handle
        for this host (pinned by the plan's ``lease``), else over HTTP."""
        if planned.fetch is None or planned.variant is None:
            raise ValueError(f"chunk {planned.key} is a miss: nothing to fetch")
        ref = planned.fetch.shm
        if ref is not None:
            chunk = self._shm.view(self._shm.planned_meta(planned), ref, lease)
            if chunk is not None:
                return chunk
        return self.execute(kv.get_chunk(planned.key, planned.variant))

    def plan(
        self,
        model: str,
        keys: Sequence[bytes | str],
        *,
        chunk_tokens: Sequence[int] | None = None,
        start: int = 0,
        transfer: kv.Transfer = "auto",
        lease_s: float | None = None,
    ) -> kv.KvPlan:
        """The reuse plan for a prompt's chunks (in prompt order); unknown chunks are
        misses. With shared memory the hits are pinned under the plan's lease."""
        shm = self._shm.wanted(transfer)
        return self.execute(
            kv.plan(model, keys, chunk_tokens=chunk_tokens, start=start, shm=shm,
                    lease_s=lease_s)
        )  # fmt: skip

    def release_lease(self, lease_id: str) -> bool:
        """End a lease (its views must not be read afterwards); False if it had ended."""
        return self.execute(kv.release_lease(lease_id))

    def delete_chunk(self, key: bytes | str, variant: bytes | str | None = None) -> int:
        """Remove one variant, or every variant of a chunk; how many were removed."""
        return self.execute(kv.delete_chunk(key, variant))

    def kv_stats(self) -> dict[str, kv.TierStats]:
        """Counters per tier (host, disk)."""
        return self.execute(kv.kv_stats())
