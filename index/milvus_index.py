"""A vector index whose vectors live in Milvus: a collection per index, cosine HNSW.

(About 440 lines, over the house's 400: one wrapper around a Milvus collection whose
create, snapshot descriptor and reconnection belong together.)

For vectors past one sidecar's memory: they live in a Milvus server or cluster
(``uri = "http://host:19530"``), or, for tests and single machines, in milvus-lite
(a ``uri`` ending in ``.db``: :mod:`.milvus_connect`). docs/milvus.md says when to
choose it and what was measured.

- One collection per index, ``<prefix><16 random hex digits>`` unless named (the
  engine's ``index_factory(dim)`` names nothing), created at the first add or save
  rather than in the constructor, which the engine calls on its event loop. Fields
  ``id`` (INT64 primary key) and ``vec`` (FLOAT_VECTOR); metric COSINE; index
  ``index_type`` (HNSW: ``m``, ``ef_construction``, and ``ef_search`` raised to ``k``).
- uint64 ids are stored as INT64 with the same bits (``view``): all 64 bits survive.
- Vectors are L2-normalised here, so scores are cosine similarities (clamped).
- Re-adding an id is an ``upsert``; within one call the last occurrence wins.
- A snapshot is a descriptor (uri, collection, dim, count, index parameters) written
  with :mod:`.snapshot`; ``load`` reconnects (to the given uri, else the recorded
  one) and refuses (:class:`SnapshotError`) a missing collection or another dim.

The live ids are kept here too (about 70 bytes each, as HnswlibIndex keeps): Milvus's
``delete`` echoes the keys it was given, and row counts on a cluster lag behind
deletes until compaction. ``len``, ``in``, ``ids()`` and ``remove``'s count use that
set; ``load`` fills it with a query iterator (O(n): 3.8 s for 100k ids on milvus-lite
here). This index assumes it is the collection's only writer.

Consistency ``Strong``: a search sees every write acknowledged before it (milvus-lite
ignores the level and applies writes inside the call; a cluster waits for its query
nodes). milvus-lite 3.2 scans unflushed rows in Python at every search (0.55 s per
query at 20k unflushed 384-d rows, measured here), hence a flush every ``flush_rows``
changes; a Milvus server seals segments itself (``flush_rows = 0``).

Thread-safety: one :class:`SharedExclusiveLock`; searches and ``ids()`` share it;
add, remove, flush and the collection's creation take it exclusively (milvus-lite
needs writes to one collection serialised; the id set changes with the collection).
"""

from __future__ import annotations

import contextlib
import secrets
import threading
from pathlib import Path
from typing import Any, Self

import numpy as np
from numpy.typing import ArrayLike, NDArray

from semcached.errors import SemcachedError
from semcached.index.milvus_connect import (
    MilvusUnavailableError,
    connect,
    import_pymilvus,
    is_local_uri,
    stop_local_server,
)
from semcached.index.rwlock import SharedExclusiveLock
from semcached.index.snapshot import SnapshotError, read_snapshot, write_snapshot
from semcached.index.vector_index import IdArray, SearchResult, as_ids, dedupe_last, normalise

__all__ = [
    "COLLECTION_PREFIX",
    "SNAPSHOT_KIND",
    "MilvusIndex",
    "MilvusIndexError",
    "MilvusUnavailableError",
    "connect",
    "import_pymilvus",
    "is_local_uri",
    "stop_local_server",
]

SNAPSHOT_KIND = "milvus-collection"
COLLECTION_PREFIX = "semcached_"
_ID, _VEC = "id", "vec"
_BATCH_ROWS = 2048  # rows per upsert call: 3 MB of 384-d float32, far below gRPC's limits
_ITERATOR_BATCH = 16384  # ids per query-iterator page (Milvus caps a page at 16384)


class MilvusIndexError(SemcachedError):
    """A Milvus call failed while the index was in use (the server went away, ...)."""


def _empty() -> SearchResult:
    return np.empty(0, dtype=np.uint64), np.empty(0, dtype=np.float32)


def _as_int64(ids: IdArray) -> list[int]:
    return ids.astype(np.uint64, copy=False).view(np.int64).tolist()  # type: ignore[no-any-return]


