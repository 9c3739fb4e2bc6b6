"""What the semantic cache keeps in memory per entry and per category.

:class:`EntryTable` holds, for every live entry, the few fields a lookup filters on and
the quota counts (no document: those stay in LMDB), the expiry order, each category's
eviction policy and counters, each namespace's size and age order (for tenant
quotas), and the hit counts waiting to be written back. It does no I/O: the engine
commits to LMDB first and then tells the table.

Loop-only: the engine's event loop is the only thread that touches it.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from semcached.cachepolicy.categories import CategoryPolicy, CategoryTable
from semcached.cachepolicy.policies import eviction_factory
from semcached.index.docstore import EntryMeta
from semcached.index.eviction import EvictionPolicy
from semcached.index.expiry import ExpiryIndex
from semcached.service.semantic.entry_map import Entry, EntryMap
from semcached.service.semantic.restore import EntryGroup
from semcached.service.semantic.types import CategoryStats

__all__ = ["Entry", "EntryTable"]

IndexKey = tuple[str, str]  # (namespace, category)


@dataclass
class _NamespaceState:
    entries: int = 0
    bytes: int = 0
    # Live entries oldest first (restored ones join as the backlog feeds them).
    order: dict[int, None] = field(default_factory=dict)


@dataclass
class _CategoryState:
    policy: CategoryPolicy
    eviction: EvictionPolicy
    stats: CategoryStats = field(default_factory=CategoryStats)


class EntryTable:
    """Entries, expiry order, eviction order and counters; see the module docstring."""

    def __init__(
        self,
        categories: CategoryTable,
        eviction: Callable[[], EvictionPolicy] | None = None,
    ) -> None:
        """``eviction``: one policy factory for every category (default: the policy
        each category configures)."""
        self._categories = categories
        self._eviction = eviction
        self.entries = EntryMap()
        self._expiry = ExpiryIndex()
        self._state = {p.name: _CategoryState(p, self._new_eviction(p)) for p in categories}
        self._pending_hits: dict[int, tuple[int, float]] = {}
        self._namespaces: dict[str, _NamespaceState] = {}
        # Restored entries that the expiry index, the eviction policies and the
        # namespaces' age order do not know yet (see restore_group), oldest first, and
        # how far fill_backlog has got.
        self._backlog_parts: list[NDArray[np.void]] = []
        self._backlog: list[int] = []
        self._backlog_done = 0

    def __len__(self) -> int:
        return len(self.entries)

    def stats(self) -> dict[str, CategoryStats]:
        return {name: state.stats for name, state in self._state.items()}

    def eviction_of(self, category: str) -> EvictionPolicy:
        """The eviction policy of a category (for tests and introspection)."""
        return self._state[category].eviction

    def counters(self, category: str) -> CategoryStats:
        """The live counters of a configured category (the engine counts hits and misses)."""
        return self._state[category].stats

    # -- restore -------------------------------------------------------------------------

    def restore_group(self, group: EntryGroup) -> None:
        """Account the live entries of one group found in LMDB at open. O(1) Python
        work per group (the records stay numpy columns: :mod:`.entry_map`).

        Only the entry table and the quota counts are filled here. The expiry index
        (~8 us per add) and the eviction policy (a B-skiplist insert) are fed later by
        :meth:`fill_backlog`, oldest entry first, between requests: lookups check
        expiry on the entry itself, and a policy that has seen only the oldest
        entries still names the right victims.
        """
        state = self._state_of(group.category)
        rows = group.records
        self.entries.add_restored((group.namespace, group.category, group.partition), rows)
        nbytes = int(rows["size"].sum())
        state.stats.entries += len(rows)
        state.stats.bytes += nbytes
        space = self._namespace(group.namespace)
        space.entries += len(rows)
        space.bytes += nbytes
        self._backlog_parts.append(rows[["id", "created_at"]])

    def seal_restore(self) -> None:
        """The restore is complete: queue its entries for :meth:`fill_backlog`, oldest
        first (by creation time: ids are random and say nothing of age)."""
        parts, self._backlog_parts = self._backlog_parts, []
        if parts:
            rows = np.concatenate(parts)
            order = np.lexsort((rows["id"], rows["created_at"]))
            self._backlog = rows["id"][order].tolist()
        else:
            self._backlog = []
        self._backlog_done = 0

    @property
    def backlog(self) -> int:
        """Restored entries not yet fed to the expiry index and the eviction policies."""
        return len(self._backlog) - self._backlog_done

    def fill_backlog(self, limit: int | None = None) -> None:
        """Feed up to ``limit`` (default: all) backlog entries now. O(limit log n)."""
        start = self._backlog_done
        stop = len(self._backlog) if limit is None else min(len(self._backlog), start + limit)
        # A one-off read of each (restored entries stay in the columns), a bounded
        # number at a time: a million short-lived tuples alive at once would set the
        # cyclic collector walking everything, over and over.
        for lo in range(start, stop, 4096):
            chunk = self._backlog[lo : min(stop, lo + 4096)]
            for entry_id, entry in zip(chunk, self.entries.peek_many(chunk), strict=True):
                if entry is not None:  # not removed since open
                    self._expiry.add(entry_id, entry.expires_at)
                    self._state[entry.category].eviction.admit(entry_id, entry.size)
                    self._namespaces[entry.namespace].order[entry_id] = None
        self._backlog_done = stop
        if stop == len(self._backlog):
            self._backlog, self._backlog_done = [], 0

    # -- changes -------------------------------------------------------------------------

    def add(self, meta: EntryMeta) -> None:
        """Track a committed entry in every in-memory structure but its index. O(log n)."""
        state = self._state_of(meta.category)
        size = meta.size_bytes
        self.entries[meta.entry_id] = Entry(
            meta.namespace, meta.category, meta.partition, meta.created_at, meta.expires_at, size
        )
        space = self._namespace(meta.namespace)
        if self._backlog:  # restored entries are still being fed: join the queue (newest)
            self._backlog.append(meta.entry_id)
        else:
            self._expiry.add(meta.entry_id, meta.expires_at)
            state.eviction.admit(meta.entry_id, size)
            space.order[meta.entry_id] = None
        state.stats.entries += 1
        state.stats.bytes += size
        state.stats.inserts += 1
        space.entries += 1
        space.bytes += size

    def victims(self, category: str) -> list[int]:
        """The entries to evict, in the category policy's order, until it is within quota.

        The policy forgets them at once; the caller removes them (:meth:`remove`).
        """
        state = self._state[category]
        victims: list[int] = []
        entries, nbytes = state.stats.entries, state.stats.bytes
        while state.policy.over_quota(entries, nbytes):
            victim = state.eviction.choose_victim()
            if victim is None:
                if not self._backlog:
                    break
                self.fill_backlog()  # restored entries the policy has not seen yet
                continue
            state.eviction.forget(victim)
            entry = self.entries.get(victim)
            if entry is not None:
                victims.append(victim)
                entries -= 1
                nbytes -= entry.size
        return victims

    def victims_for_space(self, nbytes: int) -> list[int]:
        """Entries to evict so that about ``nbytes`` more fit in a store at its cap.

        The store is one space shared by every category, so each victim comes from
        the category that uses the largest share of its own byte quota (a category
        that holds little can still insert when another filled the store, and at the
        cap the categories' holdings settle in proportion to their quotas), in that
        category's policy order. The policies forget the victims at once; the caller
        removes them (:meth:`remove`) or gives them back (:meth:`readmit`). At least
        one victim whenever any entry is left. O(victims x categories).
        """
        held = {name: state.stats.bytes for name, state in self._state.items()}
        victims: list[int] = []
        freed = 0
        while freed < nbytes or not victims:
            candidates = [name for name, b in held.items() if b > 0]
            if not candidates:
                break
            name = max(candidates, key=lambda n: held[n] / self._state[n].policy.max_bytes)
            eviction = self._state[name].eviction
            victim = eviction.choose_victim()
            if victim is None:
                if self._backlog:
                    self.fill_backlog()  # restored entries the policy has not seen yet
                else:
                    held[name] = 0  # nothing tracked: take from the next category
                continue
            eviction.forget(victim)
            entry = self.entries.get(victim)
            if entry is not None:
                victims.append(victim)
                freed += entry.size
                held[name] -= entry.size
        return victims

    def readmit(self, entry_ids: Sequence[int]) -> None:
        """Give entries chosen as victims but not removed back to their policies."""
        for entry_id in entry_ids:
            entry = self.entries.get(entry_id)
            if entry is not None:
                self._state[entry.category].eviction.admit(entry_id, entry.size)

    def namespaces(self) -> list[str]:
        """Every namespace that holds (or held) entries since start."""
        return list(self._namespaces)

    def usage(self, namespaces: Collection[str]) -> tuple[int, int]:
        """Entries and bytes over ``namespaces``."""
        entries = nbytes = 0
        for name in namespaces:
            space = self._namespaces.get(name)
            if space is not None:
                entries += space.entries
                nbytes += space.bytes
        return entries, nbytes

    def oldest_victims(
        self, namespaces: Collection[str], max_entries: int, max_bytes: int
    ) -> list[int]:
        """The oldest entries over ``namespaces`` to remove until they hold at most
        ``max_entries`` and ``max_bytes`` (0: no bound). O(victims log namespaces)."""
        entries, nbytes = self.usage(namespaces)

        def over() -> bool:
            return bool(
                (max_entries and entries > max_entries) or (max_bytes and nbytes > max_bytes)
            )

        if not over():
            return []
        self.fill_backlog()  # every entry in its namespace's age order first
        heads: list[tuple[float, int, Iterator[int]]] = []
        for name in namespaces:
            space = self._namespaces.get(name)
            if space is not None:
                _push_next(heads, iter(space.order), self.entries)
        victims: list[int] = []
        while heads and over():
            _, entry_id, rest = heapq.heappop(heads)
            victims.append(entry_id)
            entries -= 1
            nbytes -= self.entries[entry_id].size
            _push_next(heads, rest, self.entries)
        return victims

    def remove(self, entry_ids: Sequence[int], reason: str) -> dict[IndexKey, list[int]]:
        """Forget entries already deleted from LMDB; returns the removed ids by index."""
        by_index: dict[IndexKey, list[int]] = {}
        for entry_id in entry_ids:
            entry = self.entries.pop(entry_id, None)
            if entry is None:
                continue
            self._expiry.discard(entry_id)
            self._pending_hits.pop(entry_id, None)
            state = self._state[entry.category]
            state.eviction.forget(entry_id)
            state.stats.entries -= 1
            state.stats.bytes -= entry.size
            space = self._namespaces[entry.namespace]
            space.entries -= 1
            space.bytes -= entry.size
            space.order.pop(entry_id, None)
            if reason == "evicted":
                state.stats.evictions += 1
            elif reason == "expired":
                state.stats.expirations += 1
            by_index.setdefault((entry.namespace, entry.category), []).append(entry_id)
        return by_index

    def expired(self, now: float, limit: int) -> list[int]:
        """Up to ``limit`` entries due at ``now``, taken out of the expiry order."""
        # The expiry index must know every due entry first. Feeding the whole backlog
        # at once stalls the loop (about 2 s per million entries), so only when an
        # entry might be due: after a restart, usually none is for a while.
        if self._backlog and self.entries.any_due(now):
            self.fill_backlog()
        return self._expiry.pop_expired(now, limit)

    def record_hit(self, entry_id: int, category: str, now: float) -> None:
        count, _ = self._pending_hits.get(entry_id, (0, 0.0))
        self._pending_hits[entry_id] = (count + 1, now)
        self._state[category].eviction.record_access(entry_id)

    def take_hits(self) -> list[tuple[int, int, float]]:
        """(entry id, hits, last hit time) counted since the last call, to write back."""
        updates = [(i, c, t) for i, (c, t) in self._pending_hits.items()]
        self._pending_hits = {}
        return updates

    # -- categories and namespaces -------------------------------------------------------

    def _namespace(self, name: str) -> _NamespaceState:
        space = self._namespaces.get(name)
        if space is None:
            space = self._namespaces[name] = _NamespaceState()
        return space

    def _state_of(self, category: str) -> _CategoryState:
        state = self._state.get(category)
        if state is None:
            # A category removed from the configuration since the entry was written:
            # keep serving it under the default policy rather than dropping data.
            default = self._categories.resolve(None)
            state = self._state[category] = _CategoryState(default, self._new_eviction(default))
        return state

    def _new_eviction(self, policy: CategoryPolicy) -> EvictionPolicy:
        if self._eviction is not None:
            return self._eviction()
        return eviction_factory(policy.eviction)()


def _push_next(
    heads: list[tuple[float, int, Iterator[int]]], ids: Iterator[int], entries: EntryMap
) -> None:
    """Put the next id of a namespace's age order (if any) on the heap, by creation time."""
    for entry_id in ids:
        heapq.heappush(heads, (entries[entry_id].created_at, entry_id, ids))
        return
