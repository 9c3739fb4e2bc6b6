"""The semantic cache's durable document store on LMDB.

(About 600 lines, over the house's 400: the record formats and the transactions
that keep its LMDB databases consistent must be read together.)

The named databases in one :class:`LmdbEnvironment`:

- ``sem.docs``: entry id (8 bytes, big-endian, so key order is id order) -> document;
- ``sem.vectors``: entry id -> the vector as little-endian float32 bytes;
- ``sem.exact``: exact key (16 bytes, :func:`exact_key`) -> entry id;
- ``sem.meta``: entry id -> a fixed 40-byte record of what the engine keeps in memory
  per entry (id, created_at, expires_at, size in bytes, group), so a restart reads
  every entry's bookkeeping as one array (:meth:`DocumentStore.scan_columns`) instead
  of decoding every document;
- ``sem.groups``: group (xxh3-64 of namespace, category and partition) -> those three
  strings. A store holds few distinct groups; they are never deleted;
- ``sem.tokens``: entry id -> the prompt's packed token embeddings
  (:mod:`~semcached.cachepolicy.token_codec`), for entries that have them (the hit
  verifier reads them); a store written before they existed simply has none.

An insert writes all of them in one durable transaction; concurrent ``put_many`` calls
are merged by a :class:`GroupCommitter` into one transaction and one fsync.

Deletes may use the environment's reserve (:attr:`LmdbEnvironment.reserve_bytes`), so
that eviction and purge work when the map is at its cap. The reserve holds only if no
one transaction frees or allocates much of it, so every batch here is sized by it:
insert groups (each item may copy a page of ``sem.exact``), delete batches (each entry
copies up to five pages) and hit-count rewrites (each frees its document's old pages).

Document encoding (version 1), little-endian::

    u8 version | u8 response format | u32 vector_dim
    f64 created_at | f64 expires_at | f64 last_hit_at | u64 hit_count
    u16 len(namespace) | u16 len(category) | u16 len(partition) | u16 len(model)
    u32 len(prompt) | the five UTF-8 strings | response bytes (the rest)

A fixed header with raw strings is smaller and several times faster to decode than
any general serialisation, and ``update_hits`` patches two fields in place.
"""

from __future__ import annotations

import itertools
import struct
import unicodedata
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import lmdb
import numpy as np
import xxhash
from numpy.typing import NDArray

from semcached.index.group_commit import GroupCommitter
from semcached.index.lmdb_env import LmdbEnvironment, StoreFullError
from semcached.index.shared.outbox import Outbox
from semcached.index.shared.records import Change, MalformedChange, pack_record, unpack_record

__all__ = [
    "ENTRY_OVERHEAD_BYTES",
    "META_DTYPE",
    "Document",
    "DocumentStore",
    "EntryMeta",
    "decode_record",
    "exact_key",
    "normalise_prompt",
]

FORMAT_VERSION = 1

ENTRY_OVERHEAD_BYTES = 256
"""Bytes counted per entry beyond its strings, payload and vector: the 50-byte document
header, three LMDB keys with their node headers (~80 bytes), and hnswlib's per-element
label and level-0 links at M=16 (~140 bytes), rounded. Approximate on purpose: quotas
need a stable, monotone measure, not an allocator audit."""

_HEADER = struct.Struct("<BBIdddQHHHHI")
_HITS = struct.Struct("<dQ")  # last_hit_at, hit_count: contiguous in _HEADER
_HITS_OFFSET = 22
_FORMATS: tuple[Literal["json", "bytes"], ...] = ("json", "bytes")
_MAX_SHORT = 0xFFFF
_MAX_ID = (1 << 64) - 1

META_DTYPE = np.dtype(
    [("id", "<u8"), ("created_at", "<f8"), ("expires_at", "<f8"), ("size", "<u8"), ("group", "<u8")]
)
"""One ``sem.meta`` record, as :meth:`DocumentStore.scan_columns` returns them."""
_META = struct.Struct("<QddQQ")
_GROUP_LENGTHS = struct.Struct("<HHH")
_GROUP_DOMAIN = b"semcached.group.v1"


