"""Applies other daemons' semantic changes from the namespace streams.

Every daemon reads every namespace stream (``XREAD``, no consumer groups: each one
must see every change) from the offset it saved after its last applied batch, so a
restart resumes where it stopped; applying a change twice is harmless (the engine
skips entries it holds, deletes of absent ones do nothing). Its own changes (by node
id) are skipped. A malformed event, or a record that does not decode or names
another namespace than its stream's, is skipped and counted, never applied.

A namespace with no saved offset -- a new daemon, a new namespace, or a daemon that
fell further behind than the stream keeps (Redis has trimmed more events,
``entries-added`` less ``length``, than the daemon had read) -- is *bootstrapped*:
the stream's last id is noted, the live records are read bucket by bucket (``ZRANGE``
by expiry + ``MGET``) and applied, and reading resumes from the noted id, so nothing
between is missed.

Lag: each applied change's age since its origin committed it (clocks assumed in step,
as TTLs already assume).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import Executor
from typing import Any

import redis

from semcached.index.docstore import Document, decode_record
from semcached.index.shared.keys import BUCKETS, SemanticKeys
from semcached.index.shared.outbox import ReplicaState, StreamOffset
from semcached.index.shared.records import (
    Change,
    MalformedChange,
    change_from_event,
    unpack_feedback,
)
from semcached.index.shared.target import AsyncRedis
from semcached.index.vector_index import VectorArray
from semcached.service.blocking import run_blocking
from semcached.service.semantic.engine import SemanticCache
from semcached.service.shared.stats import SharingStats

__all__ = ["Consumer"]

log = logging.getLogger(__name__)

_START = b"0-0"
_GAP_CHECK_S = 5.0
_DISCOVER_S = 1.0


class Consumer:
    """Run :meth:`bootstrap` once, then :meth:`run` as a task."""

    def __init__(
        self,
        engine: SemanticCache,
        client: AsyncRedis,
        keys: SemanticKeys,
        state: ReplicaState,
        node: str,
        *,
        stats: SharingStats,
        executor: Executor,
        namespaces: Collection[str] = (),
        batch: int = 512,
        poll_interval_s: float = 0.05,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``namespaces``: the only ones to follow (empty: every one in Redis)."""
        self._engine = engine
        self._client = client
        self._keys = keys
        self._state = state
        self._node = node
        self.stats = stats
        self._executor = executor
        self._allowed = frozenset(namespaces)
        self._batch = batch
        self._poll_s = poll_interval_s
        self._clock = clock
        self._offsets: dict[str, StreamOffset] = {}
        self._last_gap_check = 0.0
        self._last_discover = 0.0
        self._failing = False

    @property
    def offsets(self) -> dict[str, StreamOffset]:
        return dict(self._offsets)

    async def bootstrap(self) -> None:
        """Load saved offsets, find the namespaces, bootstrap those without an offset."""
        self._offsets = await run_blocking(self._executor, self._state.offsets)
        await self._check_gaps()  # a daemon that was down longer than the streams keep
        await self._discover()
        self._last_gap_check = self._last_discover = time.monotonic()

    async def run(self) -> None:
        while True:
            try:
                got = await self.poll_once()
                if self._failing:
                    log.warning("shared tier reachable again; applying other daemons' changes")
                    self._failing = False
            except (redis.RedisError, OSError) as exc:
                self.stats.read_failures += 1
                if not self._failing:
                    log.warning("shared tier unreachable; serving from local state: %s", exc)
                    self._failing = True
                await asyncio.sleep(min(1.0, 10 * self._poll_s))
                continue
            if not got:
                await asyncio.sleep(self._poll_s)

    async def poll_once(self) -> int:
        """One round over every stream; returns how many events were read."""
        now = time.monotonic()
        if now - self._last_discover >= _DISCOVER_S:
            await self._discover()
            self._last_discover = now
        if now - self._last_gap_check >= _GAP_CHECK_S:
            await self._check_gaps()
            self._last_gap_check = now
        if not self._offsets:
            return 0
        names = list(self._offsets)
        pipe = self._client.pipeline(transaction=False)
        for ns in names:
            pipe.xread({self._keys.stream(ns): self._offsets[ns].last_id}, count=self._batch)
        replies = await pipe.execute()
        read = 0
        saved: dict[str, StreamOffset] = {}
        for ns, reply in zip(names, replies, strict=True):
            events = _events(reply)
            if not events:
                continue
            read += len(events)
            await self._apply(ns, events)
            position = self._offsets[ns].position + len(events)
            self._offsets[ns] = saved[ns] = StreamOffset(events[-1][0], position)
        await run_blocking(self._executor, self._state.save_offsets, saved)
        return read

    async def _apply(
        self, namespace: str, events: Sequence[tuple[bytes, dict[bytes, bytes]]]
    ) -> None:
        """Apply a stream's events in order: runs of puts and of deletes, batched."""
        puts: list[tuple[Document, VectorArray]] = []
        deletes: list[int] = []
        applied: list[Change] = []
        for _, fields in events:
            try:
                origin, change = change_from_event(namespace, fields)
                if origin == self._node:
                    self.stats.own_skipped += 1
                    continue
                if change.op == "put":
                    doc, vector = decode_record(change.entry_id, change.record, self._engine.dim)
                    if doc.namespace != namespace:
                        raise MalformedChange(f"entry {doc.entry_id} names another namespace")
                    if deletes:
                        await self._flush(puts, deletes)
                    puts.append((doc, vector))
                elif change.op == "del":
                    if puts:
                        await self._flush(puts, deletes)
                    deletes.append(change.entry_id)
                else:
                    report = unpack_feedback(change.record)
                    await self._flush(puts, deletes)
                    await self._engine.apply_remote_feedback(change.entry_id, *report)
                    self.stats.applied_feedback += 1
                applied.append(change)
            except MalformedChange as exc:
                self.stats.malformed += 1
                log.warning(
                    "skipped a malformed change on namespace %r's stream: %s", namespace, exc
                )
        await self._flush(puts, deletes)
        now = self._clock()
        for change in applied:
            self.stats.observe(max(0.0, now - change.at))

    async def _flush(self, puts: list[tuple[Document, VectorArray]], deletes: list[int]) -> None:
        if puts:
            await self._engine.apply_remote_puts(puts)
            self.stats.applied_puts += len(puts)
            puts.clear()
        if deletes:
            await self._engine.apply_remote_deletes(deletes)
            self.stats.applied_deletes += len(deletes)
            deletes.clear()

    # -- namespaces and bootstrap -----------------------------------------------------------

    async def _discover(self) -> None:
        members: Any = await self._client.smembers(self._keys.namespaces)
        for raw in members:
            ns = raw.decode("utf-8") if isinstance(raw, bytes) else str(raw)
            if (not self._allowed or ns in self._allowed) and ns not in self._offsets:
                await self._bootstrap_namespace(ns)

    async def _check_gaps(self) -> None:
        """Bootstrap again any namespace whose stream was trimmed past its offset:
        more events were trimmed (``entries-added`` - ``length``) than it had read."""
        for ns, offset in list(self._offsets.items()):
            try:
                info: dict[str, Any] = await self._client.xinfo_stream(self._keys.stream(ns))
            except redis.ResponseError:  # no stream (yet, or any more)
                continue
            trimmed = int(info.get("entries-added", 0)) - int(info.get("length", 0))
            if trimmed > offset.position:
                log.warning(
                    "namespace %r: its stream was trimmed past this daemon's offset "
                    "(%d events trimmed, %d read); bootstrapping it again",
                    ns,
                    trimmed,
                    offset.position,
                )
                await self._bootstrap_namespace(ns)

    async def _bootstrap_namespace(self, namespace: str) -> None:
        keys = self._keys
        # Where reading resumes: the stream's last id and count, in one reply.
        try:
            info: dict[str, Any] = await self._client.xinfo_stream(keys.stream(namespace))
            last = info["last-generated-id"]
            start = StreamOffset(
                last if isinstance(last, bytes) else str(last).encode(),
                int(info.get("entries-added", 0)),
            )
        except redis.ResponseError:  # no stream yet
            start = StreamOffset(_START, 0)
        now_ms = int(self._clock() * 1000)
        loaded = 0
        for bucket in range(BUCKETS):
            ids_key = keys.ids(namespace, bucket)
            offset = 0
            while True:
                ids: Any = await self._client.zrangebyscore(
                    ids_key, now_ms, "+inf", start=offset, num=self._batch
                )
                if not ids:
                    break
                offset += len(ids)
                entry_ids = [int(i) for i in ids]
                records: list[Any] = await self._client.mget(
                    [keys.record_in(namespace, bucket, i) for i in entry_ids]
                )
                items: list[tuple[Document, VectorArray]] = []
                for entry_id, record in zip(entry_ids, records, strict=True):
                    if record is None:  # expired or deleted since the ZRANGE
                        continue
                    try:
                        doc, vector = decode_record(entry_id, record, self._engine.dim)
                        if doc.namespace != namespace:
                            raise MalformedChange(f"entry {entry_id} names another namespace")
                    except MalformedChange as exc:
                        self.stats.malformed += 1
                        log.warning(
                            "skipped a malformed record of namespace %r: %s", namespace, exc
                        )
                        continue
                    items.append((doc, vector))
                loaded += await self._engine.apply_remote_puts(items)
                if len(ids) < self._batch:
                    break
        self._offsets[namespace] = start
        await run_blocking(
            self._executor, self._state.save_offsets, {namespace: self._offsets[namespace]}
        )
        self.stats.bootstraps += 1
        self.stats.bootstrap_entries += loaded
        log.info("namespace %r bootstrapped from the shared tier: %d entries", namespace, loaded)


def _events(reply: Any) -> list[tuple[bytes, dict[bytes, bytes]]]:
    """The (id, fields) list of one stream's ``XREAD`` reply (RESP2: [[name, events]])."""
    return list(reply[0][1]) if reply else []
