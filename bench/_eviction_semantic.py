"""The semantic cache in bench/eviction.py: GPTCache's mock_data queries with Zipf
popularity, replayed through the real in-process SemanticCache (MiniLM embedding,
HNSW, the category threshold). The queries are GPTCache's pairs, vendored in
bench/data/gptcache/ (MIT); each pair is one "question", and a request asks it in
either wording. Two uses (both need the ``embed`` extra):

- :func:`semantic_trace` — without any quota: a hit yields the id of the entry that
  answered, a miss inserts the prompt and yields the new entry's id; the sequence of
  ids is the trace an eviction policy of that category would see (replayed by
  bench/eviction.py through every policy). Built once and cached as a file.
- :func:`semantic_quota_runs` — the same kind of request sequence through the engine
  itself with the category's quota (``max_entries``) at a fraction of the distinct
  questions and its ``eviction`` set to each policy name, so the semantic cache's
  own eviction path (the one :class:`~semcached.index.eviction.EvictionPolicy`
  interface the KV tiers use too) picks the victims. It reports each run's hit rate
  and how many hits answered the question that was asked (a hit from a paraphrase
  of another question is wrong). ``python bench/_eviction_semantic.py --quota``
  prints the table (:func:`print_semantic_quota_table`).

Every distinct text is embedded once (:func:`~_semantic_common.minilm_vectors`) and its
vector sent with each request (the engine then skips embedding; its exact tier still
reads the text), so a run costs index searches and LMDB writes, not model calls.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson
from _datasets import GPTCACHE_PAIRS
from _semantic_common import minilm_engine, minilm_vectors

from semcached.cachepolicy.categories import DEFAULT_CATEGORY, CategoryTable
from semcached.cachepolicy.policies import EVICTION_POLICIES, eviction_factory
from semcached.service.semantic.engine import Insert, Lookup, LookupResult, SemanticCache

__all__ = [
    "DEFAULT_FRACTIONS",
    "DEFAULT_REQUESTS",
    "DEFAULT_SEED",
    "HitTally",
    "QuotaRun",
    "answered_question",
    "load_questions",
    "main",
    "print_semantic_quota_table",
    "quota_entries",
    "semantic_quota_runs",
    "semantic_trace",
    "zipf_requests",
]

NAMESPACE = "bench"
DEFAULT_FRACTIONS = (0.05, 0.10, 0.20)
# bench/eviction.py's semantic trace (its SEED and request count): with these the quota
# runs replay the very requests whose unbounded trace it feeds to every policy.
DEFAULT_REQUESTS = 30_000
DEFAULT_SEED = 7
_NO_BYTE_BOUND = 1 << 40  # the quota is in entries; bytes never bind
SCRATCH = Path("/dev/shm")
"""Memory-backed where there is one (Linux): fsync there returns at once."""


def load_questions(pairs: Path = GPTCACHE_PAIRS) -> list[str]:
    """The texts of the pairs file: question ``q`` is asked as text ``2q`` or ``2q + 1``."""
    rows = orjson.loads(pairs.read_bytes())
    return [t for r in rows for t in (r["origin"], r["similar"])]


def zipf_requests(questions: int, requests: int, *, alpha: float, seed: int) -> list[int]:
    """The text index of each request: a question drawn by Zipf(``alpha``) popularity
    over a seeded random ranking, in a random one of its two wordings.

    Both :func:`semantic_trace` and :func:`semantic_quota_runs` replay it, so the
    policies of bench/eviction.py and those of the quota runs face the same requests.
    """
    rng = np.random.default_rng([seed, 4])
    w = 1.0 / np.arange(1, questions + 1, dtype=np.float64) ** alpha
    question = rng.permutation(questions)[rng.choice(questions, size=requests, p=w / w.sum())]
    wording = rng.integers(0, 2, size=requests)
    order: list[int] = (2 * question + wording).tolist()
    return order


# -- the unbounded trace ---------------------------------------------------------------------


async def _replay(texts: list[str], order: list[int], workdir: Path) -> list[int]:
    # The default category's threshold; quotas far above the data (no eviction here).
    table = CategoryTable().with_overrides(
        {"default": {"max_entries": 10**7, "max_bytes": _NO_BYTE_BOUND}}
    )
    trace: list[int] = []
    async with minilm_engine(workdir, table) as engine:
        for i in order:
            result = await engine.lookup(Lookup(NAMESPACE, text=texts[i]))
            if result.hit and result.entry_id is not None:
                trace.append(result.entry_id)
            else:
                inserted = await engine.insert(Insert(NAMESPACE, texts[i], orjson.dumps(i)))
                trace.append(inserted.entry_id)
    return trace


def semantic_trace(
    cache_file: Path, *, requests: int, alpha: float, seed: int, pairs: Path = GPTCACHE_PAIRS
) -> list[int]:
    """The trace (entry ids), from ``cache_file`` if it was built with the same
    parameters, else built now and written there."""
    params = {"requests": requests, "alpha": alpha, "seed": seed, "pairs": str(pairs)}
    if cache_file.exists():
        cached = orjson.loads(cache_file.read_bytes())
        if cached.get("params") == params:
            return list(cached["trace"])
    texts = load_questions(pairs)
    order = zipf_requests(len(texts) // 2, requests, alpha=alpha, seed=seed)
    with tempfile.TemporaryDirectory(prefix="semcached-evict-") as tmp:
        trace = asyncio.run(_replay(texts, order, Path(tmp)))
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    cache_file.write_bytes(orjson.dumps({"params": params, "trace": trace}))
    return trace


# -- under a quota ---------------------------------------------------------------------------


def quota_entries(fraction: float, questions: int) -> int:
    """The category's ``max_entries`` for a quota of ``fraction`` of the distinct
    questions (rounded, at least 1: a category must hold something)."""
    if not (fraction > 0 and np.isfinite(fraction)):
        raise ValueError(f"a quota fraction must be positive and finite, got {fraction}")
    if questions < 1:
        raise ValueError("no questions")
    return max(1, round(fraction * questions))


def answered_question(result: LookupResult) -> int | None:
    """The question whose entry answered a lookup (the index the insert stored as the
    response), None on a miss."""
    if not result.hit:
        return None
    if result.document is None:
        raise ValueError(f"a hit without its document (entry {result.entry_id})")
    question = orjson.loads(result.document.response)
    if not isinstance(question, int):
        raise ValueError(f"entry {result.entry_id} holds no question index: {question!r}")
    return question


@dataclass(slots=True)
class HitTally:
    """Counts of one replay: requests, hits, and among the hits the exact-tier ones and
    the right ones (the entry of the question asked, in either wording). A semantic
    hit from a paraphrase of another question counts as a hit but not a right one, so
    a policy that keeps the cache full of near neighbours does not score for them."""

    requests: int = 0
    hits: int = 0
    right: int = 0
    exact: int = 0

    def record(self, asked: int, answered: int | None, *, exact: bool = False) -> None:
        """One request for question ``asked``; ``answered``: the question of the entry
        that answered it (None: a miss); ``exact``: answered by the exact tier."""
        self.requests += 1
        if answered is None:
            return
        self.hits += 1
        self.right += answered == asked
        self.exact += exact


@dataclass(frozen=True, slots=True)
class QuotaRun:
    """One policy at one quota: the counts of its replay, the evictions the engine
    made, the most entries it held after an insert had evicted (at most
    ``max_entries`` when the quota holds) and the wall seconds of the replay."""

    policy: str
    fraction: float
    max_entries: int
    requests: int
    hits: int
    right_hits: int
    exact_hits: int
    evictions: int
    peak_entries: int
    seconds: float

    @property
    def hit_rate(self) -> float:
        return self.hits / self.requests if self.requests else 0.0

    @property
    def right_share(self) -> float:
        """Of the hits, the share that answered the question asked."""
        return self.right_hits / self.hits if self.hits else 0.0

    @property
    def right_hit_rate(self) -> float:
        """Requests answered with the right question's entry: what the gateway saves."""
        return self.right_hits / self.requests if self.requests else 0.0


