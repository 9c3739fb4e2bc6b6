"""The daemon's settings: one typed tree, loaded from four sources.

(About 600 lines, over the house's 400: the settings schema, with every key's help
text that `semcached config --reference` and the README table are generated from,
and the three sources' readers that check values against it, are one piece.)

Precedence, highest first: command-line flags, ``SEMCACHED_*`` environment
variables, a TOML file (``--config`` or ``SEMCACHED_CONFIG``), the defaults below.

Why dataclasses and not pydantic-settings: the settings are a fixed tree of
scalars, and an operator needs an error that names both the key *and the source*
that supplied the bad value ("SEMCACHED_SERVER_PORT: expected an integer, got
'80a'"). pydantic-settings merges all sources before it validates, so it cannot
say where a value came from; validating each source on its own against the
dataclass schema can, and costs no dependency.

Every key has one dotted name (``server.port``) that is also its TOML location
(``[server] port``), its flag (``--server.port``) and, upper-cased with ``_``
for ``.``, its environment variable (``SEMCACHED_SERVER_PORT``).
"""

from __future__ import annotations

import dataclasses
import math
import os
import tomllib
import typing
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from semcached.cachepolicy.categories import CategoryPolicy, CategoryTable
from semcached.cachepolicy.classify import (
    DEFAULT_MIN_CONFIDENCE,
    DEFAULT_NEIGHBOURS,
    DEFAULT_SCALE,
)
from semcached.cachepolicy.load import LoadSettings, LoadTarget
from semcached.cachepolicy.token_codec import DEFAULT_MAX_TOKENS
from semcached.errors import ConfigError
from semcached.index.kv_meta import ModelSpec

__all__ = [
    "CONFIG_ENV",
    "DEFAULT_KV_MODELS",
    "ENV_PREFIX",
    "AuthSettings",
    "ClassificationSettings",
    "EmbeddingSettings",
    "GptcacheSettings",
    "IndexSettings",
    "KvSettings",
    "LoadAdaptationSettings",
    "LogSettings",
    "ProxySettings",
    "QdrantSettings",
    "SemanticSettings",
    "ServerSettings",
    "SettingSpec",
    "Settings",
    "SharedSettings",
    "StorageSettings",
    "VerificationSettings",
    "iter_setting_specs",
    "load_settings",
    "read_toml",
]

ENV_PREFIX = "SEMCACHED_"
CONFIG_ENV = "SEMCACHED_CONFIG"
# SEMCACHED_* variables that are not settings: the config file path and build flags.
_NON_SETTING_ENV = frozenset({CONFIG_ENV, "SEMCACHED_NATIVE"})

_CATEGORIES = "categories"
_KV_MODELS = "kv_models"
_LOAD_MODELS = "load_models"
_TABLE_SECTIONS = frozenset({_CATEGORIES, _KV_MODELS, _LOAD_MODELS})
# Sections that are tables inside another section: their keys are named "kv.gpu.devices"
# (flag --kv.gpu.devices, variable SEMCACHED_KV_GPU_DEVICES, TOML table [kv.gpu]).
_NESTED_SECTIONS = {"kv_gpu": "kv.gpu"}

MiB = 1024 * 1024
GiB = 1024 * MiB


def _setting(default: Any, help: str, *, min: float | None = None, max: float | None = None) -> Any:
    """A dataclass field with help text and optional numeric bounds (inclusive)."""
    return field(default=default, metadata={"help": help, "min": min, "max": max})


@dataclass(frozen=True, slots=True)
class ServerSettings:
    """The HTTP listener and request handling."""

    host: str = _setting("127.0.0.1", "Address to listen on.")
    port: int = _setting(8080, "TCP port to listen on (0 lets the OS choose).", min=0, max=65535)
    max_body_bytes: int = _setting(
        16 * MiB, "Largest request body accepted; larger bodies get 413.", min=1024
    )
    body_timeout_s: float = _setting(
        30.0,
        "Longest wait for the next bytes of a request body; a body that stalls longer "
        "gets 408 and its connection is closed.",
        min=0.001,
    )
    body_min_bytes_per_s: int = _setting(
        1 * MiB,
        "Slowest average rate a request body may arrive at: the whole body must be in "
        "within body_timeout_s plus its length at this rate, or it gets 408 (0: no minimum).",
        min=0,
    )
    shutdown_timeout_s: float = _setting(
        10.0, "How long in-flight requests may run after shutdown begins.", min=0
    )
    drain_delay_s: float = _setting(
        0.0,
        "After SIGTERM, how long /readyz answers 503 before the listener closes "
        "(lets a load balancer stop routing here first).",
        min=0,
    )
    access_log: bool = _setting(True, "Log one line per request.")
    auth_token: str = _setting(
        "",
        "Bearer token required on /v1/ routes, with every scope (empty: no authentication; "
        "ignored with `auth.tokens_file`). Set it in the environment or the TOML file: a "
        "flag shows in the process list.",
    )
    worker_threads: int = _setting(
        4,
        "Threads for blocking work (LMDB, index inserts, embedding); searches have one per core.",
        min=1,
        max=256,
    )
    keepalive_timeout_s: float = _setting(
        60.0,
        "Longest a connection may go without a complete request: an idle keep-alive "
        "connection is closed after it (it also bounds headers trickled in slowly).",
        min=0.1,
    )
    header_timeout_s: float = _setting(
        10.0,
        "Longest a request's headers may take from their first byte to their end; a "
        "slower connection (slowloris) is closed.",
        min=0.1,
    )
    max_connections: int = _setting(
        0,
        "Most client connections open at once. At the cap the connection waiting longest "
        "for a request (over a second) is closed to make room, else a new one is answered "
        "503 and closed (0: the open-file limit, raised to its hard limit at start, less a "
        "quarter, at most 16384).",
        min=0,
    )
    probe_port: int = _setting(
        -1,
        "A second listener on server.host serving only /livez, /readyz and /metrics, "
        "outside server.max_connections, so probes survive a flood (-1: none; 0: the "
        "OS chooses).",
        min=-1,
        max=65535,
    )