@dataclass(frozen=True, slots=True)
class Document:
    """One cached response and what it was an answer to.

    ``vector_dim`` is the dimension of the entry's vector, so that :attr:`size_bytes`
    can count it; 0 leaves the vector out of the count. The store keeps it as given.
    """

    entry_id: int
    namespace: str
    category: str
    partition: str
    model: str
    prompt: str
    response: bytes
    response_format: Literal["json", "bytes"]
    created_at: float
    expires_at: float
    hit_count: int
    last_hit_at: float
    vector_dim: int = 0
    tokens: bytes = b""
    """The prompt's packed token embeddings (empty: none), stored in ``sem.tokens``."""

    @property
    def size_bytes(self) -> int:
        """What quotas count: the encoded document (strings, prompt, response, header),
        the vector's float32 bytes, the packed tokens and :data:`ENTRY_OVERHEAD_BYTES`.
        O(len(prompt))."""
        strings = (self.namespace, self.category, self.partition, self.model, self.prompt)
        return (
            _HEADER.size
            + sum(len(s.encode("utf-8")) for s in strings)
            + len(self.response)
            + 4 * self.vector_dim
            + len(self.tokens)
            + ENTRY_OVERHEAD_BYTES
        )


class EntryMeta(NamedTuple):
    """What the engine keeps of a document in memory, without its prompt or response.

    ``size_bytes`` equals :attr:`Document.size_bytes` of the same entry.
    """

    entry_id: int
    namespace: str
    category: str
    partition: str
    created_at: float
    expires_at: float
    size_bytes: int


def _id_key(entry_id: int) -> bytes:
    return entry_id.to_bytes(8, "big")


def _encode(doc: Document) -> bytes:
    if not 1 <= doc.entry_id <= _MAX_ID:
        raise ValueError(f"entry_id must be in [1, 2**64), got {doc.entry_id}")
    if doc.response_format not in _FORMATS:
        raise ValueError(f"response_format must be 'json' or 'bytes', not {doc.response_format!r}")
    if doc.hit_count < 0 or doc.vector_dim < 0:
        raise ValueError("hit_count and vector_dim must not be negative")
    short = [s.encode("utf-8") for s in (doc.namespace, doc.category, doc.partition, doc.model)]
    if any(len(s) > _MAX_SHORT for s in short):
        raise ValueError("namespace, category, partition and model must be under 64 KiB")
    prompt = doc.prompt.encode("utf-8")
    header = _HEADER.pack(
        FORMAT_VERSION,
        _FORMATS.index(doc.response_format),
        doc.vector_dim,
        doc.created_at,
        doc.expires_at,
        doc.last_hit_at,
        doc.hit_count,
        *(len(s) for s in short),
        len(prompt),
    )
    return b"".join((header, *short, prompt, bytes(doc.response)))


def _bytes(value: bytes | memoryview) -> bytes:
    # Our transactions copy values out (buffers=False); lmdb's types allow views.
    return value if isinstance(value, bytes) else bytes(value)


def _fields(value: bytes | memoryview) -> tuple[tuple[Any, ...], list[str], int]:
    """Header fields, the five strings, and the offset where the response starts."""
    value = _bytes(value)
    if len(value) < _HEADER.size or value[0] != FORMAT_VERSION:
        raise ValueError(f"unreadable document (version byte {value[:1]!r})")
    header = _HEADER.unpack_from(value)
    offset = _HEADER.size
    strings: list[str] = []
    for length in header[7:12]:
        strings.append(value[offset : offset + length].decode("utf-8"))
        offset += length
    if offset > len(value):
        raise ValueError(f"truncated document ({len(value)} bytes, strings end at {offset})")
    return header, strings, offset


def _decode(
    entry_id: int, value: bytes | memoryview, tokens: bytes | memoryview | None = None
) -> Document:
    value = _bytes(value)
    header, (namespace, category, partition, model, prompt), offset = _fields(value)
    return Document(
        entry_id=entry_id,
        namespace=namespace,
        category=category,
        partition=partition,
        model=model,
        prompt=prompt,
        response=value[offset:],
        response_format=_FORMATS[header[1]],
        created_at=header[3],
        expires_at=header[4],
        hit_count=header[6],
        last_hit_at=header[5],
        vector_dim=header[2],
        tokens=b"" if tokens is None else _bytes(tokens),
    )