async def _replay_quota(
    engine: SemanticCache, texts: Sequence[str], vectors: dict[int, np.ndarray], order: list[int]
) -> tuple[HitTally, int]:
    """Lookup, and on a miss insert, each request of ``order``; the tally and the
    most entries held after any insert."""
    tally = HitTally()
    peak = 0
    for i in order:
        asked = i // 2
        result = await engine.lookup(
            Lookup(NAMESPACE, text=texts[i], vector=vectors[i], category=DEFAULT_CATEGORY)
        )
        tally.record(asked, answered_question(result), exact=result.strategy == "exact")
        if not result.hit:
            await engine.insert(
                Insert(
                    NAMESPACE,
                    texts[i],
                    orjson.dumps(asked),
                    category=DEFAULT_CATEGORY,
                    vector=vectors[i],
                )
            )
            peak = max(peak, len(engine))
    return tally, peak


async def _quota_runs(
    policies: Sequence[str],
    fractions: Sequence[float],
    texts: Sequence[str],
    order: list[int],
    *,
    runtime: str,
    scratch: Path | None,
    log: Callable[[str], None] | None,
) -> list[QuotaRun]:
    asked = sorted(set(order))
    embedded = await minilm_vectors([texts[i] for i in asked], runtime=runtime)
    vectors = dict(zip(asked, embedded, strict=True))
    questions = len(texts) // 2
    runs: list[QuotaRun] = []
    for fraction in fractions:
        max_entries = quota_entries(fraction, questions)
        for name in policies:
            table = CategoryTable().with_overrides(
                {
                    DEFAULT_CATEGORY: {
                        "max_entries": max_entries,
                        "max_bytes": _NO_BYTE_BOUND,
                        "eviction": name,
                    }
                }
            )
            with tempfile.TemporaryDirectory(prefix="semcached-semq-", dir=scratch) as tmp:
                # One executor thread: the replay is sequential, and the machine shared.
                async with minilm_engine(Path(tmp), table, threads=1, runtime=runtime) as engine:
                    started = time.perf_counter()
                    tally, peak = await _replay_quota(engine, texts, vectors, order)
                    seconds = time.perf_counter() - started
                    evictions = engine.stats()[DEFAULT_CATEGORY].evictions
            run = QuotaRun(
                policy=name,
                fraction=fraction,
                max_entries=max_entries,
                requests=tally.requests,
                hits=tally.hits,
                right_hits=tally.right,
                exact_hits=tally.exact,
                evictions=evictions,
                peak_entries=peak,
                seconds=seconds,
            )
            runs.append(run)
            if log is not None:
                log(
                    f"{name} at {fraction:.0%} ({max_entries} entries): hit rate "
                    f"{run.hit_rate:.3f}, right {run.right_share:.3f} of hits, "
                    f"{seconds:.1f} s"
                )
    return runs