@dataclass(frozen=True, slots=True)
class LogSettings:
    """Process logging."""

    level: Literal["debug", "info", "warning", "error"] = _setting("info", "Minimum log level.")
    format: Literal["plain", "json"] = _setting(
        "plain", "Log line format: human-readable text or one JSON object per line."
    )


@dataclass(frozen=True, slots=True)
class StorageSettings:
    """Durable storage (LMDB)."""

    data_dir: Path = _setting(Path("semcached-data"), "Directory for LMDB files and snapshots.")
    lmdb_initial_map_bytes: int = _setting(
        64 * MiB, "Initial LMDB map size; it grows on demand.", min=MiB
    )
    lmdb_max_map_bytes: int = _setting(
        64 * GiB, "Cap on the LMDB map size; at the cap caches evict instead.", min=MiB
    )


@dataclass(frozen=True, slots=True)
class IndexSettings:
    """Vector index backend and its HNSW parameters."""

    backend: Literal["hnswlib", "faiss", "faiss-gpu", "milvus"] = _setting(
        "hnswlib",
        "Vector index library: `hnswlib` (approximate HNSW, CPU); `faiss` (exact flat "
        "search, CPU: the `faiss` extra); `faiss-gpu` (exact flat search on CUDA device 0: "
        "the `faiss-gpu` extra); `milvus` (vectors in Milvus, one collection per index: the "
        "`milvus` extra; see docs/milvus.md). Changing it rebuilds the indexes from LMDB at "
        "the next start.",
    )
    hnsw_m: int = _setting(
        16, "HNSW links per node (M): more is better recall, more memory.", min=2, max=128
    )
    hnsw_ef_construction: int = _setting(
        200, "HNSW candidate list size while inserting.", min=8, max=4096
    )
    hnsw_ef_search: int = _setting(
        64, "HNSW candidate list size while searching (recall vs latency).", min=1, max=4096
    )
    snapshot_interval_s: float = _setting(
        300.0,
        "How often indexes are snapshotted to disk in the background (0: only at shutdown).",
        min=0,
    )
    milvus_uri: str = _setting(
        "",
        "Milvus holding the vectors (backend `milvus`): `http://host:19530` for a Milvus "
        "server or cluster, or a path ending in `.db` for milvus-lite inside the daemon "
        "(empty: `<data_dir>/milvus.db`).",
    )
    milvus_token: str = _setting(
        "", "Milvus credentials, `user:password` or an API key (empty: none)."
    )
    milvus_index_type: Literal["HNSW", "FLAT", "AUTOINDEX"] = _setting(
        "HNSW",
        "Index Milvus builds over each collection (metric COSINE); `HNSW` takes hnsw_m, "
        "hnsw_ef_construction and hnsw_ef_search.",
    )
    milvus_flush_rows: int = _setting(
        -1,
        "Flush a collection after this many inserted or deleted rows (0: never, as a "
        "Milvus server seals segments itself; -1: 1024 for milvus-lite, whose searches scan "
        "unflushed rows in Python, and never for a server).",
        min=-1,
    )
    milvus_timeout_s: float = _setting(
        10.0,
        "Timeout of one Milvus call; an unreachable Milvus stops the daemon at start.",
        min=0.001,
    )
    milvus_collection_prefix: str = _setting(
        "semcached_",
        "Start of the names of the collections this daemon creates (a random suffix "
        "follows); give daemons sharing one Milvus distinct prefixes.",
    )


@dataclass(frozen=True, slots=True)
class EmbeddingSettings:
    """Server-side text embedding (for requests that send text but no vector)."""

    backend: Literal["minilm", "http", "none"] = _setting(
        "minilm",
        "`minilm`: all-MiniLM-L6-v2 in-process (the `embed` extra); `http`: an "
        "OpenAI-compatible /v1/embeddings endpoint; `none`: callers must send vectors.",
    )
    dim: int = _setting(
        384,
        "Vector dimension callers send when the backend is `none` (the model's own "
        "dimension is used otherwise).",
        min=1,
        max=65536,
    )
    runtime: Literal["onnx", "torch"] = _setting(
        "onnx",
        "What runs `minilm`: `onnx`: ONNX Runtime on a model exported once from the "
        "packaged weights and cached on disk (falls back to `torch`, with a warning, when "
        "onnxruntime is missing or the export fails); `torch`: sentence-transformers.",
    )
    onnx_int8: bool = _setting(
        False,
        "Quantise the exported `onnx` model to int8 (dynamic): about 2x the float "
        "export's speed, but its vectors drift from torch's (worst cosine 0.97) and hit "
        "quality drops a little.",
    )
    model_cache_dir: str = _setting(
        "",
        "Where the exported `onnx` model is kept (empty: `<data_dir>/models` in the "
        "daemon, `~/.cache/semcached/models` elsewhere).",
    )
    torch_threads: int = _setting(
        0,
        "Intra-op threads of `minilm`, torch or ONNX Runtime (0: half the cores, 1 to 4).",
        min=0,
        max=256,
    )
    max_batch: int = _setting(32, "Most texts embedded in one model call.", min=1, max=4096)
    max_wait_ms: float = _setting(
        2.0, "Longest a text waits for others to share its model call.", min=0, max=1000
    )
    cache_entries: int = _setting(
        10_000, "Embeddings kept in memory by text hash (0: no cache).", min=0
    )
    http_url: str = _setting("", "Base URL of the OpenAI-compatible embedding service.")
    http_model: str = _setting("", "Model name sent to the embedding service.")
    http_api_key: str = _setting("", "Bearer key for the embedding service.")
    http_timeout_s: float = _setting(10.0, "Timeout of one embedding request.", min=0.001)


