"""RAG chunk KV reuse on a real model: quality vs recompute for prefix caching, naive
chunk reuse, first-k, Cache-Craft's planned recompute and a random control.

    python bench/rag_reuse.py                 # the full run (opt-in: about 40 minutes)
    python bench/rag_reuse.py --quick         # the short run (a few minutes)
    python bench/rag_reuse.py --quick --csv   # one line per mode, for scripts
    python bench/rag_reuse.py --device cuda --prompts 12   # TTFT on a GPU: full prefill
                                              # vs reuse via the GPU tier vs the host tier

Why one file of about 570 lines: most of it is the ``Bench`` class, whose storing and
modes share one state (the model, the client, the chunks stored, the prefix store, the
system part's KV); split, that state would be passed between modules. What has a role
of its own lives beside it: the workload in bench/_rag_workload.py, the results, table,
goals and plot in bench/_rag_report.py, the model loader in bench/_smollm2.py.

Model: SmolLM2-135M-Instruct (float32, one torch thread; loaded by bench/_smollm2.py).
Workload (bench/_rag_workload.py): chunks of 128-256 tokens cut from stdlib docstrings;
each prompt is a fixed system part, 3-5 chunks drawn Zipf(1) in random order and a
question, in the chat template. A ``semcached serve`` child holds the chunk KV (float32
blobs, exact) and plans; one model id per alpha is declared in ``[kv_models]`` with the
same shape (the planner reads alpha per model), and every chunk is stored under each.

The first 20 % of the prompts warm the caches: each chunk not yet stored is stored as
Cache-Craft does (its KV and attention statistics computed after the chunks it follows
in that prompt: one eager pass per prompt), and the prompt's exact prefix KV goes into
the prefix store. Measured prompts then run every mode; afterwards, off the clock, their
new chunks are stored the same way (store on miss: one variant per chunk, the context it
was first seen in) and their prefix KV is added.

Modes (every one starts from the system part's exact KV, kept in process):

- ``full``: plain prefill of the whole prompt (the reference);
- ``prefix``: prefix caching with a chained hash at chunk granularity
  (h_0 = H(system), h_i = H(h_{i-1}, chunk key i)); the longest prefix seen before is
  reused exactly from process memory, the rest is prefilled;
- ``naive``: every stored chunk fetched through the daemon's plan (zero-copy), RoPE-shifted
  into place, nothing recomputed (the plan of an alpha-0 model id);
- ``first-k f``: the first ⌈f·n⌉ tokens of each reused chunk recomputed;
- ``cachecraft a=A``: exactly the positions the daemon's plan names under alpha A;
- ``random a=A`` / ``first-k a=A``: per chunk as many tokens as the Cache-Craft plan
  picked, chosen at random (seeded) / as the first ones: the controls at equal fraction.

Chunks not stored yet (misses) are computed in every chunk mode by the same partial
forward, after the assembled cache before them. Reuse modes skip chunks whose variant
was computed after exactly the same prefix (they are exact; the plan says so).

Per mode and prompt: TTFT = fetch (wall: plan, tier read, deserialise, RoPE shift and
assembly into one cache) + compute (CPU ``process_time``, one thread: the partial
forward and the question's prefill, up to the first token's logits); the recompute
fraction (cached-chunk tokens through the model ÷ cached-chunk tokens: full = 1, naive =
0; misses excluded since no mode can avoid them), chunk tokens through the model ÷ chunk
tokens and tokens through the model ÷ prompt tokens (misses included); top-1 agreement
with ``full`` over the question's positions; KL(full ‖ mode) at the last position; exact
match of a greedy continuation. The table gives means of fractions and agreement, and
medians of times, KL and the per-prompt TTFT ratio to ``full``.

CPU ratios are not GPU ratios: only the trends carry over (notes/cachecraft.md §5).
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

import torch  # noqa: E402
import xxhash  # noqa: E402
from _rag_report import ModeResult, Row, goals, plot, print_table  # noqa: E402
from _rag_workload import Prompt, Workload, build_workload, describe  # noqa: E402
from _server import Server, running  # noqa: E402
from _smollm2 import load_smollm2  # noqa: E402
from transformers import DynamicCache  # noqa: E402

from semcached.clients import SemcachedClient  # noqa: E402
from semcached.clients.hf_forward import recompute  # noqa: E402
from semcached.clients.hf_kv import (  # noqa: E402
    RopeShifter,
    assemble_cache,
    cache_from_kv,
    cache_kwargs,
    cache_slice,
    decoder,
    from_blob,
    prompt_chunks_kv,
)
from semcached.clients.kv import PlannedChunk  # noqa: E402
from semcached.protocol.keys import chunk_key  # noqa: E402

TOKENIZER_ID = "smollm2"
DTYPE = "float32"
NAIVE_ID = "smollm2-alpha0"
DEFAULT_OUT = BENCH_DIR / "out"

Selector = Callable[[int, PlannedChunk, int], Sequence[int]]
"""(chunk index in the prompt, its plan, its tokens) -> positions in the chunk to recompute."""


@dataclass(frozen=True, slots=True)
class Config:
    chunks: int
    prompts: int
    alphas: tuple[float, ...]
    continuation: int
    seed: int
    warm_share: float = 0.2


QUICK = Config(chunks=40, prompts=12, alphas=(0.25, 0.5), continuation=16, seed=0)
FULL = Config(chunks=50, prompts=60, alphas=(0.25, 0.5, 1.0), continuation=24, seed=0)


@dataclass(frozen=True, slots=True)
class Reference:
    logits: torch.Tensor  # [question tokens, vocab]
    continuation: list[int]
    cpu_s: float
    cache: DynamicCache


def alpha_id(alpha: float) -> str:
    return f"smollm2-alpha{alpha:g}"


def write_config(path: Path, shm_dir: Path, model_ids: Sequence[tuple[str, float]]) -> Path:
    models = "".join(
        f'[kv_models."{name}"]\nlayers = 30\nkv_heads = 3\nhead_dim = 64\n'
        f'alpha = {alpha}\ntokenizer = "{TOKENIZER_ID}"\n'
        for name, alpha in model_ids
    )
    path.write_text(
        f'[kv]\nshm_dir = "{shm_dir}"\nhost_bytes = {6 << 30}\ndisk_bytes = {12 << 30}\n'
        f"lease_timeout_s = 120.0\n{models}"
    )
    return path


class Bench:
    def __init__(
        self, model: Any, client: SemcachedClient, workload: Workload, config: Config
    ) -> None:
        self.model = model
        self.client = client
        self.wl = workload
        self.config = config
        self.shifter = RopeShifter(model)
        self.model_ids = [NAIVE_ID, *(alpha_id(a) for a in config.alphas)]
        self.system = torch.tensor(workload.system_ids, dtype=torch.long)
        _, cache = self._prefill(self.system, DynamicCache(config=model.config))
        self.system_kv = cache_slice(cache)
        self.stored: set[int] = set()
        self.prefixes: dict[bytes, tuple[torch.Tensor, int]] = {}
        self._keys: dict[tuple[str, int], bytes] = {}
        parts = decoder(model)
        self._kv_shape = (len(parts.layers), 2, parts.kv_heads, parts.head_dim)
        self.eos = 2  # <|im_end|>
        # Reused chunks whose variant has another prefix, and those among them stored
        # with no prefix chunk at all (zero inter-attention scores: the planner's token
        # ranking is then by position, i.e. first-k), counted on the first alpha's plans.
        self.moved = self.moved_unscored = 0

    # --- helpers ----------------------------------------------------------------------

    def key(self, model_id: str, chunk: int) -> bytes:
        found = self._keys.get((model_id, chunk))
        if found is None:
            ids = np.asarray(self.wl.chunks[chunk].ids, dtype=np.int32)
            found = self._keys[(model_id, chunk)] = chunk_key(model_id, TOKENIZER_ID, DTYPE, ids)
        return found

    def chunk_ids(self, p: Prompt) -> list[torch.Tensor]:
        return [torch.tensor(self.wl.chunks[c].ids, dtype=torch.long) for c in p.chunks]

    def _prefill(
        self, ids: torch.Tensor, cache: DynamicCache, keep: int = 1
    ) -> tuple[torch.Tensor, DynamicCache]:
        with torch.no_grad():
            out = self.model(
                input_ids=ids.view(1, -1),
                use_cache=True,
                logits_to_keep=keep,
                **cache_kwargs(self.model, cache),
            )
        return out.logits[0], cache

    def greedy(
        self, last: torch.Tensor, cache: DynamicCache, n: int, follow: Sequence[int] = ()
    ) -> list[int]:
        """At most ``n`` greedy tokens (stopping after end-of-turn); with ``follow`` (the
        reference continuation) it stops at the first token that differs from it."""
        out: list[int] = []
        logits = last
        while len(out) < n:
            token = int(logits.argmax())
            out.append(token)
            if token == self.eos or len(out) == n:
                break
            if follow and (len(out) > len(follow) or follow[len(out) - 1] != token):
                break
            logits = self._prefill(torch.tensor([token]), cache)[0][-1]
        return out

    def chain(self, p: Prompt) -> list[bytes]:
        """The chained prefix hashes h_0 (system) .. h_k (system + all chunks)."""
        h = xxhash.xxh3_128_digest(np.asarray(self.wl.system_ids, dtype=np.int32).tobytes())
        out = [h]
        for c in p.chunks:
            h = xxhash.xxh3_128_digest(h + self.key(NAIVE_ID, c))
            out.append(h)
        return out

    # --- storing (off the clock) --------------------------------------------------------

    def store(self, p: Prompt, exact: DynamicCache | None = None) -> int:
        """Store the prompt's chunks that the daemon lacks (Cache-Craft's way: computed
        after the chunks before them here) and its exact prefix KV (``exact``: a cache
        of the whole prompt's exact prefill, when at hand); returns how many chunks were
        stored."""
        missing = [i for i, c in enumerate(p.chunks) if c not in self.stored]
        chain = self.chain(p)
        if missing:
            computed, cache = prompt_chunks_kv(self.model, self.system, self.chunk_ids(p))
            for i in missing:
                blob = computed[i].blob(DTYPE)
                for model_id in self.model_ids:
                    prefix = [self.key(model_id, c) for c in p.chunks[:i]]
                    meta = computed[i].put_meta(model_id, DTYPE, prefix, self.shifter.params)
                    self.client.put_chunk(self.key(model_id, p.chunks[i]), blob, meta)
                self.stored.add(p.chunks[i])
            kv = cache_slice(cache)
        elif exact is not None:
            kv = cache_slice(exact, 0, self.bounds(p)[-1])
        else:
            kv = self.prefix_kv(p)
        bounds = self.bounds(p)
        for level, h in enumerate(chain):
            if h not in self.prefixes:
                self.prefixes[h] = (kv, bounds[level])
        return len(missing)

    def prefix_kv(self, p: Prompt) -> torch.Tensor:
        ids = torch.cat([self.system, *self.chunk_ids(p)])
        return cache_slice(self._prefill(ids, DynamicCache(config=self.model.config))[1])

    def bounds(self, p: Prompt) -> list[int]:
        out = [len(self.wl.system_ids)]
        for c in p.chunks:
            out.append(out[-1] + len(self.wl.chunks[c].ids))
        return out

    # --- modes ------------------------------------------------------------------------

    def full(self, p: Prompt) -> Reference:
        question = torch.tensor(p.question_ids, dtype=torch.long)
        ids = torch.cat([self.system, *self.chunk_ids(p), question])
        cache = DynamicCache(config=self.model.config)
        start = time.process_time()
        logits, _ = self._prefill(ids, cache, keep=question.numel())
        cpu = time.process_time() - start
        return Reference(
            logits, self.greedy(logits[-1], cache, self.config.continuation), cpu, cache
        )

    def score(
        self, ref: Reference, p: Prompt, logits: torch.Tensor, cache: DynamicCache, **counts: Any
    ) -> Row:
        top1 = float((logits.argmax(-1) == ref.logits.argmax(-1)).double().mean())
        log_p = torch.log_softmax(ref.logits[-1].double(), -1)
        log_q = torch.log_softmax(logits[-1].double(), -1)
        kl = float((log_p.exp() * (log_p - log_q)).sum())
        n = self.config.continuation
        continuation = self.greedy(logits[-1], cache, n, follow=ref.continuation)
        bounds = self.bounds(p)
        return Row(
            full_s=ref.cpu_s,
            top1=top1,
            kl_last=max(kl, 0.0),
            exact=continuation == ref.continuation,
            chunk_tokens=bounds[-1] - bounds[0],
            prompt_tokens=bounds[-1] + len(p.question_ids),
            **counts,
        )

    def cached_tokens(self, p: Prompt) -> int:
        return sum(len(self.wl.chunks[c].ids) for c in p.chunks if c in self.stored)

    def prefix(self, p: Prompt, ref: Reference) -> Row:
        question = torch.tensor(p.question_ids, dtype=torch.long)
        bounds = self.bounds(p)
        start = time.perf_counter()
        level, kv, end = 0, self.system_kv, bounds[0]
        for i, h in enumerate(self.chain(p)):
            hit = self.prefixes.get(h)
            if hit is None:
                break
            level, (kv, end) = i, hit
        cache = cache_from_kv(kv[:, :, :, :end], self.model.config)
        fetch = time.perf_counter() - start
        rest = torch.cat([*self.chunk_ids(p)[level:], question])
        cpu = time.process_time()
        logits, _ = self._prefill(rest, cache, keep=question.numel())
        compute = time.process_time() - cpu
        recomputed = sum(len(self.wl.chunks[c].ids) for c in p.chunks[level:] if c in self.stored)
        return self.score(
            ref,
            p,
            logits,
            cache,
            fetch_s=fetch,
            compute_s=compute,
            recomputed=recomputed,
            cached=self.cached_tokens(p),
            through=rest.numel(),
            chunk_through=bounds[-1] - bounds[level],
        )

    def reuse(
        self, p: Prompt, ref: Reference, model_id: str, select: Selector
    ) -> tuple[Row, list[list[int]]]:
        """Plan, fetch, shift, assemble; recompute misses and the selected positions; run
        the question. Also returns the selected positions per chunk (relative)."""
        question = torch.tensor(p.question_ids, dtype=torch.long)
        bounds = self.bounds(p)
        lengths = [bounds[i + 1] - bounds[i] for i in range(len(p.chunks))]
        layers, two, heads, dim = self._kv_shape
        start = time.perf_counter()
        plan = self.client.plan(
            model_id,
            [self.key(model_id, c) for c in p.chunks],
            chunk_tokens=lengths,
            start=bounds[0],
        )
        parts = [self.system_kv]
        try:
            for i, planned in enumerate(plan.chunks):
                if not planned.hit:
                    parts.append(torch.zeros(layers, two, heads, lengths[i], dim))
                    continue
                blob = self.client.fetch(planned, plan.lease)
                kv = from_blob(blob.array(), blob.meta.dtype)
                parts.append(self.shifter.shift_kv(kv, int(planned.rope_base or 0), bounds[i]))
            cache = assemble_cache(parts, self.model.config, torch.float32)  # copies
        finally:
            if plan.lease is not None:
                self.client.release_lease(plan.lease.id)
        fetch = time.perf_counter() - start

        positions: list[int] = []
        selected: list[list[int]] = []
        recomputed = 0
        for i, planned in enumerate(plan.chunks):
            if not planned.hit:
                positions.extend(range(bounds[i], bounds[i + 1]))
                selected.append([])
                continue
            chosen = [] if planned.exact_prefix else sorted(select(i, planned, lengths[i]))
            if not planned.exact_prefix and model_id == alpha_id(self.config.alphas[0]):
                self.moved += 1
                self.moved_unscored += planned.cci == 0.5 and planned.beta == 0.0
            selected.append(chosen)
            recomputed += len(chosen)
            positions.extend(bounds[i] + t for t in chosen)
        positions.sort()
        prompt = torch.cat([self.system, *self.chunk_ids(p)])
        cpu = time.process_time()
        if positions:
            recompute(self.model, cache, prompt[positions], positions)
        logits, _ = self._prefill(question, cache, keep=question.numel())
        compute = time.process_time() - cpu
        misses = len(positions) - recomputed
        row = self.score(
            ref,
            p,
            logits,
            cache,
            fetch_s=fetch,
            compute_s=compute,
            recomputed=recomputed,
            cached=self.cached_tokens(p),
            through=len(positions) + question.numel(),
            chunk_through=len(positions),
        )
        assert misses == row.chunk_tokens - row.cached
        return row, selected


def first_k(fraction: float) -> Selector:
    return lambda _i, _planned, n: range(math.ceil(round(fraction * n, 9)))


def planned(_i: int, chunk: PlannedChunk, _n: int) -> Sequence[int]:
    return chunk.recompute


def matched(picked: list[list[int]], how: str, rng: np.random.Generator) -> Selector:
    """As many positions per chunk as ``picked`` (Cache-Craft's choice) holds: the first
    ones, or random ones."""

    def select(i: int, _chunk: PlannedChunk, n: int) -> Sequence[int]:
        k = len(picked[i])
        if how == "first":
            return range(k)
        return [int(t) for t in rng.choice(n, size=k, replace=False)]

    return select


def run_prompt(bench: Bench, p: Prompt, index: int, results: dict[str, ModeResult]) -> DynamicCache:
    """Every mode on ``p``; returns the reference's cache (exact prefill)."""

    def add(name: str, family: str, row: Row) -> None:
        results.setdefault(name, ModeResult(name, family)).rows.append(row)

    ref = bench.full(p)
    bounds = bench.bounds(p)
    add(
        "full prefill",
        "full",
        Row(
            fetch_s=0.0,
            compute_s=ref.cpu_s,
            full_s=ref.cpu_s,
            recomputed=bench.cached_tokens(p),
            cached=bench.cached_tokens(p),
            through=bounds[-1] + len(p.question_ids),
            chunk_through=bounds[-1] - bounds[0],
            chunk_tokens=bounds[-1] - bounds[0],
            prompt_tokens=bounds[-1] + len(p.question_ids),
            top1=1.0,
            kl_last=0.0,
            exact=True,
        ),
    )
    add("prefix caching", "prefix", bench.prefix(p, ref))
    add("naive reuse", "naive", bench.reuse(p, ref, NAIVE_ID, first_k(0.0))[0])
    for f in (0.10, 0.25, 0.50):
        add(f"first-k {f:.0%}", "first-k", bench.reuse(p, ref, NAIVE_ID, first_k(f))[0])
    for alpha in bench.config.alphas:
        row, picked = bench.reuse(p, ref, alpha_id(alpha), planned)
        add(f"cachecraft a={alpha:g}", "cachecraft", row)
        rng = np.random.default_rng([bench.config.seed, index, int(alpha * 1000)])
        for how, family in (("random", "random"), ("first", "first-k matched")):
            other, _ = bench.reuse(p, ref, NAIVE_ID, matched(picked, how, rng))
            add(f"{'random' if how == 'random' else 'first-k'} a={alpha:g}", family, other)
    return ref.cache


def measure(
    model: Any, workload: Workload, config: Config, warm: int, log: Any
) -> tuple[dict[str, ModeResult], int, int, int, int]:
    """Start a daemon, warm it, run every mode on the measured prompts; returns the
    results, the chunk hits and misses of the measured prompts, and the reused chunks
    with another prefix (all, and those stored without any prefix chunk)."""
    results: dict[str, ModeResult] = {}
    hits = misses = 0
    with tempfile.TemporaryDirectory(prefix="rag-bench-") as tmp:
        workdir = Path(tmp)
        shm = Path(tempfile.mkdtemp(prefix="rag-bench-", dir="/dev/shm"))
        try:
            ids = [(NAIVE_ID, 0.0), *((alpha_id(a), a) for a in config.alphas)]
            server = Server.semcached(
                workdir / "data",
                write_config(workdir / "semcached.toml", shm, ids),
                {"embedding.backend": "none", "server.access_log": False},
            )
            with running(server):
                server.wait_ready()
                assert server.url is not None
                with SemcachedClient(server.url, timeout_s=120.0, shm_dir=shm) as client:
                    bench = Bench(model, client, workload, config)
                    for p in workload.prompts[:warm]:
                        bench.store(p)
                    for index, p in enumerate(workload.prompts[warm:], start=warm):
                        t0 = time.perf_counter()
                        cached = sum(c in bench.stored for c in p.chunks)
                        hits, misses = hits + cached, misses + len(p.chunks) - cached
                        bench.store(p, run_prompt(bench, p, index, results))
                        took = time.perf_counter() - t0
                        print(
                            f"  prompt {index}: {len(p.chunks)} chunks, {cached} stored, "
                            f"{took:.0f} s",
                            file=log,
                            flush=True,
                        )
        finally:
            shutil.rmtree(shm, ignore_errors=True)
    return results, hits, misses, bench.moved, bench.moved_unscored


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="the short run (CI)")
    parser.add_argument(
        "--csv",
        action="store_true",
        help="print mode,recompute_fraction,top1_agreement,kl_last,"
        "ttft_ratio_vs_full per mode instead of the table",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where the PNG goes")
    parser.add_argument("--prompts", type=int, help="override the number of prompts")
    parser.add_argument("--alphas", type=float, nargs="+", help="override the alphas")
    parser.add_argument(
        "--device",
        choices=["cpu", "cuda"],
        default="cpu",
        help="cuda: the GPU mode (bench/_rag_gpu.py): TTFT of full prefill vs reuse "
        "through the daemon's GPU tier vs its host tier, on cuda:0",
    )
    args = parser.parse_args()
    config = QUICK if args.quick else FULL
    if args.prompts:
        config = Config(
            config.chunks, args.prompts, config.alphas, config.continuation, config.seed
        )
    if args.alphas:
        config = Config(
            config.chunks, config.prompts, tuple(args.alphas), config.continuation, config.seed
        )
    log = sys.stderr if args.csv else sys.stdout
    if args.device == "cuda":
        from _rag_gpu import run

        run(config.chunks, config.prompts, config.seed, log)
        return

    torch.set_num_threads(1)
    started = time.perf_counter()
    model, tokenizer = load_smollm2()
    workload = build_workload(
        tokenizer, chunks=config.chunks, prompts=config.prompts, seed=config.seed
    )
    warm = max(1, round(config.warm_share * config.prompts))
    print(describe(workload), file=log)
    print(
        f"warm: {warm} prompts; measured: {config.prompts - warm}; alphas "
        f"{list(config.alphas)}; continuation {config.continuation} tokens",
        file=log,
    )

    results, hits, misses, moved, unscored = measure(model, workload, config, warm, log)
    elapsed = time.perf_counter() - started
    title = (
        f"SmolLM2-135M, {config.prompts - warm} prompts, chunk hit rate "
        f"{hits / (hits + misses):.2f}"
    )
    png = args.out / ("rag_reuse_quick.png" if args.quick else "rag_reuse.png")
    plot(results, png, title)
    if args.csv:
        print("mode,recompute_fraction,top1_agreement,kl_last,ttft_ratio_vs_full")
        for r in results.values():
            print(
                f"{r.name},{r.recompute_fraction:.4f},{r.top1:.4f},{r.kl_last:.5f},"
                f"{r.ttft_ratio:.4f}"
            )
    print(
        f"\nRAG chunk reuse, {title}; full prefill median {results['full prefill'].compute_s:.2f}"
        " s CPU. recomp/chunk/prompt, top1, exact: means; KL, times, TTFT/full: medians",
        file=log,
    )
    print_table(results, log)
    print(
        f"\nOf {moved} reused chunks served after another prefix, {unscored} were stored "
        "with no prefix chunk (all inter-attention scores 0: the plan recomputes their first "
        "tokens, as first-k does).",
        file=log,
    )
    print("\nGoals:\n  " + "\n  ".join(goals(results)), file=log)
    print(
        f"plot: {png}; {elapsed:.0f} s in all; load average "
        f"{', '.join(f'{x:.1f}' for x in os.getloadavg())}",
        file=log,
    )


if __name__ == "__main__":
    main()
