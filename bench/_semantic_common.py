"""Shared pieces of the semantic cache benchmarks (bench/semantic_http.py, semantic_restart.py).

Not a benchmark itself. It holds:

- the synthetic data set: clustered unit vectors (see :func:`synthetic_vectors`) and
  template prompts with paraphrases (see :func:`text_prompts`);
- :func:`populate` — writes a daemon data directory in-process with the engine's own
  :class:`~semcached.index.docstore.DocumentStore` (large ``put_many`` batches), so the
  daemon finds it at start exactly as if its clients had inserted the entries;
- :func:`write_index_snapshot` — builds the daemon's HNSW index of those entries
  in-process with the engine's own index class and saves it as the data directory's
  snapshot, so the daemon starts from it instead of rebuilding; the snapshot's hnswlib
  file also serves the bare baseline (one build, where an index of 1M entries takes
  tens of minutes on two cores);
- :class:`Server` — a child process (``semcached serve`` or the bare baseline server) on
  127.0.0.1 with an OS-chosen port, whose URL is read from its log;
- :func:`minilm_engine` — an in-process engine with MiniLM, for the benchmarks that
  need real embeddings but no HTTP (semantic_quality.py, the eviction trace);
- Prometheus histogram parsing and quantile estimation for the daemon's ``/metrics``.

The vector data set (dimension 384, like all-MiniLM-L6-v2):

- ``centroids`` topic centres on the unit sphere, made anisotropic like real sentence
  embeddings: each is ``normalise(a * mu + g / sqrt(d))`` with one shared direction
  ``mu`` and ``g ~ N(0, I)``, ``a = 0.42``, so two unrelated centres have cosine ~0.15;
- topic popularity is Zipf-like (weight ``1 / rank**0.8``, ranks shuffled), so a few
  topics hold many entries and most hold few;
- each topic has its own spread ``s**2 ~ U[0.2, 1.0]``: an entry is
  ``normalise(c + s * g / sqrt(d))``, so two entries of one topic have cosine ~0.5
  (loose topics, like conversation) to ~0.83 (dense ones, like code);
- *hit* queries are noisy copies of stored entries, ``normalise(e + t * g / sqrt(d))``
  with ``t**2 ~ U[0, 0.35]`` (cosine 0.86 to 1 to their source), so many sit on either
  side of a 0.90 threshold; *miss* queries are fresh draws from the same mixture (their
  best stored neighbour is a topic sibling, cosine ~0.5 to ~0.9 in dense topics).

Everything is seeded; chunk ``i`` of the entries comes from its own generator, so the
entries of a size are generated in bounded memory and written to a memory-mapped file.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import urllib3
from numpy.typing import NDArray

from semcached.cachepolicy.categories import CategoryTable
from semcached.index.datadir import DataDirectory
from semcached.index.docstore import Document, DocumentStore
from semcached.index.hnsw import SNAPSHOT_KIND, HnswlibIndex
from semcached.index.lmdb_env import LmdbEnvironment
from semcached.index.snapshot import read_snapshot
from semcached.index.vector_index import VectorIndex
from semcached.service.config import EmbeddingSettings
from semcached.service.semantic.embedding.base import create_embedder
from semcached.service.semantic.engine import SemanticCache
from semcached.service.semantic.snapshots import SnapshotDirectory

DIM = 384
NAMESPACE = "bench"
CATEGORY = "bench"
CHUNK = 65_536
ANISOTROPY = 0.42
ZIPF = 0.8
SPREAD = (0.2, 1.0)
HIT_NOISE = (0.0, 0.35)
TTL_S = 30 * 86_400.0
GiB = 1 << 30
BENCH_DIR = Path(__file__).resolve().parent

Matrix = NDArray[np.float32]

_LISTENING = re.compile(r"listening on (http://[\d.]+:\d+)")


def normalise(rows: Matrix) -> Matrix:
    rows = np.asarray(rows, dtype=np.float32)
    out: Matrix = rows / np.linalg.norm(rows, axis=-1, keepdims=True)
    return out


# -- synthetic vectors --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Mixture:
    """The topic model every vector of one run is drawn from."""

    centres: Matrix  # (centroids, DIM), unit rows
    weights: NDArray[np.float64]  # topic popularity, sums to 1
    spread: NDArray[np.float32]  # per topic s

    @classmethod
    def create(cls, centroids: int, seed: int) -> Mixture:
        rng = np.random.default_rng([seed, 0])
        mu = normalise(rng.standard_normal(DIM).astype(np.float32))
        g = rng.standard_normal((centroids, DIM)).astype(np.float32) / math.sqrt(DIM)
        centres = normalise(ANISOTROPY * mu + g)
        weights = 1.0 / np.arange(1, centroids + 1, dtype=np.float64) ** ZIPF
        rng.shuffle(weights)
        spread = np.sqrt(rng.uniform(*SPREAD, size=centroids)).astype(np.float32)
        return cls(centres, weights / weights.sum(), spread)

    def draw(self, n: int, rng: np.random.Generator) -> Matrix:
        topic = rng.choice(len(self.weights), size=n, p=self.weights)
        noise = rng.standard_normal((n, DIM), dtype=np.float32) / np.float32(math.sqrt(DIM))
        return normalise(self.centres[topic] + self.spread[topic, None] * noise)


def synthetic_vectors(out: np.memmap, start: int, mixture: Mixture, seed: int) -> None:
    """Fill ``out[start:]`` with entries of the mixture, chunk by chunk (bounded memory)."""
    for chunk, lo in enumerate(range(start, len(out), CHUNK)):
        hi = min(lo + CHUNK, len(out))
        out[lo:hi] = mixture.draw(hi - lo, np.random.default_rng([seed, 1, chunk]))


def vector_queries(
    vectors: Matrix, first: int, count: int, mixture: Mixture, seed: int
) -> tuple[Matrix, int]:
    """``count`` queries: the first half noisy copies of rows ``first..`` of ``vectors``
    (hits, mostly), the rest fresh draws (misses). Returns (queries, number of copies)."""
    rng = np.random.default_rng([seed, 2])
    copies = count // 2
    rows = np.sort(rng.choice(np.arange(first, len(vectors)), size=copies, replace=False))
    t = np.sqrt(rng.uniform(*HIT_NOISE, size=copies)).astype(np.float32)
    noise = rng.standard_normal((copies, DIM), dtype=np.float32) / np.float32(math.sqrt(DIM))
    hits = normalise(np.asarray(vectors[rows]) + t[:, None] * noise)
    return np.concatenate([hits, mixture.draw(count - copies, rng)]), copies


# -- synthetic prompts --------------------------------------------------------------------

_VERBS = (
    "sort", "reverse", "parse", "merge", "filter", "serialize", "compress", "encrypt",
    "validate", "deduplicate", "cache", "paginate", "index", "search", "benchmark",
    "profile", "debug", "deploy", "test", "log", "split", "join", "hash", "count",
    "round", "format", "convert", "download", "upload", "schedule",
)  # fmt: skip
_NOUNS = (
    "a list of integers", "a JSON file", "a CSV table", "a dictionary", "a date string",
    "an HTTP response", "a log file", "a binary tree", "a linked list", "a matrix",
    "a SQL query result", "a web page", "a PDF document", "an image", "a video stream",
    "a user table", "a config file", "a YAML document", "a tarball", "a git repository",
    "a time series", "a graph", "a queue", "a set of URLs", "a string", "an email address",
    "a phone number", "a sentence", "a stack trace", "a docker image",
)  # fmt: skip
_PLACES = (
    "in Python", "in Rust", "in Go", "in JavaScript", "in Java", "in C++", "in Bash",
    "with pandas", "with numpy", "in SQL", "in Excel", "on Linux", "on Windows",
    "in Kotlin", "in Swift", "in Ruby", "in PHP", "in Haskell", "in Scala", "in TypeScript",
)  # fmt: skip
_TEMPLATES = (
    "How do I {v} {n} {p}?",
    "What is the best way to {v} {n} {p}?",
    "Can you show me how to {v} {n} {p}?",
    "I need to {v} {n} {p}. How?",
    "Explain how to {v} {n} {p}.",
    "Quick question: how to {v} {n} {p}",
    "Write code to {v} {n} {p}.",
    "{P}, how can I {v} {n}?",
)
MAX_TEXT_COMBOS = len(_VERBS) * len(_NOUNS) * len(_PLACES)


def _prompt(template: int, combo: int) -> str:
    v, rest = divmod(combo, len(_NOUNS) * len(_PLACES))
    n, p = divmod(rest, len(_PLACES))
    place = _PLACES[p]
    return _TEMPLATES[template].format(
        v=_VERBS[v], n=_NOUNS[n], p=place, P=place[0].upper() + place[1:]
    )


def text_prompts(stored: int, queries: int, seed: int) -> tuple[list[str], list[str], int]:
    """Stored prompts and query prompts from (verb, object, place) templates.

    Each stored prompt is a random (verb, object, place) in one template; the first half
    of the queries are paraphrases of stored prompts (same triple, another template), the
    rest are triples that are not stored (often one word away from a stored one).
    Returns (stored, queries, number of paraphrases).
    """
    if stored + queries > MAX_TEXT_COMBOS:
        raise ValueError(f"at most {MAX_TEXT_COMBOS} distinct prompts")
    rng = np.random.default_rng([seed, 3])
    combos = rng.permutation(MAX_TEXT_COMBOS)
    templates = rng.integers(0, len(_TEMPLATES), size=stored + queries)
    kept = [_prompt(int(t), int(c)) for t, c in zip(templates, combos[:stored], strict=False)]
    paraphrases = queries // 2
    picks = rng.choice(stored, size=paraphrases, replace=False)
    asked = [
        _prompt(int((templates[i] + 1 + rng.integers(len(_TEMPLATES) - 1)) % len(_TEMPLATES)),
                int(combos[i]))
        for i in picks
    ]  # fmt: skip
    fresh = combos[stored : stored + queries - paraphrases]
    asked += [_prompt(int(t), int(c)) for t, c in zip(templates[stored:], fresh, strict=False)]
    return kept, asked, paraphrases


async def embed_texts(texts: Sequence[str]) -> Matrix:
    """MiniLM embeddings through the daemon's own embedder (same model, same code)."""
    from concurrent.futures import ThreadPoolExecutor

    from semcached.service.config import EmbeddingSettings
    from semcached.service.semantic.embedding.base import create_embedder

    with ThreadPoolExecutor(2) as executor:
        embedder = create_embedder(EmbeddingSettings(backend="minilm"), executor)
        await embedder.open()
        try:
            rows = [await embedder.embed(texts[i : i + 256]) for i in range(0, len(texts), 256)]
        finally:
            await embedder.close()
    return normalise(np.concatenate(rows))


