"""Every method of both clients, declared once.

Each attribute is a :class:`~semcached.clients.base.Method` over one command of
:mod:`~semcached.clients.commands`, :mod:`~semcached.clients.kv` or
:mod:`~semcached.clients.kv_flows`: that function's signature and docstring are the
method's. :class:`~semcached.clients.SemcachedClient` (blocking) and
:class:`~semcached.clients.AsyncSemcachedClient` (asyncio) inherit them and only move
bytes.
"""

from __future__ import annotations

from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, assert_type

from semcached.clients import commands, kv, kv_flows, load
from semcached.clients.base import command, flow

if TYPE_CHECKING:
    from semcached.clients.aio import AsyncSemcachedClient
    from semcached.clients.commands import FeedbackResult, LookupQuery, LookupResult
    from semcached.clients.kv import ChunkMeta, KvChunk, put_meta
    from semcached.clients.load import ModelLoad
    from semcached.clients.sync import SemcachedClient

__all__ = ["ClientApi"]


class ClientApi:
    """The daemon's commands, as methods of a client (see :mod:`semcached.clients.base`)."""

    # -- health and admin ------------------------------------------------------------
    health = command(commands.health)
    ready = command(commands.ready)
    metrics = command(commands.metrics)
    get_config = command(commands.get_config)
    set_log_level = command(commands.set_log_level)

    # -- semantic cache --------------------------------------------------------------
    lookup = command(commands.lookup)
    lookup_many = command(commands.lookup_many)
    insert = command(commands.insert)
    get = command(commands.get_entry)
    delete = command(commands.delete_entry)
    purge = command(commands.purge)
    stats = command(commands.stats)
    feedback = command(commands.feedback)
    classification = command(commands.classification)
    report_load = command(load.report_load)

    # -- chunk KV cache --------------------------------------------------------------
    put_chunk = flow(kv_flows.put_chunk)
    get_chunk = flow(kv_flows.get_chunk)
    fetch = flow(kv_flows.fetch)
    fetch_tensor = flow(kv_flows.fetch_tensor)
    get_tensor = flow(kv_flows.get_tensor)
    plan = flow(kv_flows.plan)
    release_lease = command(kv.release_lease)
    delete_chunk = command(kv.delete_chunk)
    kv_stats = command(kv.kv_stats)


if TYPE_CHECKING:  # checked by mypy --strict (scripts/typecheck), never run

    async def _each_client_types_each_method(
        sync: SemcachedClient, aio: AsyncSemcachedClient, query: LookupQuery
    ) -> None:
        assert_type(sync.lookup("ns", vector=[0.0], threshold=0.9), LookupResult)
        await assert_type(aio.lookup("ns", "text"), Coroutine[Any, Any, LookupResult])
        assert_type(sync.lookup_many([query]), list[LookupResult])
        assert_type(sync.feedback("id", correct=True), FeedbackResult)
        await assert_type(
            aio.feedback(entry_id=1, correct=False), Coroutine[Any, Any, FeedbackResult]
        )
        assert_type(sync.report_load("ns", "m", queue_depth=3), ModelLoad)
        await assert_type(aio.report_load("ns", "m", latency_ms=9), Coroutine[Any, Any, ModelLoad])
        meta = put_meta("m", "float32", [1] * 5)
        await assert_type(aio.put_chunk(b"k", b"", meta), Coroutine[Any, Any, ChunkMeta])
        assert_type(sync.get_chunk(b"k", transfer="http"), KvChunk)
        assert_type(sync.health(), bool)