@dataclass(frozen=True, slots=True)
class SemanticSettings:
    """The semantic response cache."""

    namespaces: tuple[str, ...] = _setting(
        (),
        "Namespaces (tenants) accepted; a request naming another gets 400. Empty: any "
        "well-formed name. Comma-separated in the environment and on the command line.",
    )
    candidates: int = _setting(
        8, "Nearest neighbours examined per lookup before widening the search.", min=1, max=1024
    )
    sweep_interval_s: float = _setting(
        1.0, "How often expired entries are removed in the background.", min=0.01
    )
    max_batch: int = _setting(256, "Most lookups in one batch request.", min=1, max=100_000)


@dataclass(frozen=True, slots=True)
class ClassificationSettings:
    """Category classification of requests that name no category, from the categories'
    example prompts (see Category classification)."""

    min_confidence: float = _setting(
        DEFAULT_MIN_CONFIDENCE,
        "Confidence a classified category needs; below it the request goes to the "
        "`default` category.",
        min=0,
        max=1,
    )
    neighbours: int = _setting(
        DEFAULT_NEIGHBOURS,
        "Nearest examples of each category whose similarities are averaged into its score.",
        min=1,
        max=64,
    )
    scale: float = _setting(
        DEFAULT_SCALE,
        "Inverse temperature turning the categories' scores into a confidence (20 suits "
        "sentence-transformers models such as MiniLM; larger: more confident).",
        min=0.1,
        max=1000,
    )


@dataclass(frozen=True, slots=True)
class VerificationSettings:
    """The hit verifier, which judges candidates in its grey band of similarity (see
    Hit verification)."""

    enabled: bool = _setting(
        True,
        "Verify grey-band candidates (needs the `minilm` embedding backend, whose model the "
        "shipped verifier was trained for).",
    )
    model: str = _setting(
        "",
        "Path of a verifier model file (from bench/train_verifier.py); empty: the one "
        "shipped in the package.",
    )
    max_tokens: int = _setting(
        DEFAULT_MAX_TOKENS,
        "Token embeddings kept per prompt (the first ones), int8: about 392 bytes each.",
        min=1,
        max=512,
    )
    token_cache_bytes: int = _setting(
        64 * MiB,
        "Memory for recent prompts' token embeddings, so that verifying a lookup and "
        "storing an insert's need no second model call.",
        min=1 * MiB,
    )


@dataclass(frozen=True, slots=True)
class LoadAdaptationSettings:
    """How downstream model load reports relax the categories that allow it (see Load
    adaptation); per-model targets in ``[load_models."<model>"]`` tables."""

    engage: float = _setting(
        1.0, "Smoothed load over target at which relaxing starts.", min=0.001, max=1000
    )
    release: float = _setting(
        0.7, "Load over target below which relaxing stops (below `load.engage`).", min=0, max=1000
    )
    saturate: float = _setting(
        2.0,
        "Load over target at which relaxing is full (at least `load.engage`).",
        min=0.001,
        max=1000,
    )
    half_life_s: float = _setting(
        10.0, "Half-life of the exponential smoothing of a model's reports.", min=0.001
    )
    stale_s: float = _setting(
        60.0, "A model not reported for this long counts as unloaded.", min=0.001
    )
    queue_depth_target: float = _setting(
        16.0,
        "Queue depth at which a model counts as fully busy (load 1), unless its "
        "`load_models` table says otherwise (0: queue depths are refused).",
        min=0,
    )
    latency_ms_target: float = _setting(
        2000.0,
        "Latency (ms) at which a model counts as fully busy, unless its `load_models` "
        "table says otherwise (0: latencies are refused).",
        min=0,
    )
    max_models: int = _setting(
        64,
        "Models whose load a tenant may report at once, over all its namespaces; a "
        "model not reported for `load.stale_s` gives its place up.",
        min=1,
        max=100_000,
    )

    def tracker(self) -> LoadSettings:
        """The pure policy's settings (raises ValueError on an inconsistent set)."""
        return LoadSettings(
            engage=self.engage,
            release=self.release,
            saturate=self.saturate,
            half_life_s=self.half_life_s,
            stale_s=self.stale_s,
        )


