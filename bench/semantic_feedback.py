"""Feedback simulation: does the served false-hit rate converge to each category's budget?

Labelled pairs are streamed as lookups through the semantic engine in-process (MiniLM
embeddings, HNSW, LMDB, the real feedback path): every pair's ``text_a`` is cached
first, each in a partition of its own, then each ``text_b`` is looked up in its pair's
partition (one per pair and category: the exact tier keys a prompt by namespace and
partition, so the same prompt in two categories must not share one). A hit is right
when the pair is a positive, a false hit when it is a negative. (One partition per
pair, because STS-B reuses sentences across pairs with no label between them: in a
shared cache a third of the hits would be unlabelled. The partitions are spread over
64 namespaces to keep each index small.) A fraction
(``--feedback``, default 10%) of the served hits is reported through the engine's
``feedback`` and recalibrates the category's threshold toward its
``max_false_hit_rate``. A report of a wrong hit removes the entry, as in the daemon;
the bench puts it back at once (unless ``--no-reinsert``), so that every pass asks the
same questions of the same cache and the rates measure the threshold alone.

The same run measures, on the same lookups:

- ``static``: the configured threshold with no feedback (what the cache does without it);
- ``budget <b>``: one category per budget, starting from the same threshold;
- ``hindsight <b>`` (in the summary): the lowest single threshold whose served
  false-hit rate over the whole stream is within the budget, chosen knowing every label
  -- the best a static threshold could do, and not available to a real cache.

It prints the served false-hit rate, recall and threshold per window of lookups, then a
summary over the last pass. Data (never vendored; see bench/data/README.md):

    python bench/semantic_feedback.py --stsb ../shared/data/stsb          # train+dev+test
    python bench/semantic_feedback.py --stsb DIR --splits test --passes 6
    python bench/semantic_feedback.py --pairs pairs.json   # [{"text_a","text_b","label"}]

STS-B labels as the issue defines them: positive for a score of 4.0 or more, hard
negative for 2.0 to 3.5, easy negative below 2.0; pairs between 3.5 and 4.0 are left
out. Nothing is trained here, so every split may be streamed. Needs the ``embed`` extra.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import orjson
import xxhash
from _datasets import require
from _stsb import load_stsb as read_stsb

from semcached.cachepolicy.calibration import BANDS
from semcached.cachepolicy.categories import CategoryTable
from semcached.cachepolicy.verify import VERIFIER_MIN_THRESHOLD, TreeVerifier
from semcached.index.docstore import DocumentStore
from semcached.index.feedback import FeedbackStore
from semcached.index.hnsw import HnswlibIndex
from semcached.index.lmdb_env import LmdbEnvironment
from semcached.index.vector_index import VectorIndex
from semcached.service.config import EmbeddingSettings
from semcached.service.semantic.embedding import create_embedder
from semcached.service.semantic.embedding.base import Embedder
from semcached.service.semantic.engine import FeedbackReport, Insert, Lookup, SemanticCache
from semcached.service.semantic.feedback import FeedbackBook

SHARDS = 64
STATIC = "static"
WHERE = "Get the STS Benchmark (bench/data/README.md) and pass its folder with --stsb."


@dataclass(frozen=True, slots=True)
class Pair:
    text_a: str
    text_b: str
    positive: bool
    kind: str  # positive, hard, easy, negative


def load_stsb(folder: Path, splits: list[str]) -> list[Pair]:
    """The labelled pairs of ``splits``; the ambiguous band [3.5, 4.0) left out."""
    return [
        Pair(p.stored, p.asked, p.kind == "positive", p.kind)
        for split in splits
        for p in read_stsb(folder, split)
        if p.kind != "ambiguous"
    ]


def load_pairs(path: Path) -> list[Pair]:
    rows = orjson.loads(require(path, "a JSON array of pairs", WHERE).read_bytes())
    if not isinstance(rows, list) or not rows:
        raise SystemExit(f"{path}: expected a non-empty JSON array")
    if "origin" in rows[0]:
        return [Pair(r["origin"], r["similar"], True, "positive") for r in rows]
    out = []
    for r in rows:
        positive = bool(int(r["label"]))
        out.append(Pair(r["text_a"], r["text_b"], positive, "positive" if positive else "negative"))
    return out


@dataclass(slots=True)
class Tally:
    """One category's outcomes over some lookups."""

    lookups: int = 0
    positives: int = 0
    hits: int = 0
    wrong: int = 0
    right: int = 0

    def add(self, pair: Pair, hit: bool, right: bool) -> None:
        self.lookups += 1
        self.positives += pair.positive
        self.hits += hit
        self.wrong += hit and not right
        self.right += right

    @property
    def false_hit_rate(self) -> float:
        return self.wrong / self.hits if self.hits else 0.0

    @property
    def recall(self) -> float:
        return self.right / self.positives if self.positives else 0.0


