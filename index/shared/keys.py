"""Key names of the semantic shared tier in Redis.

Every key starts with the configured prefix, then a hash tag (``{...}``: the part
Redis Cluster hashes to pick a slot) naming the namespace by a digest of its name,
so that any name is safe inside a key and keys of one namespace and kind share a slot
where a command needs them together:

- ``P:{ns:H}:events``: the namespace's change stream (one slot: one ``XADD`` per change);
- ``P:{ns:H:B}:doc:ID``: an entry's record (expiring with the entry), in one of
  :data:`BUCKETS` buckets by id, so that a large namespace spreads over the Cluster;
- ``P:{ns:H:B}:ids``: the bucket's entry ids scored by expiry (ms), which a bootstrap
  reads to find the records (``ZRANGE`` + ``MGET`` on one slot);
- ``P:namespaces``: the set of namespaces that have a stream.

The unit is the namespace: a tenant reaches only its own namespaces, so keying by
namespace keeps tenants apart and lets one tenant's namespaces spread over slots.
"""

from __future__ import annotations

from dataclasses import dataclass

import xxhash

__all__ = ["BUCKETS", "SemanticKeys"]

BUCKETS = 16
"""Record buckets per namespace: a namespace's records spread over this many slots."""


@dataclass(frozen=True, slots=True)
class SemanticKeys:
    """The key names under one prefix. O(len(namespace)) per call."""

    prefix: str = "semcached"

    @staticmethod
    def _digest(namespace: str) -> str:
        return xxhash.xxh3_64_hexdigest(namespace.encode("utf-8"))

    @property
    def namespaces(self) -> str:
        return f"{self.prefix}:namespaces"

    def stream(self, namespace: str) -> str:
        return f"{self.prefix}:{{ns:{self._digest(namespace)}}}:events"

    def bucket(self, namespace: str, entry_id: int) -> int:
        return entry_id % BUCKETS

    def record(self, namespace: str, entry_id: int) -> str:
        bucket = self.bucket(namespace, entry_id)
        return f"{self.prefix}:{{ns:{self._digest(namespace)}:{bucket}}}:doc:{entry_id}"

    def ids(self, namespace: str, bucket: int) -> str:
        return f"{self.prefix}:{{ns:{self._digest(namespace)}:{bucket}}}:ids"

    def record_in(self, namespace: str, bucket: int, entry_id: int) -> str:
        """:meth:`record` of an id known to be in ``bucket`` (bootstrap reads)."""
        return f"{self.prefix}:{{ns:{self._digest(namespace)}:{bucket}}}:doc:{entry_id}"