# -- the data directory ---------------------------------------------------------------------


def response_bytes(entry_id: int) -> bytes:
    return b'{"answer":"cached answer %d"}' % entry_id


def populate(data_dir: Path, vectors: Matrix, prompts: Sequence[str], batch: int = 8192) -> float:
    """Write ``len(vectors)`` entries (ids 1..n; row i is id i + 1) with the engine's store.

    The first ``len(prompts)`` entries carry those prompts; the rest ``synthetic prompt
    <id>``. Returns the seconds taken.
    """
    started = time.perf_counter()
    n = len(vectors)
    per_entry = 4 * DIM + 512
    initial = max(64 << 20, 1 << math.ceil(math.log2(n * per_entry * 1.5)))
    directory = DataDirectory(data_dir, initial_map_bytes=initial, max_map_bytes=64 * GiB)
    directory.open()
    try:
        store = DocumentStore(directory.env, group_commit=False)
        now = time.time()
        for lo in range(0, n, batch):
            hi = min(lo + batch, n)
            block = np.asarray(vectors[lo:hi])
            items = []
            for row in range(lo, hi):
                entry_id = row + 1
                prompt = prompts[row] if row < len(prompts) else f"synthetic prompt {entry_id}"
                doc = Document(
                    entry_id=entry_id, namespace=NAMESPACE, category=CATEGORY, partition="",
                    model="", prompt=prompt, response=response_bytes(entry_id),
                    response_format="json", created_at=now, expires_at=now + TTL_S,
                    hit_count=0, last_hit_at=0.0, vector_dim=DIM,
                )  # fmt: skip
                items.append((doc, block[row - lo]))
            store.put_many(items)
    finally:
        directory.close()
    return time.perf_counter() - started