class MilvusIndex:
    """Cosine k-NN over a Milvus collection (implements ``VectorIndex``).

    Costs are Milvus's plus one round trip per call: search is O(ef * M * log n) per
    segment on the server (milvus-lite also does O(n) Python work per search, see the
    module notes); add and remove are O(batch) plus, every ``flush_rows`` rows, a
    flush; ``len`` and ``in`` are O(1) locally; ``ids()`` O(n) locally.
    """

    def __init__(
        self,
        dim: int,
        *,
        uri: str,
        token: str = "",
        collection: str | None = None,
        index_type: str = "HNSW",
        m: int = 16,
        ef_construction: int = 200,
        ef_search: int = 64,
        flush_rows: int = 1024,
        timeout_s: float = 10.0,
        prefix: str = COLLECTION_PREFIX,
        client: Any = None,
    ) -> None:
        if dim < 2:
            raise ValueError("dim must be at least 2 (Milvus's smallest FLOAT_VECTOR)")
        if m < 2 or ef_construction < 1 or ef_search < 1 or flush_rows < 0:
            raise ValueError("m >= 2, ef_construction >= 1, ef_search >= 1, flush_rows >= 0")
        self._setup(
            dim,
            uri=uri,
            token=token,
            collection=collection or f"{prefix}{secrets.token_hex(8)}",
            index_type=index_type,
            m=m,
            ef_construction=ef_construction,
            ef_search=ef_search,
            flush_rows=flush_rows,
            timeout_s=timeout_s,
            client=client,
        )

    def _setup(self, dim: int, *, client: Any, **params: Any) -> None:
        self._dim = dim
        self._uri: str = params["uri"]
        self._token: str = params["token"]
        self._collection: str = params["collection"]
        self._index_type: str = params["index_type"]
        self._m: int = params["m"]
        self._ef_construction: int = params["ef_construction"]
        self._ef_search: int = params["ef_search"]
        self._flush_rows: int = params["flush_rows"]
        self._timeout_s: float = params["timeout_s"]
        self._owns_client = client is None
        self._client = client or connect(self._uri, token=self._token, timeout_s=self._timeout_s)
        self._live: set[int] = set()
        self._unflushed = 0
        self._created = False  # the collection exists in Milvus (see _ensure_collection)
        self._lock = SharedExclusiveLock()
        self._save_lock = threading.Lock()

    def _ensure_collection(self) -> None:
        """Create the collection unless done. Exclusive lock.

        Not in the constructor: the engine makes indexes on its event loop, and a create
        (schema, index, load) is several blocking round trips; the first add and the
        first save run on the executor.
        """
        if not self._created:
            self._call(self._create)
            self._created = True

    def _create(self) -> None:
        pymilvus = import_pymilvus()
        client = self._client
        if client.has_collection(self._collection):
            raise MilvusIndexError(f"Milvus collection {self._collection!r} exists already")
        schema = client.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field(_ID, pymilvus.DataType.INT64, is_primary=True)
        schema.add_field(_VEC, pymilvus.DataType.FLOAT_VECTOR, dim=self._dim)
        index_params = client.prepare_index_params()
        build = (
            {"M": self._m, "efConstruction": self._ef_construction}
            if self._index_type.startswith("HNSW")
            else {}
        )
        index_params.add_index(
            field_name=_VEC, index_type=self._index_type, metric_type="COSINE", params=build
        )
        client.create_collection(self._collection, schema=schema, consistency_level="Strong")
        # Not through create_collection's index_params: pymilvus then waits for the build
        # by polling every 0.5 s after an AllocTimestamp call that milvus-lite does not
        # implement (an ERROR with a traceback in the log per collection, seen here).
        # Milvus builds indexes asynchronously anyway; a loaded collection can be searched.
        client.create_index(self._collection, index_params, sync=False)
        client.load_collection(self._collection)

    def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Run a Milvus call, turning pymilvus's exceptions into :class:`MilvusIndexError`."""
        try:
            return fn(*args, **kwargs)
        except SemcachedError:
            raise
        except Exception as exc:
            raise MilvusIndexError(
                f"Milvus collection {self._collection!r} at {self._uri}: {exc}"
            ) from exc

    # -- properties -----------------------------------------------------------------

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def uri(self) -> str:
        return self._uri

    @property
    def collection(self) -> str:
        return self._collection

    @property
    def ef_search(self) -> int:
        return self._ef_search

    def __len__(self) -> int:
        return len(self._live)

    def __contains__(self, entry_id: object) -> bool:
        return isinstance(entry_id, int | np.integer) and int(entry_id) in self._live

    def ids(self) -> IdArray:
        with self._lock.shared():
            return np.fromiter(self._live, dtype=np.uint64, count=len(self._live))

    def remote_ids(self) -> IdArray:
        """The ids the collection holds, enumerated on the server. O(n)."""
        if not self._created:
            return np.empty(0, dtype=np.uint64)
        iterator = self._call(
            self._client.query_iterator,
            self._collection,
            batch_size=_ITERATOR_BATCH,
            filter="",
            output_fields=[_ID],
        )
        found: list[int] = []
        try:
            while page := self._call(iterator.next):
                found.extend(row[_ID] for row in page)
        finally:
            iterator.close()
        return np.asarray(found, dtype=np.int64).view(np.uint64)

    # -- mutation -------------------------------------------------------------------

    def add(self, ids: ArrayLike, vectors: ArrayLike) -> None:
        labels = as_ids(ids)
        unit = normalise(vectors, self._dim)
        if unit.shape[0] != labels.size:
            raise ValueError(f"{labels.size} ids for {unit.shape[0]} vectors")
        if labels.size == 0:
            return
        labels, unit = dedupe_last(labels, unit)
        keys = _as_int64(labels)
        with self._lock.exclusive():
            self._ensure_collection()
            for start in range(0, len(keys), _BATCH_ROWS):
                rows = [
                    {_ID: key, _VEC: vector}
                    for key, vector in zip(
                        keys[start : start + _BATCH_ROWS],
                        unit[start : start + _BATCH_ROWS],
                        strict=True,
                    )
                ]
                self._call(self._client.upsert, self._collection, rows)
                # Each call is durable once answered: record it even if a later one fails.
                self._live.update(labels[start : start + _BATCH_ROWS].tolist())
            self._unflushed += len(keys)
            self._maybe_flush()

    def remove(self, ids: ArrayLike) -> int:
        labels = as_ids(ids)
        with self._lock.exclusive():
            present = [label for label in set(labels.tolist()) if label in self._live]
            if not present:
                return 0
            keys = _as_int64(np.asarray(present, dtype=np.uint64))
            self._call(self._client.delete, self._collection, ids=keys)
            self._live.difference_update(present)
            self._unflushed += len(keys)  # milvus-lite scans its deletes in Python too
            self._maybe_flush()
            return len(present)

    def _maybe_flush(self) -> None:
        """Flush once ``flush_rows`` changes are unflushed. Exclusive lock."""
        if self._flush_rows and self._unflushed >= self._flush_rows:
            self._call(self._client.flush, self._collection)
            self._unflushed = 0

    def flush(self) -> None:
        """Seal what was written into segments (milvus-lite: out of its memtable)."""
        with self._lock.exclusive():
            if self._created:
                self._call(self._client.flush, self._collection)
            self._unflushed = 0

    # -- search ---------------------------------------------------------------------

    def search(self, queries: ArrayLike, k: int) -> list[SearchResult]:
        if k < 1:
            raise ValueError("k must be at least 1")
        unit = normalise(queries, self._dim, what="query")
        if unit.shape[0] == 0:
            return []
        with self._lock.shared():
            k = min(k, len(self._live))
            if k == 0:
                return [_empty() for _ in range(unit.shape[0])]
            params: dict[str, Any] = {"metric_type": "COSINE"}
            if self._index_type.startswith("HNSW"):
                params["params"] = {"ef": max(self._ef_search, k)}
            hits = self._call(
                self._client.search,
                self._collection,
                data=list(unit),
                limit=k,
                output_fields=[_ID],  # else the vectors come back too
                search_params=params,
            )
        results: list[SearchResult] = []
        for row in hits:
            keys = np.fromiter((hit[_ID] for hit in row), dtype=np.int64, count=len(row))
            scores = np.fromiter((hit["distance"] for hit in row), dtype=np.float32, count=len(row))
            order = np.argsort(-scores, kind="stable")  # Milvus sorts; do not rely on it
            found: IdArray = keys[order].view(np.uint64)
            similarity: NDArray[np.float32] = np.clip(scores[order], -1.0, 1.0)
            results.append((found, similarity))
        return results

    # -- snapshots ------------------------------------------------------------------

    def save(self, path: Path) -> None:
        """Write the descriptor atomically (the vectors are in Milvus already). O(1)."""
        with self._save_lock:
            if not self._created:  # the descriptor must name a collection that exists
                with self._lock.exclusive():
                    self._ensure_collection()
            self._write_descriptor(path)

    def _write_descriptor(self, path: Path) -> None:
        with self._lock.shared():
            meta = {
                "uri": self._uri,
                "collection": self._collection,
                "dim": self._dim,
                "count": len(self._live),
                "index_type": self._index_type,
                "m": self._m,
                "ef_construction": self._ef_construction,
            }
        write_snapshot(path, kind=SNAPSHOT_KIND, meta=meta, files={})

    @classmethod
    def load(
        cls,
        path: Path,
        *,
        dim: int,
        uri: str | None = None,
        token: str = "",
        ef_search: int = 64,
        flush_rows: int = 1024,
        timeout_s: float = 10.0,
        client: Any = None,
    ) -> Self:
        """Reconnect to the collection a descriptor names, at ``uri``.

        ``uri``: where Milvus is now (the daemon passes its configured one); None: the
        uri recorded in the descriptor.

        :class:`SnapshotError` when the descriptor is missing or corrupt, or the
        collection is missing or of another dim; :class:`MilvusUnavailableError`
        when Milvus cannot be reached. Enumerates the collection's ids: O(n).
        """
        meta, _ = read_snapshot(path, kind=SNAPSHOT_KIND)
        try:
            collection, saved_dim = str(meta["collection"]), int(meta["dim"])
            uri = str(meta["uri"]) if uri is None else uri
            index_type, m, ef_c = (
                str(meta["index_type"]),
                int(meta["m"]),
                int(meta["ef_construction"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise SnapshotError(f"snapshot {path} has malformed metadata: {exc}") from exc
        if saved_dim != dim:
            raise SnapshotError(f"snapshot {path} holds vectors of dim {saved_dim}, not {dim}")
        loaded = cls.__new__(cls)
        loaded._setup(
            dim,
            uri=uri,
            token=token,
            collection=collection,
            index_type=index_type,
            m=m,
            ef_construction=ef_c,
            ef_search=ef_search,
            flush_rows=flush_rows,
            timeout_s=timeout_s,
            client=client,
        )
        if not loaded._call(loaded._client.has_collection, collection):
            raise SnapshotError(f"snapshot {path}: Milvus at {uri} has no collection {collection}")
        described = loaded._call(loaded._client.describe_collection, collection)
        fields = {f["name"]: f for f in described.get("fields", [])}
        held = fields.get(_VEC, {}).get("params", {}).get("dim")
        if _ID not in fields or held is None or int(held) != dim:
            raise SnapshotError(
                f"snapshot {path}: Milvus collection {collection} holds {_VEC} of dim "
                f"{held}, not {dim}"
            )
        loaded._call(loaded._client.load_collection, collection)  # reopened ones are released
        loaded._created = True
        loaded._live = set(loaded.remote_ids().tolist())
        return loaded

    def pending_index_rows(self) -> int:
        """Rows Milvus has not indexed yet (searched by brute force meanwhile)."""
        if not self._created:
            return 0
        described = self._call(self._client.describe_index, self._collection, _VEC)
        return int((described or {}).get("pending_index_rows", 0))

    def drop(self) -> None:
        """Delete the collection and its vectors from Milvus (this index is unusable after)."""
        with self._lock.exclusive():
            if self._created:
                self._call(self._client.drop_collection, self._collection)
            self._live.clear()

    def close(self) -> None:
        """Close this index's own client, if it made one (the collection stays)."""
        if self._owns_client:
            with contextlib.suppress(Exception):
                self._client.close()