@dataclass(frozen=True, slots=True)
class KvSettings:
    """The RAG chunk KV cache: tiers, blob and lease limits."""

    enabled: bool = _setting(True, "Serve the chunk KV cache (route group /v1/kv).")
    host_bytes: int = _setting(
        1 * GiB,
        "Host-memory tier budget: the size of its shared-memory arena (0: no host tier; "
        "memory is only committed as blobs arrive).",
        min=0,
    )
    disk_bytes: int = _setting(
        16 * GiB, "Disk tier budget (LMDB, the system of record): blob bytes kept.", min=MiB
    )
    disk_max_map_bytes: int = _setting(
        0,
        "Cap on the KV LMDB map (0: the disk budget plus a quarter for LMDB's own pages).",
        min=0,
    )
    max_blob_bytes: int = _setting(
        256 * MiB, "Largest KV blob accepted; larger puts get 413.", min=1024
    )
    max_inflight_upload_bytes: int = _setting(
        1 * GiB,
        "Most bytes of chunk puts being received or stored at once, counted by their "
        "declared lengths; a put beyond it gets 503 with Retry-After (one put is always "
        "admitted when none is in flight).",
        min=MiB,
    )
    body_buffer_bytes: int = _setting(
        64 * MiB,
        "Memory kept for reuse by finished chunk puts' body buffers (0: none): a put read "
        "into a reused buffer skips the kernel's zeroing of fresh pages.",
        min=0,
    )
    max_meta_bytes: int = _setting(
        1 * MiB,
        "Largest metadata header (X-Semcached-KV-Meta) accepted; per-token scores make it "
        "grow with the chunk length.",
        min=8190,
        max=64 * MiB,
    )
    shm: bool = _setting(
        True, "Hand same-host clients shared-memory handles to blobs in the host tier."
    )
    shm_dir: Path = _setting(
        Path("/dev/shm"),
        "A tmpfs directory for the host tier's arena (in Docker, size it with --shm-size).",
    )
    lease_timeout_s: float = _setting(
        30.0, "How long a shared-memory handle stays pinned unless released.", min=0.001
    )
    max_lease_s: float = _setting(
        300.0, "Longest lease a client may ask for.", min=0.001, max=86400
    )
    max_leases: int = _setting(10_000, "Most leases live at once.", min=1)
    max_plan_chunks: int = _setting(1024, "Most chunks in one plan request.", min=1)
    eviction: Literal["reuse", "lru", "s3fifo"] = _setting(
        "reuse",
        "Victim choice in each tier: `reuse` (expected frequency x prefill saved / bytes, "
        "with aging), `lru` or `s3fifo`.",
    )


@dataclass(frozen=True, slots=True)
class KvGpuSettings:
    """The chunk KV cache's device tier: hot chunks in GPU memory, handed to a same-host
    engine through CUDA IPC (TOML table ``[kv.gpu]``)."""

    devices: str = _setting(
        "auto",
        "GPUs for the device tier: `auto` (every visible CUDA device), `none`, or a "
        "comma-separated list of CUDA device indexes. Without a CUDA device or a CUDA "
        "build of torch the tier is off, as /v1/kv/stats says.",
    )
    max_bytes: int = _setting(
        2 * GiB,
        "Device tier budget per GPU; memory is taken in slabs as chunks are promoted "
        "(0: no device tier). A budget above a device's memory stops the daemon at start.",
        min=0,
    )
    slab_bytes: int = _setting(
        256 * MiB,
        "Size of each device allocation the tier carves chunks from (a chunk larger "
        "than a slab is never promoted to the device).",
        min=MiB,
    )
    promote_after_hits: int = _setting(
        2,
        "A chunk is promoted to a GPU when a client asks for device handles and the "
        "chunk has been read at least this often (1: on its first device read).",
        min=1,
    )


@dataclass(frozen=True, slots=True)
class AuthSettings:
    """Tenants and tokens: the tokens file, and the limits a tenant has unless its table
    in that file says otherwise (they apply only with a tokens file)."""

    tokens_file: str = _setting(
        "",
        "TOML file of tenants and hashed tokens with their scopes (see Tenants and tokens); "
        "reread on SIGHUP. Empty: the single `server.auth_token`, or no authentication.",
    )
    requests_per_s: float = _setting(
        0.0, "Requests per second a tenant may make, on average (0: unlimited).", min=0
    )
    burst: int = _setting(
        100, "Requests a tenant may make at once above its rate (the token bucket's size).", min=1
    )
    max_leases: int = _setting(
        1000,
        "Shared-memory leases a tenant may hold at once (0: only kv.max_leases, which "
        "bounds all tenants together).",
        min=0,
    )
    max_pinned_bytes: int = _setting(
        256 * MiB,
        "Host-tier bytes a tenant's leases may pin at once (0: only the host tier's size).",
        min=0,
    )
    semantic_max_entries: int = _setting(
        0,
        "Semantic cache entries a tenant may keep over all its namespaces; past it the "
        "tenant's oldest go (0: only the category quotas).",
        min=0,
    )
    semantic_max_bytes: int = _setting(
        0,
        "Semantic cache bytes a tenant may keep; past it the tenant's oldest entries go "
        "(0: only the category quotas).",
        min=0,
    )
    kv_max_bytes: int = _setting(
        0,
        "Chunk KV bytes (disk tier) a tenant's KV scope may keep; past it its oldest "
        "variants go (0: only kv.disk_bytes).",
        min=0,
    )