def write_index_snapshot(
    data_dir: Path, vectors: Matrix, *, m: int, ef_construction: int, threads: int = 2
) -> tuple[float, Path]:
    """Index ``vectors`` (ids 1..n, as :func:`populate` wrote them) and save the snapshot
    the daemon loads at start; return (build seconds, the snapshot's hnswlib file).

    The index is the engine's :class:`HnswlibIndex` with the daemon's parameters and
    the snapshot is written by the engine's own :class:`SnapshotDirectory`, so the
    daemon reconciles it with LMDB (finding nothing to add) as after any shutdown.
    The hnswlib part is plain ``save_index`` output, which ``load_index`` reads as is.
    """
    started = time.perf_counter()
    n = len(vectors)
    index = HnswlibIndex(
        DIM, m=m, ef_construction=ef_construction, ef_search=64, initial_capacity=n,
        num_threads=threads,
    )  # fmt: skip
    for lo in range(0, n, CHUNK):
        hi = min(lo + CHUNK, n)
        index.add(np.arange(lo + 1, hi + 1, dtype=np.uint64), np.asarray(vectors[lo:hi]))
    seconds = time.perf_counter() - started
    directory = _snapshots(data_dir)
    key = (NAMESPACE, CATEGORY)
    directory.save(key, index)
    directory.write_catalog([key], next_id=n + 1)
    return seconds, snapshot_hnsw_file(data_dir)