def normalise_prompt(prompt: str) -> str:
    """The prompt as the exact tier compares it.

    Unicode NFKC (so full-width, ligature and compatibility forms match their plain
    forms), leading and trailing whitespace stripped, and each internal run of
    whitespace collapsed to one space. Case is kept: "US" and "us", ``List`` and
    ``list`` differ in meaning, above all in code, and an exact-tier hit is served
    without any similarity threshold, so it must not merge prompts that could differ.
    Near-duplicates that differ in case are the semantic tier's job.
    """
    return " ".join(unicodedata.normalize("NFKC", prompt).split())


_EXACT_DOMAIN = b"semcached.exact.v1\x00"


def exact_key(namespace: str, partition: str, prompt: str) -> bytes:
    """16-byte xxh3-128 of (namespace, partition, normalised prompt).

    Each part is length-prefixed, so no two different triples encode alike
    ("a" + "bc" vs "ab" + "c"). Stable across processes (unlike ``hash()``).
    """
    hasher = xxhash.xxh3_128(_EXACT_DOMAIN)
    for part in (namespace, partition, normalise_prompt(prompt)):
        data = part.encode("utf-8")
        hasher.update(len(data).to_bytes(8, "little"))
        hasher.update(data)
    return hasher.digest()


Vector = NDArray[np.float32]


def _group(namespace: bytes, category: bytes, partition: bytes) -> tuple[bytes, bytes]:
    """(``sem.groups`` key, value) of one (namespace, category, partition)."""
    hasher = xxhash.xxh3_64(_GROUP_DOMAIN)
    for part in (namespace, category, partition):
        hasher.update(len(part).to_bytes(8, "little"))
        hasher.update(part)
    value = _GROUP_LENGTHS.pack(len(namespace), len(category), len(partition))
    return hasher.digest(), value + namespace + category + partition


def _decode_group(value: bytes) -> tuple[str, str, str]:
    a, b, c = _GROUP_LENGTHS.unpack_from(value)
    o = _GROUP_LENGTHS.size
    raw = (value[o : o + a], value[o + a : o + a + b], value[o + a + b : o + a + b + c])
    ns, cat, part = (x.decode("utf-8") for x in raw)
    return ns, cat, part


def _meta_of(entry_id: int, doc: bytes, token_bytes: int) -> tuple[bytes, bytes, bytes]:
    """(meta record, group key, group value) of an encoded document with
    ``token_bytes`` of packed tokens."""
    header = _HEADER.unpack_from(doc)
    o = _HEADER.size
    n_ns, n_cat, n_part = header[7:10]
    namespace = doc[o : o + n_ns]
    category = doc[o + n_ns : o + n_ns + n_cat]
    partition = doc[o + n_ns + n_cat : o + n_ns + n_cat + n_part]
    gkey, gvalue = _group(namespace, category, partition)
    size = len(doc) + 4 * header[2] + token_bytes + ENTRY_OVERHEAD_BYTES  # = .size_bytes
    record = _META.pack(entry_id, header[3], header[4], size, int.from_bytes(gkey, "little"))
    return record, gkey, gvalue


def decode_record(entry_id: int, record: bytes, dim: int) -> tuple[Document, Vector]:
    """The document and vector of an entry record another daemon shipped
    (:func:`~semcached.index.shared.records.pack_record`); :class:`MalformedChange`
    for anything this store would not have written itself: a torn record, a document
    that does not decode, a vector of another dimension, zero or not finite."""
    document, vector, tokens = unpack_record(record)
    try:
        doc = _decode(entry_id, document, tokens)
    except (ValueError, struct.error, UnicodeDecodeError, IndexError) as exc:
        raise MalformedChange(f"entry {entry_id}: {exc}") from None
    array = _vector(vector)
    if array.size != dim or not np.isfinite(array).all() or not array.any():
        raise MalformedChange(f"entry {entry_id}: unusable vector of {array.size} values")
    return doc, array


