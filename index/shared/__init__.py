"""The shared tier in Redis: what several daemons share (semantic entries, chunk KV).

- :mod:`.target`: one URL to a standalone server, a Sentinel-managed master or a
  Cluster, as a sync or an asyncio redis-py client;
- :mod:`.keys`: the key names, prefixed per namespace or KV tenant and hash-tagged;
- :mod:`.outbox`: semantic changes to ship, written in the same LMDB transaction as
  the change itself;
- :mod:`.records`: the wire form of a shipped change (stream event and document);
- :mod:`.kv_blobs`: chunk KV variants in Redis, below each daemon's disk tier.
"""