def semantic_quota_runs(
    policies: Sequence[str] = EVICTION_POLICIES,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    *,
    requests: int = DEFAULT_REQUESTS,
    seed: int = DEFAULT_SEED,
    alpha: float = 1.0,
    pairs: Path = GPTCACHE_PAIRS,
    runtime: str = "onnx",
    scratch: Path | None = None,
    log: Callable[[str], None] | None = None,
) -> list[QuotaRun]:
    """Replay one seeded Zipf(``alpha``) sequence of ``requests`` through a fresh
    in-process SemanticCache for each quota fraction and each policy name (what a
    category's ``eviction`` accepts; ValueError before any work for an unknown one),
    in that order: fractions outer, policies inner. ``log``: a line per run.

    ``scratch``: where each run's LMDB lives (default: :data:`SCRATCH`). Every miss
    commits an insert and every eviction a delete, each fsynced; on a busy disk that
    wait, not the cache, set the pace (3 ms a request measured), and it decides
    nothing the table reports."""
    for name in policies:
        eviction_factory(name)  # an unknown name fails now, not after the first runs
    texts = load_questions(pairs)
    for fraction in fractions:
        quota_entries(fraction, len(texts) // 2)
    order = zipf_requests(len(texts) // 2, requests, alpha=alpha, seed=seed)
    return asyncio.run(
        _quota_runs(
            policies,
            fractions,
            texts,
            order,
            runtime=runtime,
            scratch=SCRATCH if scratch is None and SCRATCH.is_dir() else scratch,
            log=log,
        )
    )


def print_semantic_quota_table(rows: Sequence[QuotaRun]) -> None:
    """The runs as a markdown table, one row per quota and policy."""
    print(
        "| quota | max entries | policy | hit rate | right of hits | right hit rate "
        "| exact hits | evictions | peak entries | s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r.fraction:.0%} | {r.max_entries} | {r.policy} | {r.hit_rate:.3f} "
            f"| {r.right_share:.3f} | {r.right_hit_rate:.3f} | {r.exact_hits} "
            f"| {r.evictions} | {r.peak_entries} | {r.seconds:.1f} |"
        )


def _csv_floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def _csv_names(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def main(argv: Sequence[str] | None = None) -> list[QuotaRun]:
    """``--quota``: run :func:`semantic_quota_runs` and print its table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--quota", action="store_true", help="replay the trace under category quotas"
    )
    parser.add_argument(
        "--policies",
        type=_csv_names,
        default=list(EVICTION_POLICIES),
        help=f"comma-separated eviction names (default: {','.join(EVICTION_POLICIES)})",
    )
    parser.add_argument(
        "--fractions",
        type=_csv_floats,
        default=list(DEFAULT_FRACTIONS),
        help="quotas as fractions of the distinct questions (default: 0.05,0.1,0.2)",
    )
    parser.add_argument("--requests", type=int, default=DEFAULT_REQUESTS)
    parser.add_argument("--alpha", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--pairs", type=Path, default=GPTCACHE_PAIRS)
    parser.add_argument("--runtime", choices=("onnx", "onnx-int8", "torch"), default="onnx")
    args = parser.parse_args(argv)
    if not args.quota:
        parser.error("nothing to do: pass --quota")
    rows = semantic_quota_runs(
        args.policies,
        args.fractions,
        requests=args.requests,
        seed=args.seed,
        alpha=args.alpha,
        pairs=args.pairs,
        runtime=args.runtime,
        log=lambda line: print(line, flush=True),
    )
    questions = len(load_questions(args.pairs)) // 2
    print(
        f"\nSemantic cache under a quota: {args.requests} requests, Zipf({args.alpha}) over "
        f"{questions} questions (either wording), seed {args.seed}\n"
    )
    print_semantic_quota_table(rows)
    return rows


if __name__ == "__main__":
    main()