def _snapshots(data_dir: Path) -> SnapshotDirectory:
    return SnapshotDirectory(
        data_dir / "snapshots", lambda path, dim: HnswlibIndex.load(path, dim=dim)
    )


def snapshot_hnsw_file(data_dir: Path) -> Path:
    """The hnswlib file of the bench index's snapshot in ``data_dir`` (verified)."""
    path = _snapshots(data_dir).path_for((NAMESPACE, CATEGORY))
    _, parts = read_snapshot(path, kind=SNAPSHOT_KIND)
    return parts["hnsw"]


def cache_key(size: int, *, texts: int, seed: int, centroids: int, m: int, efc: int) -> str:
    """The folder name under ``--cache`` of one size's data directory, vectors and index."""
    return f"n{size}-texts{texts}-seed{seed}-centroids{centroids}-m{m}-efc{efc}"


@contextlib.asynccontextmanager
async def minilm_engine(
    workdir: Path, categories: CategoryTable, *, threads: int = 2
) -> AsyncIterator[SemanticCache]:
    """An open in-process :class:`SemanticCache` embedding with MiniLM, its LMDB under
    ``workdir``, HNSW at M=16, ef_construction 200, ef_search 128; closed on exit."""
    executor = ThreadPoolExecutor(threads, thread_name_prefix="bench")
    env = LmdbEnvironment(workdir / "lmdb", initial_map_bytes=64 << 20, max_map_bytes=4 << 30)
    embedder = create_embedder(EmbeddingSettings(backend="minilm"), executor)
    await embedder.open()

    def new_index(dim: int) -> VectorIndex:
        return HnswlibIndex(dim, m=16, ef_construction=200, ef_search=128)

    engine = SemanticCache(
        store=DocumentStore(env), index_factory=new_index, embedder=embedder,
        categories=categories, dim=embedder.dim, executor=executor,
    )  # fmt: skip
    await engine.open()
    try:
        yield engine
    finally:
        await engine.close()
        await embedder.close()
        env.close()
        executor.shutdown()


def write_config(path: Path, threshold: float) -> Path:
    """A settings file with the bench category: the threshold, quotas above any size."""
    path.write_text(
        f"[categories.{CATEGORY}]\n"
        f"threshold = {threshold}\nmin_threshold = -1.0\nmax_threshold = 1.0\n"
        f"ttl_s = {TTL_S}\nmax_entries = 100000000\nmax_bytes = {1 << 40}\n"
    )
    return path


# -- child servers -------------------------------------------------------------------------