@dataclass(slots=True)
class Run:
    windows: list[dict[str, tuple[Tally, str]]] = field(default_factory=list)
    last_pass: dict[str, Tally] = field(default_factory=dict)
    reports: dict[str, int] = field(default_factory=dict)
    removed: dict[str, int] = field(default_factory=dict)
    best: list[tuple[float, bool]] = field(default_factory=list)  # (similarity, right)
    seconds: float = 0.0


def categories(threshold: float, budgets: list[float]) -> CategoryTable:
    common = {"threshold": threshold, "max_entries": 10**7, "max_bytes": 1 << 40}
    overrides: dict[str, dict[str, object]] = {
        STATIC: {**common, "min_threshold": -1.0, "max_threshold": 1.0}
    }
    for b in budgets:
        overrides[budget_name(b)] = {**common, "min_threshold": 0.5, "max_false_hit_rate": b}
    return CategoryTable().with_overrides(overrides)


def where(pair: int) -> str:
    """The namespace of a pair's partition."""
    return f"shard{pair % SHARDS}"


def budget_name(budget: float) -> str:
    return f"budget{budget:g}"


async def embed(embedder: Embedder, texts: list[str], cache: Path | None) -> np.ndarray:
    """MiniLM embeddings of ``texts``, from ``cache`` (bench/out/) when it holds them."""
    digest = xxhash.xxh3_64(b"\x00".join(t.encode() for t in texts)).hexdigest()
    path = None if cache is None else cache / f"minilm-{digest}.npy"
    if path is not None and path.is_file():
        return np.load(path)
    started = time.perf_counter()
    rows = [await embedder.embed(texts[lo : lo + 512]) for lo in range(0, len(texts), 512)]
    matrix = np.concatenate(rows).astype(np.float32)
    print(
        f"# embedded {len(texts)} texts in {time.perf_counter() - started:.1f} s", file=sys.stderr
    )
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, matrix)
    return matrix


def new_index(dim: int) -> VectorIndex:
    return HnswlibIndex(dim, m=16, ef_construction=200, ef_search=128)