@dataclass(frozen=True, slots=True)
class _Put:
    key: bytes
    doc: bytes
    vector: bytes
    exact: bytes
    meta: bytes
    group_key: bytes
    group: bytes
    tokens: bytes
    change: Change | None  # what to ship, for a put made here (None: not shipped)


class DocumentStore:
    """Documents, vectors and the exact map of the semantic cache, on LMDB.

    Every method is safe to call from several threads. Reads run in their own read
    transaction (a consistent snapshot); writes are one durable transaction each.
    Costs: point operations O(log n) per id; ``scan``, ``purge`` O(n).
    """

    def __init__(
        self,
        env: LmdbEnvironment,
        *,
        group_commit: bool = True,
        max_batch_items: int = 256,
        max_batch_bytes: int = 16 << 20,
        outbox: Outbox | None = None,
    ) -> None:
        """``outbox``: where shipped changes go, in the same transaction (None: no
        shared tier; ``ship`` is then ignored)."""
        self._env = env
        self.outbox = outbox
        self._docs = env.database(b"sem.docs")
        self._vectors = env.database(b"sem.vectors")
        self._exact = env.database(b"sem.exact")
        self._meta = env.database(b"sem.meta")
        self._groups = env.database(b"sem.groups")
        self._tokens = env.database(b"sem.tokens")
        reserve_pages = env.reserve_bytes // env.page_bytes
        self._delete_batch = max(1, min(1024, reserve_pages // 8))
        self._page_bytes = env.page_bytes
        self._hits_batch_pages = max(1, reserve_pages // 8)
        max_items = max(1, min(max_batch_items, reserve_pages // 4))
        self._committer: GroupCommitter[_Put] | None = (
            GroupCommitter(self._commit, max_items=max_items, max_bytes=max_batch_bytes)
            if group_commit
            else None
        )

    @property
    def capacity_bytes(self) -> int:
        """The most the store can hold (:meth:`LmdbEnvironment.capacity_bytes`)."""
        return self._env.capacity_bytes()

    @property
    def committer(self) -> GroupCommitter[_Put] | None:
        """The group committer (for its statistics), or None when group commit is off."""
        return self._committer

    # -- writes ---------------------------------------------------------------------

    def put_many(self, items: Sequence[tuple[Document, Vector]], *, ship: bool = False) -> None:
        """Store documents with their vectors and exact-map entries, durably.

        Returns once committed; with ``ship`` (and an outbox) each put is also
        appended to the outbox in the same transaction. An existing id is overwritten
        (and its old exact mapping dropped if the prompt changed); a prompt stored
        again under a new id moves its exact mapping to the new id. Raises ``ValueError`` for a bad
        document or vector (nothing is written) and :class:`StoreFullError` at the
        map cap (nothing of the transaction is written).
        """
        ship = ship and self.outbox is not None
        puts = [self._prepare(doc, vector, ship) for doc, vector in items]
        if not puts:
            return
        if self._committer is None:
            self._commit(puts)
        else:
            size = sum(len(p.doc) + len(p.vector) + len(p.tokens) for p in puts)
            self._committer.submit(puts, size)

    @staticmethod
    def _prepare(doc: Document, vector: Vector, ship: bool) -> _Put:
        array = np.asarray(vector, dtype=np.float32)
        if array.ndim != 1 or array.size == 0:
            raise ValueError(f"vector of entry {doc.entry_id} must be 1-D, got {array.shape}")
        if doc.vector_dim and array.size != doc.vector_dim:
            raise ValueError(
                f"vector of entry {doc.entry_id} has {array.size} values, "
                f"document says {doc.vector_dim}"
            )
        if not np.isfinite(array).all() or not array.any():
            raise ValueError(f"vector of entry {doc.entry_id} is zero or not finite")
        encoded = _encode(doc)
        meta, group_key, group = _meta_of(doc.entry_id, encoded, len(doc.tokens))
        vector_bytes = array.astype("<f4").tobytes()
        change = None
        if ship:
            record = pack_record(encoded, vector_bytes, doc.tokens)
            change = Change(
                "put", doc.namespace, doc.entry_id, doc.created_at, doc.expires_at, record
            )
        return _Put(
            key=_id_key(doc.entry_id),
            doc=encoded,
            vector=vector_bytes,
            exact=exact_key(doc.namespace, doc.partition, doc.prompt),
            meta=meta,
            group_key=group_key,
            group=group,
            tokens=doc.tokens,
            change=change,
        )

    def _commit(self, puts: list[_Put]) -> None:
        self._env.write(lambda txn: self._apply(txn, puts))

    def _apply(self, txn: lmdb.Transaction, puts: list[_Put]) -> None:
        for put in puts:
            old = txn.replace(put.key, put.doc, db=self._docs)
            if old is not None:
                _, strings, _ = _fields(old)
                stale = exact_key(strings[0], strings[2], strings[4])
                if stale != put.exact:
                    self._drop_exact(txn, stale, put.key)
            txn.put(put.key, put.vector, db=self._vectors)
            txn.put(put.exact, put.key, db=self._exact)
            txn.put(put.key, put.meta, db=self._meta)
            txn.put(put.group_key, put.group, db=self._groups, overwrite=False)
            if put.tokens:
                txn.put(put.key, put.tokens, db=self._tokens)
            elif old is not None:
                txn.delete(put.key, db=self._tokens)
        if self.outbox is not None:
            self.outbox.append(txn, [p.change for p in puts if p.change is not None])

    def _drop_exact(self, txn: lmdb.Transaction, exact: bytes, key: bytes) -> None:
        """Delete the exact mapping only if it still points at ``key``."""
        if txn.get(exact, db=self._exact) == key:
            txn.delete(exact, db=self._exact)

    def delete_many(
        self, ids: Iterable[int], *, ship: bool = False, at: float = 0.0
    ) -> list[Document]:
        """Delete entries (document, vector, exact mapping if still theirs), durably.

        Returns the deleted documents; unknown ids are skipped. With ``ship`` (and an
        outbox) each deletion is appended to the outbox in its transaction, stamped
        ``at``. Works at the map cap:
        deletes use the reserve, in batches small enough for it (a batch that still
        finds no room is split, down to single entries, before :class:`StoreFullError`).
        """
        keys = [_id_key(i) for i in dict.fromkeys(ids)]
        deleted: list[Document] = []
        outbox = self.outbox if ship else None
        for start in range(0, len(keys), self._delete_batch):
            batch = keys[start : start + self._delete_batch]
            deleted.extend(self._delete_keys(batch, outbox, at))
        return deleted

    def _delete_keys(self, keys: list[bytes], outbox: Outbox | None, at: float) -> list[Document]:
        def run(txn: lmdb.Transaction) -> list[Document]:
            deleted: list[Document] = []
            for key in keys:
                value = txn.pop(key, db=self._docs)
                if value is None:
                    continue
                doc = _decode(int.from_bytes(key, "big"), value, txn.pop(key, db=self._tokens))
                txn.delete(key, db=self._vectors)
                txn.delete(key, db=self._meta)
                self._drop_exact(txn, exact_key(doc.namespace, doc.partition, doc.prompt), key)
                deleted.append(doc)
            if outbox is not None:
                outbox.append(txn, [Change("del", d.namespace, d.entry_id, at) for d in deleted])
            return deleted

        try:
            return self._env.write(run, reclaim=True)
        except StoreFullError:
            if len(keys) == 1:
                raise
            half = len(keys) // 2
            first = self._delete_keys(keys[:half], outbox, at)
            return first + self._delete_keys(keys[half:], outbox, at)

    def update_hits(self, updates: Sequence[tuple[int, int, float]]) -> int:
        """Add hits and advance the last-hit time, for (id, added, at) triples.

        The last-hit time never moves backwards. Ids that are gone are skipped.
        Returns the number of documents updated. Rewriting a document copies its pages
        (and frees the old ones), so one transaction rewrites at most an eighth of the
        reserve's pages.
        """
        done = 0
        updated = 0

        def run(txn: lmdb.Transaction) -> tuple[int, int]:
            count = pages = 0
            position = done
            while position < len(updates) and pages < self._hits_batch_pages:
                entry_id, added, at = updates[position]
                position += 1
                key = _id_key(entry_id)
                value = txn.get(key, db=self._docs)
                if value is None:
                    continue
                patched = bytearray(value)
                last, hits = _HITS.unpack_from(patched, _HITS_OFFSET)
                _HITS.pack_into(patched, _HITS_OFFSET, max(last, at), hits + added)
                txn.put(key, bytes(patched), db=self._docs)
                count += 1
                pages += len(patched) // self._page_bytes + 1  # its pages and a leaf
            return position, count

        while done < len(updates):
            done, count = self._env.write(run)
            updated += count
        return updated

    def purge(
        self, namespace: str, category: str | None = None, partition: str | None = None
    ) -> list[int]:
        """Delete every entry of ``namespace`` (narrowed by category and/or partition).

        Scans in read batches, then deletes in write batches, so it never holds a long
        write transaction; entries inserted during the purge may survive it. O(n).
        Returns the ids removed.
        """
        wanted = (namespace, category, partition)
        matches: list[int] = []
        for batch in self._scan_raw(4096):
            for entry_id, value in batch:
                _, strings, _ = _fields(value)
                found = (strings[0], strings[1], strings[2])
                if all(w is None or w == f for w, f in zip(wanted, found, strict=True)):
                    matches.append(entry_id)
        return [d.entry_id for d in self.delete_many(matches)]

    # -- reads ----------------------------------------------------------------------

    def get(self, entry_id: int) -> Document | None:
        return self.get_many([entry_id])[0]

    def get_many(self, ids: Sequence[int]) -> list[Document | None]:
        """Documents in the order of ``ids`` (None where absent), from one snapshot."""

        def run(txn: lmdb.Transaction) -> list[Document | None]:
            out: list[Document | None] = []
            for entry_id in ids:
                key = _id_key(entry_id)
                value = txn.get(key, db=self._docs)
                out.append(
                    None
                    if value is None
                    else _decode(entry_id, value, txn.get(key, db=self._tokens))
                )
            return out

        return self._env.read(run)

    def vector(self, entry_id: int) -> Vector | None:
        return self.vectors([entry_id])[0]

    def vectors(self, ids: Sequence[int]) -> list[Vector | None]:
        """Vectors in the order of ``ids`` (None where absent), from one snapshot."""
        values = self._env.read(lambda txn: [txn.get(_id_key(i), db=self._vectors) for i in ids])
        return [None if v is None else _vector(v) for v in values]

    def present(self, ids: Sequence[int]) -> set[int]:
        """Which of ``ids`` are stored, from one snapshot."""
        keys = [(i, _id_key(i)) for i in ids]

        def run(txn: lmdb.Transaction) -> set[int]:
            cursor = txn.cursor(db=self._docs)
            return {i for i, key in keys if cursor.set_key(key)}

        return self._env.read(run)

    def exact_lookup(self, key: bytes) -> int | None:
        """The entry id the exact key maps to, if any."""
        value = self._env.read(lambda txn: txn.get(key, db=self._exact))
        return None if value is None else int.from_bytes(value, "big")

    def count(self) -> int:
        return int(self._env.read(lambda txn: txn.stat(self._docs)["entries"]))

    def max_id(self) -> int:
        """The highest stored entry id, 0 when empty; new ids are allocated above it."""

        def run(txn: lmdb.Transaction) -> int:
            cursor = txn.cursor(db=self._docs)
            return int.from_bytes(cursor.key(), "big") if cursor.last() else 0

        return self._env.read(run)

    def scan(self, batch_size: int = 1024) -> Iterator[list[tuple[Document, Vector]]]:
        """All entries in id order, as lists of up to ``batch_size`` (document, vector).

        Each batch comes from its own read transaction, so a long scan (an index
        rebuild) does not pin old pages and let the map grow. Consistency: each batch
        is a snapshot; an entry that exists throughout the scan is yielded exactly
        once, and one inserted or deleted meanwhile may or may not be. Ids grow, so
        entries inserted during a scan usually appear in a later batch.
        """
        for batch in self._scan_raw(batch_size, with_vectors=True):
            yield [(_decode(i, v, tok), _vector(vec)) for i, v, vec, tok in batch]

    def scan_columns(
        self, batch_size: int = 65_536
    ) -> tuple[NDArray[np.void], dict[int, tuple[str, str, str]]]:
        """Every entry's ``sem.meta`` record in id order (a :data:`META_DTYPE` array),
        and the (namespace, category, partition) of each group they name.

        Reads ``batch_size`` records per read transaction, with the consistency of
        :meth:`scan`. About 40 bytes and well under a microsecond per entry: no
        document is decoded. Call :meth:`ensure_meta` first on a store that older
        versions wrote. O(n).
        """
        chunks: list[bytes] = []
        start = b""

        def run(txn: lmdb.Transaction) -> list[bytes | memoryview]:
            cursor = txn.cursor(db=self._meta)
            if not cursor.set_range(start):
                return []
            return list(itertools.islice(cursor.iternext(keys=False, values=True), batch_size))

        while True:
            values = self._env.read(run)
            if not values:
                break
            chunks.append(b"".join(values))
            last = int.from_bytes(values[-1][:8], "little")
            if len(values) < batch_size or last == _MAX_ID:
                break
            start = _id_key(last + 1)
        records = np.frombuffer(b"".join(chunks), dtype=META_DTYPE)

        def groups(txn: lmdb.Transaction) -> dict[int, tuple[str, str, str]]:
            return {
                int.from_bytes(k, "little"): _decode_group(_bytes(v))
                for k, v in txn.cursor(db=self._groups)
            }

        return records, self._env.read(groups)

    def ensure_meta(self, batch_size: int = 4096) -> int:
        """Rebuild ``sem.meta`` from the documents if it does not hold one record per
        document (a store written before it existed); returns the records written.

        O(1) when they agree; otherwise O(n), in write transactions of ``batch_size``.
        """

        def counts(txn: lmdb.Transaction) -> tuple[int, int]:
            return txn.stat(self._docs)["entries"], txn.stat(self._meta)["entries"]

        docs, metas = self._env.read(counts)
        if docs == metas:
            return 0
        self._env.write(lambda txn: txn.drop(self._meta, delete=False))
        written = 0
        for batch in self._scan_raw(batch_size):

            def run(txn: lmdb.Transaction, batch: list[Any] = batch) -> None:
                for entry_id, value in batch:
                    tokens = txn.get(_id_key(entry_id), db=self._tokens)
                    size = 0 if tokens is None else len(tokens)
                    record, group_key, group = _meta_of(entry_id, _bytes(value), size)
                    txn.put(_id_key(entry_id), record, db=self._meta)
                    txn.put(group_key, group, db=self._groups, overwrite=False)

            self._env.write(run)
            written += len(batch)
        return written

    def _scan_raw(self, batch_size: int, *, with_vectors: bool = False) -> Iterator[list[Any]]:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        start = b""

        def run(txn: lmdb.Transaction) -> list[Any]:
            cursor = txn.cursor(db=self._docs)
            out: list[Any] = []
            if not cursor.set_range(start):
                return out
            for key, value in cursor:
                entry_id = int.from_bytes(key, "big")
                if with_vectors:
                    vec = txn.get(key, db=self._vectors)
                    if vec is None:  # written together; only a bug could split them
                        raise RuntimeError(f"entry {entry_id} has no vector")
                    out.append((entry_id, value, vec, txn.get(key, db=self._tokens)))
                else:
                    out.append((entry_id, value))
                if len(out) == batch_size:
                    break
            return out

        while True:
            batch = self._env.read(run)
            if not batch:
                return
            yield batch
            if len(batch) < batch_size:
                return
            start = _id_key(batch[-1][0] + 1) if batch[-1][0] < _MAX_ID else b"\xff" * 9


def _vector(raw: bytes | memoryview) -> Vector:
    return np.frombuffer(raw, dtype="<f4").astype(np.float32)