@dataclass(frozen=True, slots=True)
class ProxySettings:
    """The OpenAI-compatible caching proxy (``/v1/chat/completions``, ``/v1/completions``):
    off unless ``upstream_url`` is set."""

    upstream_url: str = _setting(
        "",
        "Base URL of the OpenAI-compatible upstream, with its version path "
        "(e.g. https://api.openai.com/v1). Empty: the proxy routes are off.",
    )
    upstream_api_key: str = _setting(
        "",
        "Bearer key sent to the upstream instead of the caller's Authorization (which is "
        "then the daemon's token when auth is on). Empty: the caller's Authorization is "
        "passed through (the daemon's token then travels in X-Semcached-Token).",
    )
    upstream_timeout_s: float = _setting(
        120.0,
        "Longest wait for the upstream to connect or to send its next bytes; past it a "
        "504 (or a stream cut short, never stored).",
        min=0.001,
    )
    namespace: str = _setting(
        "proxy",
        "Semantic cache namespace of the proxy's entries (X-Semcached-Namespace overrides).",
    )
    category: str = _setting(
        "", "Category of the proxy's entries. Empty: classified from the prompt."
    )
    max_temperature: float = _setting(
        1.0, "Requests with a higher temperature pass through uncached.", min=0
    )
    cache_tool_calls: bool = _setting(
        False, "Store answers that call tools (else they pass through uncached)."
    )
    coalesce_wait_s: float = _setting(
        30.0,
        "How long identical concurrent misses wait for the first one's answer before "
        "going upstream themselves (0: no coalescing).",
        min=0,
    )
    max_record_bytes: int = _setting(
        8 * MiB, "Largest answer stored; larger ones pass through uncached.", min=1024
    )
    prices: tuple[str, ...] = _setting(
        (),
        "USD per million tokens for the saved-cost metric, `model=input/output` each "
        "(e.g. gpt-4o-mini=0.15/0.6). Comma-separated in the environment and flags.",
    )
    max_model_labels: int = _setting(
        20,
        "Models named in the proxy's metrics besides the priced ones; later ones count as `other`.",
        min=0,
        max=1000,
    )


@dataclass(frozen=True, slots=True)
class GptcacheSettings:
    """GPTCache's wire protocol (``POST /put``, ``/get``, ``/flush``), so that its own
    ``gptcache.client.Client`` works against the daemon unchanged."""

    enabled: bool = _setting(False, "Serve POST /put, /get and /flush as GPTCache's server does.")
    namespace: str = _setting(
        "gptcache", "Namespace of the entries (GPTCache's protocol names none)."
    )
    category: str = _setting(
        "",
        "Category of the entries; empty: classified by the categories' example prompts "
        "(the default category if unsure).",
    )
    partition: str = _setting("", "Partition of the entries (e.g. the model they answer for).")


@dataclass(frozen=True, slots=True)
class QdrantSettings:
    """The subset of Qdrant's REST API that LiteLLM's ``qdrant-semantic`` cache calls,
    served from the semantic cache with the caller's vectors."""

    enabled: bool = _setting(
        False, "Serve /collections/... as Qdrant does, for LiteLLM's qdrant-semantic cache."
    )
    namespace_prefix: str = _setting(
        "qdrant.", "A collection `C` is the namespace `<namespace_prefix>C`."
    )
    category: str = _setting(
        "default",
        "Category whose policy (TTL, quota, min_threshold) the collections' points follow.",
    )


@dataclass(frozen=True, slots=True)
class SharedSettings:
    """The shared tier in Redis: what several daemons share (docs/scale-out.md)."""

    redis_url: str = _setting(
        "",
        "Redis holding the shared tier (empty: none, every daemon learns alone): "
        "`redis://` or `rediss://` (a standalone server or any node of a Cluster, "
        "`[user:password@]host:port[/db]`) or `redis+sentinel://[user:password@]"
        "host:port[,host:port]/service_name[/db]`.",
    )
    key_prefix: str = _setting("semcached", "Prefix of every key the daemon writes in Redis.")
    timeout_s: float = _setting(
        2.0, "Socket timeout of one Redis command (connects included).", min=0.01
    )
    semantic: bool = _setting(
        True, "Share semantic entries: ship this daemon's changes, apply everyone else's."
    )
    outbox_max_records: int = _setting(
        1_000_000,
        "Most changes waiting to be shipped while Redis is unreachable; past it the oldest "
        "are dropped from the outbox (counted and logged; the local store keeps them).",
        min=1,
    )
    ship_batch: int = _setting(256, "Most changes shipped in one Redis round trip.", min=1)
    wait_replicas: int = _setting(
        0,
        "Replicas that must hold a shipped batch (Redis WAIT) before it leaves the outbox; "
        "1 with Sentinel, so a failover loses no shipped change (not used with Cluster).",
        min=0,
        max=16,
    )
    stream_max_len: int = _setting(
        1_000_000,
        "Events kept per namespace stream (approximate trim); a daemon further behind "
        "than that bootstraps the namespace again.",
        min=100,
    )
    poll_interval_s: float = _setting(
        0.05, "Wait between stream reads that found nothing new.", min=0.001, max=60
    )
    bootstrap_timeout_s: float = _setting(
        60.0,
        "Longest a starting daemon waits for its bootstrap from Redis before it turns "
        "ready on its local state (it keeps trying in the background).",
        min=0,
    )
    kv: bool = _setting(
        True, "Keep chunk KV blobs in Redis below the local disk tier (`kv.enabled` too)."
    )
    kv_part_bytes: int = _setting(
        4 * MiB, "Largest value of one Redis key; bigger KV blobs are split.", min=4096
    )
    kv_ttl_s: float = _setting(
        86_400.0, "How long a chunk KV blob lives in Redis after its last write.", min=1
    )
    kv_max_pending_bytes: int = _setting(
        256 * MiB,
        "Bytes of chunk KV blobs waiting to be written to Redis; past it new ones are "
        "not shared (counted).",
        min=0,
    )