async def simulate(pairs: list[Pair], args: argparse.Namespace, workdir: Path) -> Run:
    table = categories(args.threshold, args.budgets)
    executor = ThreadPoolExecutor(2, thread_name_prefix="bench")
    env = LmdbEnvironment(workdir / "lmdb", initial_map_bytes=64 << 20, max_map_bytes=8 << 30)
    texts = sorted({p.text_a for p in pairs} | {p.text_b for p in pairs})
    verifier = TreeVerifier.load() if args.verify else None
    # With the verifier, lookups and inserts send text (verification is for prompts
    # the daemon embeds): keep every text's embedding and tokens after the first call.
    embedder = create_embedder(
        EmbeddingSettings(backend="minilm", cache_entries=len(texts) + 1 if args.verify else 0),
        executor,
        token_cache_bytes=(len(texts) + 1) * 16 << 10 if args.verify else 0,
    )
    await embedder.open()
    vectors = dict(zip(texts, await embed(embedder, texts, args.cache), strict=True))
    engine = SemanticCache(
        store=DocumentStore(env),
        index_factory=new_index,
        embedder=embedder,
        categories=table,
        dim=embedder.dim,
        executor=executor,
        feedback=FeedbackBook(
            table,
            FeedbackStore(env, bands=BANDS),
            verifier_threshold=VERIFIER_MIN_THRESHOLD if verifier is None else verifier.threshold,
        ),
        verifier=verifier,
    )
    await engine.open()
    run = Run()
    try:
        names = [STATIC, *(budget_name(b) for b in args.budgets)]
        for name in names:
            inserts = [
                Insert(where(i), p.text_a, b"0", category=name, partition=f"{name}:{i}",
                       vector=None if args.verify else vectors[p.text_a])
                for i, p in enumerate(pairs)
            ]  # fmt: skip
            for lo in range(0, len(inserts), 1024):
                await engine.insert_many(inserts[lo : lo + 1024])
        run.seconds = await stream(engine, pairs, vectors, names, args=args, run=run)
    finally:
        await engine.close()
        await embedder.close()
        env.close()
        executor.shutdown()
    return run


async def stream(
    engine: SemanticCache,
    pairs: list[Pair],
    vectors: dict[str, np.ndarray],
    names: list[str],
    *,
    args: argparse.Namespace,
    run: Run,
) -> float:
    rng = np.random.default_rng(args.seed)
    started = time.perf_counter()
    window = {n: Tally() for n in names}
    run.reports = dict.fromkeys(names, 0)
    run.removed = dict.fromkeys(names, 0)
    for turn in range(args.passes):
        last = turn == args.passes - 1
        run.last_pass = {n: Tally() for n in names} if last else run.last_pass
        for step, index in enumerate(rng.permutation(len(pairs)).tolist()):
            pair = pairs[index]
            vector = vectors[pair.text_b]
            space = where(index)
            if turn == 0:  # every pair's similarity, for the hindsight rows
                best = await engine.lookup(
                    Lookup(space, vector=vector, category=STATIC, partition=f"{STATIC}:{index}",
                           threshold=-1.0)
                )  # fmt: skip
                run.best.append((best.similarity or -1.0, pair.positive))
            for name in names:
                result = await engine.lookup(
                    Lookup(space, text=pair.text_b, category=name, partition=f"{name}:{index}")
                    if args.verify
                    else Lookup(space, vector=vector, category=name, partition=f"{name}:{index}")
                )
                right = result.hit and pair.positive
                window[name].add(pair, result.hit, right)
                if last:
                    run.last_pass[name].add(pair, result.hit, right)
                if name != STATIC and result.lookup_id is not None and rng.random() < args.feedback:
                    report = FeedbackReport(right, lookup_id=result.lookup_id)
                    recorded = await engine.feedback(report, lambda _: True)
                    run.reports[name] += 1
                    if recorded is not None and recorded.removed:
                        run.removed[name] += 1
                        if args.reinsert:  # a fresh answer for the prompt, as a gateway's
                            await engine.insert(
                                Insert(space, pair.text_a, b"0", category=name,
                                       partition=f"{name}:{index}",
                                       vector=None if args.verify else vectors[pair.text_a])
                            )  # fmt: skip
            if (turn * len(pairs) + step + 1) % args.window == 0:
                run.windows.append({n: (window[n], rule(engine, n)) for n in names})
                window = {n: Tally() for n in names}
    return time.perf_counter() - started


def rule(engine: SemanticCache, name: str) -> str:
    """The category's threshold in force, and its verifier threshold once calibrated."""
    text = f"{engine.calibrations()[name].threshold:.3f}"
    verified = engine.verified_calibrations().get(name)
    if verified is not None and verified.source != "off":
        text += f" (p {verified.threshold:.2f})"
    return text


