"""Named vector collections' definitions (the Qdrant-compatible routes' collections).

A collection is a name the caller created with a vector size and, optionally, one
keyword payload field whose value partitions its points. The points themselves are
semantic cache entries; only the definitions live here, in the ``collections``
database, so that a restart keeps them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lmdb
import msgspec

from semcached.index.lmdb_env import LmdbEnvironment

__all__ = ["Collection", "CollectionStore"]


class Collection(msgspec.Struct, frozen=True):
    """A collection's definition: vector size and distance, the payload field whose
    value is the points' partition ("": none), and whether any point was written."""

    dim: int
    distance: str
    created_at: float
    partition_field: str = ""
    has_points: bool = False


_DECODER = msgspec.json.Decoder(Collection)
_ENCODER = msgspec.json.Encoder()


class CollectionStore:
    """The ``collections`` database. Thread-safe; writes are durable when they return.

    Reads are one small LMDB read (microseconds), fine on the event loop; writes sync
    to disk, so callers on the loop run them on a worker.
    """

    def __init__(self, env: LmdbEnvironment) -> None:
        self._env = env
        self._db: Any = env.database(b"collections")

    def get(self, name: str) -> Collection | None:
        raw = self._env.read(lambda txn: txn.get(name.encode("utf-8"), db=self._db))
        return None if raw is None else _DECODER.decode(bytes(raw))

    def create(self, name: str, collection: Collection) -> bool:
        """Store ``collection`` unless ``name`` exists; whether it was stored."""
        key, value = name.encode("utf-8"), _ENCODER.encode(collection)

        def run(txn: lmdb.Transaction) -> bool:
            return bool(txn.put(key, value, db=self._db, overwrite=False))

        return self._env.write(run)

    def update(self, name: str, change: Callable[[Collection], Collection]) -> Collection | None:
        """Replace ``name``'s definition with ``change(current)`` in one transaction (so
        concurrent updates never undo each other); None if there is none. ``change``
        may raise to leave it as it is."""
        key = name.encode("utf-8")

        def run(txn: lmdb.Transaction) -> Collection | None:
            raw = txn.get(key, db=self._db)
            if raw is None:
                return None
            current = _DECODER.decode(bytes(raw))
            changed = change(current)
            if changed != current:
                txn.put(key, _ENCODER.encode(changed), db=self._db)
            return changed

        return self._env.write(run)

    def delete(self, name: str) -> bool:
        """Remove ``name``'s definition; whether there was one."""
        key = name.encode("utf-8")
        return bool(self._env.write(lambda txn: txn.delete(key, db=self._db), reclaim=True))