DEFAULT_KV_MODELS: tuple[ModelSpec, ...] = (
    ModelSpec(
        "HuggingFaceTB/SmolLM2-135M-Instruct",
        layers=30,
        kv_heads=3,
        head_dim=64,
        alpha=1.0,
        tokenizer="HuggingFaceTB/SmolLM2-135M-Instruct",
    ),
)
"""Models known without configuration; ``[kv_models."<id>"]`` tables add or replace."""


@dataclass(frozen=True, slots=True)
class Settings:
    """All settings, one section per table of the TOML file."""

    server: ServerSettings = field(default_factory=ServerSettings)
    log: LogSettings = field(default_factory=LogSettings)
    storage: StorageSettings = field(default_factory=StorageSettings)
    index: IndexSettings = field(default_factory=IndexSettings)
    embedding: EmbeddingSettings = field(default_factory=EmbeddingSettings)
    semantic: SemanticSettings = field(default_factory=SemanticSettings)
    classification: ClassificationSettings = field(default_factory=ClassificationSettings)
    verification: VerificationSettings = field(default_factory=VerificationSettings)
    kv: KvSettings = field(default_factory=KvSettings)
    kv_gpu: KvGpuSettings = field(default_factory=KvGpuSettings)
    auth: AuthSettings = field(default_factory=AuthSettings)
    load: LoadAdaptationSettings = field(default_factory=LoadAdaptationSettings)
    proxy: ProxySettings = field(default_factory=ProxySettings)
    gptcache: GptcacheSettings = field(default_factory=GptcacheSettings)
    qdrant: QdrantSettings = field(default_factory=QdrantSettings)
    shared: SharedSettings = field(default_factory=SharedSettings)
    # Only the TOML file sets categories (``[categories.<name>]`` tables), KV models
    # (``[kv_models."<id>"]``) and load targets (``[load_models."<model>"]``).
    categories: CategoryTable = field(default_factory=CategoryTable)
    kv_models: tuple[ModelSpec, ...] = DEFAULT_KV_MODELS
    load_models: tuple[LoadTarget, ...] = ()

    def load_target(self, model: str) -> LoadTarget:
        """What ``model``'s load reports are measured against."""
        for target in self.load_models:
            if target.model == model:
                return target
        return LoadTarget(model, self.load.queue_depth_target, self.load.latency_ms_target)

    def redacted(self) -> dict[str, dict[str, Any]]:
        """The settings as plain data, with secrets replaced, for logs and the admin API."""
        out: dict[str, dict[str, Any]] = {}
        for spec in iter_setting_specs():
            value = spec.value_in(self)
            if spec.secret and value:
                value = "***"
            elif isinstance(value, Path):
                value = str(value)
            elif isinstance(value, tuple):
                value = list(value)
            out.setdefault(spec.section, {})[spec.key] = value
        out["categories"] = {p.name: dataclasses.asdict(p) for p in self.categories}
        out["kv_models"] = {m.name: dataclasses.asdict(m) for m in self.kv_models}
        out["load_models"] = {t.model: dataclasses.asdict(t) for t in self.load_models}
        return out


@dataclass(frozen=True, slots=True)
class SettingSpec:
    """What the loader knows about one key: where it lives, its type and bounds."""

    section: str  # dotted where a table nests in another: "kv.gpu"
    key: str
    type: Any
    default: Any
    help: str
    min: float | None
    max: float | None

    @property
    def name(self) -> str:
        return f"{self.section}.{self.key}"

    @property
    def attribute(self) -> str:
        """The section's attribute of :class:`Settings` ("kv.gpu" -> ``kv_gpu``)."""
        return self.section.replace(".", "_")

    def value_in(self, settings: Settings) -> Any:
        return getattr(getattr(settings, self.attribute), self.key)

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.replace(".", "_").upper()

    @property
    def flag(self) -> str:
        return f"--{self.name}"

    @property
    def secret(self) -> bool:
        return self.key.endswith(("token", "key", "password", "redis_url"))

    @property
    def choices(self) -> tuple[str, ...] | None:
        if typing.get_origin(self.type) is Literal:
            return typing.get_args(self.type)
        return None


def iter_setting_specs() -> Iterator[SettingSpec]:
    """Every settable key, in declaration order."""
    for section in dataclasses.fields(Settings):
        if section.name in _TABLE_SECTIONS:
            continue
        section_cls = typing.get_type_hints(Settings)[section.name]
        hints = typing.get_type_hints(section_cls)
        for f in dataclasses.fields(section_cls):
            yield SettingSpec(
                section=_NESTED_SECTIONS.get(section.name, section.name),
                key=f.name,
                type=hints[f.name],
                default=f.default,
                help=f.metadata.get("help", ""),
                min=f.metadata.get("min"),
                max=f.metadata.get("max"),
            )


def _specs_by_name() -> dict[str, SettingSpec]:
    return {spec.name: spec for spec in iter_setting_specs()}