class Server:
    """A server child process on 127.0.0.1:0; its stderr is collected line by line."""

    def __init__(self, name: str, argv: Sequence[str], env: dict[str, str] | None = None):
        self.name = name
        child_env = {k: v for k, v in os.environ.items() if not k.startswith("SEMCACHED_")}
        child_env.update(env or {})
        self.started = time.perf_counter()
        self.proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=child_env,
            text=True,
        )
        self.lines: list[str] = []
        self.url: str | None = None
        self._listening = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.http = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(30.0))

    @classmethod
    def semcached(cls, data_dir: Path, config: Path, settings: dict[str, object]) -> Server:
        argv = [sys.executable, "-m", "semcached.service.cli", "serve", "--config", str(config),
                "--server.port", "0", "--storage.data_dir", str(data_dir)]  # fmt: skip
        for key, value in settings.items():
            argv += [f"--{key}", str(value).lower() if isinstance(value, bool) else str(value)]
        return cls("semcached", argv)

    @classmethod
    def bare(cls, index: Path, *, ef: int, k: int, threshold: float, minilm: bool) -> Server:
        argv = [sys.executable, str(BENCH_DIR / "_bare_server.py"), "--index", str(index),
                "--dim", str(DIM), "--ef", str(ef), "--k", str(k),
                "--threshold", str(threshold)]  # fmt: skip
        return cls("bare", [*argv, "--minilm"] if minilm else argv)

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))
            match = _LISTENING.search(line)
            if match and self.url is None:
                self.url = match.group(1)
                self._listening.set()
        self._listening.set()

    @property
    def log(self) -> str:
        return "\n".join(self.lines[-40:])

    def wait_ready(self, timeout: float = 3600.0, poll_s: float = 0.01) -> float:
        """Block until ``/readyz`` is 200; returns seconds since the process was started."""
        deadline = time.monotonic() + timeout
        if not self._listening.wait(timeout) or self.url is None:
            raise RuntimeError(f"{self.name} did not start listening; log:\n{self.log}")
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log}")
            if self.http.request("GET", self.url + "/readyz").status == 200:
                return time.perf_counter() - self.started
            time.sleep(poll_s)
        raise RuntimeError(f"{self.name} not ready within {timeout} s; log:\n{self.log}")

    def get(self, path: str) -> bytes:
        assert self.url is not None
        response = self.http.request("GET", self.url + path)
        if response.status != 200:
            raise RuntimeError(f"GET {path} on {self.name}: {response.status}")
        return bytes(response.data)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 600.0) -> float:
        """Signal and wait; returns the seconds until exit. Kills after ``timeout``."""
        started = time.perf_counter()
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(5)
        return time.perf_counter() - started


@contextlib.contextmanager
def running(server: Server) -> Iterator[Server]:
    """Stop ``server`` on leaving, also on an exception or Ctrl-C."""
    try:
        yield server
    finally:
        server.stop()


# -- Prometheus histograms ----------------------------------------------------------------

_BUCKET = re.compile(r"^(\w+)_bucket\{([^}]*)\} (\S+)$")
_LABEL = re.compile(r'(\w+)="([^"]*)"')


def histogram(text: str, name: str, **labels: str) -> dict[float, float]:
    """Cumulative bucket counts ``{le: count}`` of one histogram series in /metrics text."""
    out: dict[float, float] = {}
    for line in text.splitlines():
        match = _BUCKET.match(line)
        if not match or match.group(1) != name:
            continue
        found = dict(_LABEL.findall(match.group(2)))
        if all(found.get(k) == v for k, v in labels.items()):
            out[float(found["le"])] = float(match.group(3))
    return out


def histogram_quantile(q: float, before: dict[float, float], after: dict[float, float]) -> float:
    """Prometheus' ``histogram_quantile`` over the observations between two scrapes:
    linear interpolation inside the bucket the quantile falls in (NaN if none)."""
    bounds = sorted(after)
    counts = [after[b] - before.get(b, 0.0) for b in bounds]
    total = counts[-1] if counts else 0.0
    if total <= 0:
        return math.nan
    rank = q * total
    lower, below = 0.0, 0.0
    for bound, count in zip(bounds, counts, strict=True):
        if count >= rank:
            if math.isinf(bound):
                return lower
            return lower + (bound - lower) * (rank - below) / max(count - below, 1e-12)
        lower, below = bound, count
    return lower