def hindsight(best: list[tuple[float, bool]], positives: int, budget: float) -> tuple[float, Tally]:
    """The lowest static threshold whose served false-hit rate is within ``budget``."""
    ordered = sorted(best, key=lambda x: -x[0])
    chosen, tally = 1.0, Tally(positives=positives)
    wrong = right = 0
    for hits, (similarity, ok) in enumerate(ordered, start=1):
        wrong += not ok
        right += ok
        if wrong / hits <= budget:
            chosen = similarity
            tally = Tally(len(best), positives, hits, wrong, right)
    return chosen, tally


def print_tables(run: Run, pairs: list[Pair], args: argparse.Namespace) -> None:
    names = list(run.last_pass)
    print(f"Served false-hit rate / recall / threshold per window of {args.window} lookups "
          f"({len(pairs)} pairs x {args.passes} passes, feedback on {args.feedback:.0%} of "
          f"served hits, configured threshold {args.threshold})\n")  # fmt: skip
    print("| lookups | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for w, row in enumerate(run.windows):
        cells = [f"{t.false_hit_rate:.3f} / {t.recall:.2f} / {th}" for t, th in row.values()]
        print(f"| {(w + 1) * args.window} | " + " | ".join(cells) + " |")
    positives = sum(p.positive for p in pairs)
    print(f"\nLast pass ({len(pairs)} lookups per category, {positives} positives):\n")
    print("| category | budget | threshold at end | served false-hit rate | within budget "
          "± 1 pt | recall | reports | entries removed |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    ends = run.windows[-1] if run.windows else {}
    for name in names:
        t = run.last_pass[name]
        budget = next((b for b in args.budgets if budget_name(b) == name), None)
        ok = "" if budget is None else ("yes" if abs(t.false_hit_rate - budget) <= 0.01 or
                                        t.false_hit_rate <= budget else "no")  # fmt: skip
        threshold = ends[name][1] if name in ends else ""
        print(f"| {name} | {'-' if budget is None else budget} | {threshold} | "
              f"{t.false_hit_rate:.3f} | {ok} | {t.recall:.3f} | {run.reports[name]} | "
              f"{run.removed[name]} |")  # fmt: skip
    for budget in args.budgets:
        chosen, t = hindsight(run.best, positives, budget)
        print(f"| hindsight {budget:g} (static, all labels known) | {budget} | {chosen:.3f} | "
              f"{t.false_hit_rate:.3f} | | {t.recall:.3f} | | |")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--stsb", type=Path, help="folder of sts-{train,dev,test}.csv")
    source.add_argument("--pairs", type=Path, help="JSON array of {text_a, text_b, label}")
    parser.add_argument("--splits", nargs="+", default=["train", "dev", "test"])
    parser.add_argument("--budgets", type=float, nargs="+", default=[0.02, 0.05])
    parser.add_argument("--threshold", type=float, default=0.85, help="configured threshold")
    parser.add_argument("--feedback", type=float, default=0.10, help="share of hits reported")
    parser.add_argument("--passes", type=int, default=3, help="times the pairs are streamed")
    parser.add_argument("--window", type=int, default=2000, help="lookups per table row")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--verify",
        action="store_true",
        help="run the shipped hit verifier (lookups and inserts then send text, which the "
        "engine embeds; feedback calibrates the verified and the unverified rule apart)",
    )
    parser.add_argument(
        "--no-reinsert",
        dest="reinsert",
        action="store_false",
        help="leave entries reported wrong out (default: put them back at once, so that "
        "every pass asks the same questions of the same cache and the rates show the "
        "threshold's effect alone, not the removals')",
    )
    parser.add_argument(
        "--cache",
        type=Path,
        default=Path(__file__).resolve().parent / "out" / "embeddings",
        help="where embeddings are kept between runs (default bench/out/embeddings)",
    )
    args = parser.parse_args(argv)
    pairs = load_stsb(args.stsb, args.splits) if args.stsb else load_pairs(args.pairs)
    with tempfile.TemporaryDirectory(prefix="semcached-feedback-") as workdir:
        run = asyncio.run(simulate(pairs, args, Path(workdir)))
    print(f"# streamed in {run.seconds:.1f} s", file=sys.stderr)
    print_tables(run, pairs, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