# --- conversion -------------------------------------------------------------------

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def _parse_bool(raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    word = raw.strip().lower() if isinstance(raw, str) else None
    if word in _TRUE or word in _FALSE:
        return word in _TRUE
    raise ValueError


def _parse_int(raw: Any) -> int:
    if isinstance(raw, int) and not isinstance(raw, bool):
        return raw
    if isinstance(raw, str):
        return int(raw.strip().replace("_", ""), 0)  # 0: also accept 0x… and 1_000
    raise ValueError


def _parse_float(raw: Any) -> float:
    if isinstance(raw, bool) or not isinstance(raw, int | float | str):
        raise ValueError
    value = float(raw.strip() if isinstance(raw, str) else raw)
    if not math.isfinite(value):
        raise ValueError
    return value


def _parse_str(raw: Any) -> str:
    if not isinstance(raw, str):
        raise ValueError
    return raw


def _parse_names(raw: Any) -> tuple[str, ...]:
    if isinstance(raw, str):  # environment / command line: comma-separated
        raw = [part.strip() for part in raw.split(",") if part.strip()]
    if not isinstance(raw, list) or not all(isinstance(x, str) and x for x in raw):
        raise ValueError
    return tuple(raw)


def _parse_path(raw: Any) -> Path:
    if not isinstance(raw, str) or not raw:
        raise ValueError
    return Path(raw).expanduser()


# type -> (what the error message says was expected, parser raising ValueError)
_PARSERS: dict[Any, tuple[str, Callable[[Any], Any]]] = {
    bool: ("a boolean (true/false)", _parse_bool),
    int: ("an integer", _parse_int),
    float: ("a finite number", _parse_float),
    str: ("a string", _parse_str),
    Path: ("a path", _parse_path),
    tuple[str, ...]: ("a list of names", _parse_names),
}
# Types that environment variables and flags spell as text but TOML spells natively.
_NON_TEXT_TYPES = (bool, int, float)


def _convert(spec: SettingSpec, raw: Any, source: str, *, typed: bool = False) -> Any:
    """Turn ``raw`` into the key's type, or raise a ConfigError naming key and source.

    Environment and command-line values are text and are parsed; a ``typed`` source
    (TOML) must already carry the right type: ``port = "80"`` is rejected.
    """
    if spec.choices is not None:
        if raw not in spec.choices:
            expected = "one of " + ", ".join(repr(c) for c in spec.choices)
            raise ConfigError(f"{source}: {spec.name}: expected {expected}, got {raw!r}")
        return raw
    expected, parse = _PARSERS[spec.type]
    try:
        if typed and isinstance(raw, str) and spec.type in _NON_TEXT_TYPES:
            raise ValueError
        value = parse(raw)
    except ValueError:
        raise ConfigError(f"{source}: {spec.name}: expected {expected}, got {raw!r}") from None
    if spec.min is not None and value < spec.min:
        raise ConfigError(f"{source}: {spec.name}: must be >= {spec.min:g}, got {value!r}")
    if spec.max is not None and value > spec.max:
        raise ConfigError(f"{source}: {spec.name}: must be <= {spec.max:g}, got {value!r}")
    return value


# --- sources ----------------------------------------------------------------------


def read_toml(path: Path, what: str = "config file") -> dict[str, Any]:
    """The document of a TOML file; :class:`ConfigError` naming ``what`` and the path."""
    source = f"{what} {path}"
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"{source}: no such file") from None
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: invalid TOML: {exc}") from None


def _from_toml(
    doc: Mapping[str, Any], source: str, specs: Mapping[str, SettingSpec]
) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for section, table in doc.items():
        if section in _TABLE_SECTIONS:
            continue
        if not isinstance(table, dict):
            raise ConfigError(f"{source}: {section}: expected a [{section}] table")
        for key, raw in table.items():
            name = f"{section}.{key}"
            if isinstance(raw, dict) and name in _NESTED_SECTIONS.values():
                values.update(_from_toml({name: raw}, source, specs))
                continue
            spec = specs.get(name)
            if spec is None:
                raise ConfigError(f"{source}: unknown key {name!r}")
            values[name] = _convert(spec, raw, source, typed=True)
    return values


def _optional_of(hint: Any) -> Any:
    """``float`` for ``float | None`` (TOML has no null: a key set is a value), else ``hint``."""
    args = typing.get_args(hint)
    if type(None) in args and len(args) == 2:
        return next(a for a in args if a is not type(None))
    return hint


def _categories_from_toml(doc: Mapping[str, Any], source: str) -> CategoryTable:
    """``[categories.<name>]`` tables override built-in categories or add new ones."""
    tables = doc.get(_CATEGORIES, {})
    if not isinstance(tables, dict):
        raise ConfigError(f"{source}: categories: expected [categories.<name>] tables")
    hints = typing.get_type_hints(CategoryPolicy)
    overrides: dict[str, dict[str, Any]] = {}
    for name, table in tables.items():
        where = f"{_CATEGORIES}.{name}"
        if not isinstance(table, dict):
            raise ConfigError(f"{source}: {where}: expected a [{where}] table")
        for key, raw in table.items():
            if key == "name" or key not in hints:
                raise ConfigError(f"{source}: unknown key '{where}.{key}'")
            if key == "examples":  # prompts: a TOML list, never split at commas
                if not isinstance(raw, list) or not all(isinstance(x, str) for x in raw):
                    raise ConfigError(f"{source}: {where}.examples: expected a list of strings")
                overrides.setdefault(name, {})[key] = tuple(raw)
                continue
            spec = SettingSpec(where, key, _optional_of(hints[key]), None, "", None, None)
            overrides.setdefault(name, {})[key] = _convert(spec, raw, source, typed=True)
    try:
        return CategoryTable().with_overrides(overrides)
    except ValueError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def _kv_models_from_toml(doc: Mapping[str, Any], source: str) -> tuple[ModelSpec, ...]:
    """``[kv_models."<id>"]`` tables add models to the built-in ones or replace them."""
    tables = doc.get(_KV_MODELS, {})
    if not isinstance(tables, dict):
        raise ConfigError(f'{source}: kv_models: expected [kv_models."<id>"] tables')
    hints = typing.get_type_hints(ModelSpec)
    models = {m.name: m for m in DEFAULT_KV_MODELS}
    for name, table in tables.items():
        where = f"{_KV_MODELS}.{name}"
        if not isinstance(table, dict):
            raise ConfigError(f"{source}: {where}: expected a [{where}] table")
        values: dict[str, Any] = {}
        for key, raw in table.items():
            if key == "name" or key not in hints:
                raise ConfigError(f"{source}: unknown key '{where}.{key}'")
            spec = SettingSpec(where, key, hints[key], None, "", None, None)
            values[key] = _convert(spec, raw, source, typed=True)
        missing = [k for k in ("layers", "kv_heads", "head_dim") if k not in values]
        if missing:
            raise ConfigError(f"{source}: {where}: missing {', '.join(missing)}")
        try:
            models[name] = ModelSpec(name, **values)
        except ValueError as exc:
            raise ConfigError(f"{source}: {exc}") from None
    return tuple(models.values())


