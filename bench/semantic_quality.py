"""Hit quality of the semantic cache on GPTCache's benchmark data, scored GPTCache's way.

GPTCache's benchmark (examples/benchmark/benchmark_sqlite_faiss_onnx.py) inserts
every ``origin`` with its row number as the answer, then asks every ``similar``:
a returned answer equal to the row number is a right hit, any other answer a wrong
hit, no answer a miss. This script does the same through semcached's engine
in-process (exact tier, MiniLM embedding, HNSW search, threshold policy) and prints
its rows beside GPTCache's published ones.

    python bench/semantic_quality.py                     # GPTCache's pairs, default sweep
    python bench/semantic_quality.py --pairs pairs.json  # any pairs file of either format
    python bench/semantic_quality.py --csv               # threshold,right,wrong,miss,false_hit_rate

Pairs files: a JSON array of ``{"origin", "similar"}`` (positives only) or of
``{"text_a", "text_b", "label"}`` (label 1 = same meaning; then the false-hit rate on
the negatives is reported too). The default is GPTCache's file, vendored with its MIT
license in bench/data/gptcache/; other data sets (e.g. the STS Benchmark, which may not
be redistributed) are passed with ``--pairs`` (bench/data/README.md). Needs the
``embed`` extra.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import orjson
from _datasets import GPTCACHE_PAIRS, require
from _semantic_common import minilm_engine

from semcached.cachepolicy.categories import CategoryTable
from semcached.service.semantic.engine import Insert, Lookup

# GPTCache examples/README.md: SQLite + FAISS + ONNX (paraphrase-albert), SearchDistance.
GPTCACHE_ROWS = {0.95: (425, 25, 549), 0.90: (804, 77, 118), 0.80: (904, 92, 3)}
SWEEP = (0.95, 0.92, 0.90, 0.88, 0.86, 0.85, 0.84, 0.82, 0.80, 0.75, 0.70)


@dataclass(frozen=True, slots=True)
class Pair:
    stored: str
    asked: str
    positive: bool


@dataclass(slots=True)
class Score:
    right: int = 0
    wrong: int = 0
    miss: int = 0
    negative_hits: int = 0
    negatives: int = 0

    @property
    def false_hit_rate(self) -> float | None:
        return self.negative_hits / self.negatives if self.negatives else None


def load_pairs(path: Path) -> list[Pair]:
    where = "Pass a pairs file with --pairs; bench/data/README.md says where to get data sets."
    rows = orjson.loads(require(path, "a JSON array of pairs", where).read_bytes())
    if not isinstance(rows, list) or not rows:
        raise SystemExit(f"{path}: expected a non-empty JSON array")
    if "origin" in rows[0]:
        return [Pair(r["origin"], r["similar"], True) for r in rows]
    return [Pair(r["text_a"], r["text_b"], bool(int(r["label"]))) for r in rows]


async def score(pairs: list[Pair], thresholds: list[float], workdir: Path) -> dict[float, Score]:
    # One category whose bounds let the sweep go anywhere; quotas far above the data.
    table = CategoryTable().with_overrides(
        {
            "bench": {
                "threshold": 0.9,
                "min_threshold": -1.0,
                "max_threshold": 1.0,
                "max_entries": 10**7,
                "max_bytes": 1 << 40,
            }
        }
    )
    scores: dict[float, Score] = {}
    lookup_s = 0.0
    async with minilm_engine(workdir, table, threads=4) as engine:
        started = time.perf_counter()
        await engine.insert_many(
            [
                Insert("bench", p.stored, orjson.dumps(i), category="bench")
                for i, p in enumerate(pairs)
            ]
        )
        insert_s = time.perf_counter() - started
        for threshold in thresholds:
            started = time.perf_counter()
            results = await engine.lookup_many(
                [
                    Lookup("bench", text=p.asked, category="bench", threshold=threshold)
                    for p in pairs
                ]
            )
            lookup_s += time.perf_counter() - started
            s = scores[threshold] = Score()
            for i, (pair, result) in enumerate(zip(pairs, results, strict=True)):
                if not pair.positive:
                    s.negatives += 1
                    s.negative_hits += result.hit
                elif not result.hit:
                    s.miss += 1
                elif result.document is not None and orjson.loads(result.document.response) == i:
                    s.right += 1
                else:
                    s.wrong += 1
    print(
        f"# {len(pairs)} pairs; insert {insert_s:.2f} s ({len(pairs) / insert_s:.0f}/s, "
        f"embedding included); lookups {lookup_s / len(thresholds):.2f} s per threshold",
        file=sys.stderr,
    )
    return scores


def print_table(scores: dict[float, Score], pairs: list[Pair]) -> None:
    labelled = any(not p.positive for p in pairs)
    header = "| threshold | right | wrong | miss | GPTCache right / wrong / miss |"
    rule = "|---|---|---|---|---|"
    if labelled:
        header, rule = header + " false-hit rate |", rule + "---|"
    print(header)
    print(rule)
    for threshold, s in scores.items():
        theirs = GPTCACHE_ROWS.get(threshold)
        ref = " / ".join(map(str, theirs)) if theirs else ""
        row = f"| {threshold:.2f} | {s.right} | {s.wrong} | {s.miss} | {ref} |"
        if labelled:
            row += f" {s.false_hit_rate:.3f} |"
        print(row)
    winners = [t for t, s in scores.items() if s.right > 804 and s.wrong < 77]
    print(
        "\nGoal (more than 804 right with fewer than 77 wrong): "
        + (f"met at {', '.join(f'{t:.2f}' for t in winners)}" if winners else "not met")
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--pairs",
        type=Path,
        default=GPTCACHE_PAIRS,
        help="pairs JSON file (default: GPTCache's, vendored in bench/data/gptcache/)",
    )
    parser.add_argument(
        "--thresholds", type=float, nargs="+", default=list(SWEEP), help="thresholds to score"
    )
    parser.add_argument("--csv", action="store_true", help="machine-readable lines only")
    args = parser.parse_args(argv)
    pairs = load_pairs(args.pairs)
    with tempfile.TemporaryDirectory(prefix="semcached-bench-") as workdir:
        scores = asyncio.run(score(pairs, args.thresholds, Path(workdir)))
    if args.csv:
        print("threshold,right,wrong,miss,false_hit_rate")
        for t, s in scores.items():
            rate = "" if s.false_hit_rate is None else f"{s.false_hit_rate:.4f}"
            print(f"{t},{s.right},{s.wrong},{s.miss},{rate}")
    else:
        print_table(scores, pairs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