_LOAD_MODEL_KEYS = {"queue_depth_target": "queue_depth", "latency_ms_target": "latency_ms"}


def _load_models_from_toml(doc: Mapping[str, Any], source: str) -> dict[str, dict[str, float]]:
    """``[load_models."<model>"]`` tables: a model's own load targets, by target field
    (the others keep ``load.queue_depth_target`` and ``load.latency_ms_target``)."""
    tables = doc.get(_LOAD_MODELS, {})
    if not isinstance(tables, dict):
        raise ConfigError(f'{source}: load_models: expected [load_models."<model>"] tables')
    targets: dict[str, dict[str, float]] = {}
    for name, table in tables.items():
        where = f"{_LOAD_MODELS}.{name}"
        if not isinstance(table, dict):
            raise ConfigError(f"{source}: {where}: expected a [{where}] table")
        values = targets[name] = {}
        for key, raw in table.items():
            if key not in _LOAD_MODEL_KEYS:
                raise ConfigError(f"{source}: unknown key '{where}.{key}'")
            spec = SettingSpec(where, key, float, None, "", 0, None)
            values[_LOAD_MODEL_KEYS[key]] = _convert(spec, raw, source, typed=True)
    return targets


def _from_env(environ: Mapping[str, str], specs: Mapping[str, SettingSpec]) -> dict[str, Any]:
    by_env = {spec.env: spec for spec in specs.values()}
    values: dict[str, Any] = {}
    for var, raw in environ.items():
        if not var.startswith(ENV_PREFIX) or var in _NON_SETTING_ENV:
            continue
        spec = by_env.get(var)
        if spec is None:
            raise ConfigError(f"environment: unknown variable {var}")
        values[spec.name] = _convert(spec, raw, f"environment {var}")
    return values


def _from_overrides(
    overrides: Mapping[str, str], specs: Mapping[str, SettingSpec]
) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name, raw in overrides.items():
        spec = specs.get(name)
        if spec is None:
            raise ConfigError(f"command line: unknown option --{name}")
        values[name] = _convert(spec, raw, f"command line --{name}")
    return values


def load_settings(
    *,
    config_file: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, str] | None = None,
) -> Settings:
    """Build the settings from all sources; raise :class:`ConfigError` on any bad input.

    ``overrides`` are command-line values keyed by dotted name (``"server.port"``).
    ``environ`` defaults to ``os.environ``; the config file is ``config_file`` or else
    the path in ``SEMCACHED_CONFIG``, if any.
    """
    env = os.environ if environ is None else environ
    specs = _specs_by_name()
    merged: dict[str, Any] = {}
    categories = CategoryTable()
    kv_models = DEFAULT_KV_MODELS
    load_models: dict[str, dict[str, float]] = {}
    path = config_file if config_file is not None else env.get(CONFIG_ENV) or None
    if path is not None:
        doc = read_toml(Path(path))
        source = f"config file {path}"
        merged.update(_from_toml(doc, source, specs))
        categories = _categories_from_toml(doc, source)
        kv_models = _kv_models_from_toml(doc, source)
        load_models = _load_models_from_toml(doc, source)
    merged.update(_from_env(env, specs))
    merged.update(_from_overrides(overrides or {}, specs))

    sections: dict[str, dict[str, Any]] = {}
    for name, value in merged.items():
        section, key = name.rsplit(".", 1)
        sections.setdefault(section.replace(".", "_"), {})[key] = value
    hints = typing.get_type_hints(Settings)
    built = {s: hints[s](**kv) for s, kv in sections.items()}
    load = built.get("load", LoadAdaptationSettings())
    assert isinstance(load, LoadAdaptationSettings)
    defaults = {"queue_depth": load.queue_depth_target, "latency_ms": load.latency_ms_target}
    settings = Settings(
        **built,
        categories=categories,
        kv_models=kv_models,
        load_models=tuple(LoadTarget(m, **{**defaults, **v}) for m, v in load_models.items()),
    )
    _check_cross_field(settings)
    return settings


def _check_cross_field(settings: Settings) -> None:
    try:
        settings.load.tracker()
    except ValueError:
        load = settings.load
        raise ConfigError(
            "load: need load.release < load.engage <= load.saturate "
            f"(got {load.release:g}, {load.engage:g}, {load.saturate:g})"
        ) from None
    storage = settings.storage
    if storage.lmdb_initial_map_bytes > storage.lmdb_max_map_bytes:
        raise ConfigError(
            "storage.lmdb_initial_map_bytes must not exceed storage.lmdb_max_map_bytes "
            f"({storage.lmdb_initial_map_bytes} > {storage.lmdb_max_map_bytes})"
        )
