"""RAG chunk KV reuse on a real model: quality vs recompute for prefix caching, naive
chunk reuse, CacheBlend's selection, Cache-Craft's planned recompute and controls.

    python bench/rag_reuse.py                 # the full run (opt-in: about 40 minutes)
    python bench/rag_reuse.py --quick         # the short run (a few minutes)
    python bench/rag_reuse.py --quick --workload long   # longer chunks, more per prompt
    python bench/rag_reuse.py --quick --diagnose        # + where the deviation lies
    python bench/rag_reuse.py --quick --length-curve    # TTFT vs prompt length
    python bench/rag_reuse.py --quick --csv   # one line per mode, for scripts
    python bench/rag_reuse.py --device cuda --prompts 12   # TTFT on a GPU: full prefill
                                              # vs reuse via the GPU tier vs the host tier

Why one file of about 880 lines: most of it is the ``Bench`` class, whose storing and
modes share one state (the model, the client, the chunks stored, the prefix store, the
system part's KV); split, that state would be passed between modules. What has a role
of its own lives beside it: the workload in bench/_rag_workload.py, the results, table,
goals and plot in bench/_rag_report.py, the diagnosis in bench/_rag_diagnose.py,
ROUGE-L in bench/_rouge.py, the model loader in bench/_smollm2.py.

Model: SmolLM2-135M-Instruct (float32, one torch thread; loaded by bench/_smollm2.py).
Workloads (bench/_rag_workload.py): chunks cut from stdlib docstrings; each prompt is a
fixed system part, chunks drawn Zipf(1) in random order and a question, in the chat
template. ``rag`` (the default): chunks of 128-256 tokens, 3-5 per prompt; ``long``:
384-768 tokens, 6-8 per prompt (prompts of about 3-5k tokens). A ``semcached serve``
child holds the chunk KV (float32 blobs, exact) and plans; one model id per alpha is
declared in ``[kv_models]`` with the same shape (the planner reads alpha per model), and
every chunk is stored under each.

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
- ``cacheblend r=0.15``: CacheBlend's selection (Yao et al., EuroSys 2025): every token
  of each moved chunk is recomputed through layers 0 and 1, its fresh layer-1 K/V
  compared with the reused ones (squared L2 over heads and dimensions, keys and values),
  and the 15 % per chunk that deviate most go on through the remaining layers; the
  others keep their reused K/V there. Layer 0's K/V never depend on context, so layer 1
  is the first where a deviation shows (semcached.clients.hf_forward.select_tokens);
- ``cachecraft a=A``: exactly the positions the daemon's plan names under alpha A
  (the chunk's first four tokens, then the highest stored inter-attention);
- ``first-k 25%`` and, per alpha, ``random a=A`` / ``first-k a=A``: the first 25 % of
  each reused chunk; as many tokens as the Cache-Craft plan picked, chosen at random
  (seeded) / as the first ones (the controls at equal fraction; ``rag`` only).

Chunks not stored yet (misses) are computed in every chunk mode by the same partial
forward, after the assembled cache before them. Reuse modes skip chunks whose variant
was computed after exactly the same prefix (they are exact; the plan says so).

Per mode and prompt: TTFT = fetch (wall: plan, tier read through shared memory,
deserialise, RoPE shift and assembly into one cache) + compute (CPU ``process_time``,
one thread: the partial forward and the question's prefill, up to the first token's
logits), each part reported in the breakdown; the recompute fraction (cached-chunk
token-layers through the model ÷ (cached-chunk tokens · layers): full = 1, naive = 0;
CacheBlend's check layers count in full; misses excluded since no mode can avoid them)
and tokens through the model ÷ prompt tokens (misses included). Quality against full
prefill along the answer it generates greedily (``answer`` tokens): top-1 agreement
teacher-forced over that answer (the mode's cache runs full's answer tokens and each
position's argmax is compared with full's), the mean KL(full ‖ mode) over the same
positions, the ROUGE-L of the mode's own greedy answer against full's, the share of
identical answers, and top-1 over the question's positions. The table gives means of
fractions, agreement and ROUGE-L, and medians of times, KL and the per-prompt TTFT
ratio to ``full``.

``--diagnose`` compares naive reuse's cache with full prefill's per moved chunk: the
deviation per layer, per position in the chunk, and the share of it on the tokens each
selection recomputes (bench/_rag_diagnose.py). ``--length-curve`` stores every chunk of
prompts of 512, 1k, 2k and 4k tokens in reverse order first (all hits, all moved) and
reports each mode's TTFT ratio per length and where Cache-Craft's crosses 0.4x.

CPU ratios are not GPU ratios: only the trends carry over (notes/cachecraft.md §5).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

import torch  # noqa: E402
import xxhash  # noqa: E402
from _rag_diagnose import Diagnosis  # noqa: E402
from _rag_report import (  # noqa: E402
    BREAKDOWN,
    ModeResult,
    Row,
    goals,
    plot,
    print_breakdown,
    print_flips,
    print_table,
)
from _rag_workload import Prompt, Workload, build_workload, describe  # noqa: E402
from _rouge import rouge_l  # noqa: E402
from _server import Server, running  # noqa: E402
from _smollm2 import load_smollm2  # noqa: E402
from transformers import DynamicCache  # noqa: E402

from semcached.clients import SemcachedClient  # noqa: E402
from semcached.clients.hf_forward import CHECK_LAYER, select_tokens  # noqa: E402
from semcached.clients.hf_kv import (  # noqa: E402
    RopeShifter,
    assemble_cache,
    cache_from_kv,
    cache_kwargs,
    cache_length,
    cache_slice,
    decoder,
    from_blob,
    prompt_chunks_kv,
)
from semcached.clients.kv import KvPlan, PlannedChunk  # noqa: E402
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
    # The workload family: chunk lengths, chunks per prompt, chunks per stdlib module.
    min_tokens: int = 128
    max_tokens: int = 256
    per_prompt: tuple[int, int] = (3, 5)
    per_module: int = 2
    # The first-k and random controls beside Cache-Craft (off for the long family: time).
    controls: bool = True
    diagnose: bool = False

    def workload(self, tokenizer: Any) -> Workload:
        """This family's seeded workload, tokenised by ``tokenizer``."""
        return build_workload(
            tokenizer,
            chunks=self.chunks,
            prompts=self.prompts,
            seed=self.seed,
            min_tokens=self.min_tokens,
            max_tokens=self.max_tokens,
            per_module=self.per_module,
            chunks_per_prompt=self.per_prompt,
        )


QUICK = Config(chunks=40, prompts=12, alphas=(0.25, 0.5), continuation=16, seed=0)
FULL = Config(chunks=50, prompts=60, alphas=(0.25, 0.5, 1.0), continuation=24, seed=0)
LONG_QUICK = replace(
    QUICK,
    chunks=24,
    prompts=8,
    min_tokens=384,
    max_tokens=768,
    per_prompt=(6, 8),
    per_module=3,
    controls=False,
)
"""The second workload family: chunks of 384-768 tokens, 6-8 per prompt (prompts of
about 3-5k tokens), from a smaller pool so that chunks repeat; no first-k or random
controls (time)."""
LONG_FULL = replace(LONG_QUICK, chunks=30, prompts=30, continuation=24)
CONFIGS = {("rag", True): QUICK, ("rag", False): FULL, ("long", True): LONG_QUICK,
           ("long", False): LONG_FULL}  # fmt: skip


@dataclass(frozen=True, slots=True)
class Reference:
    logits: torch.Tensor  # [question tokens, vocab]
    continuation: list[int]  # full prefill's greedy answer
    answer_logits: torch.Tensor  # [len(continuation), vocab]: the logits that chose it
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
        self.diagnosis = Diagnosis() if config.diagnose else None

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
        self, last: torch.Tensor, cache: DynamicCache, n: int
    ) -> tuple[list[int], list[torch.Tensor]]:
        """At most ``n`` greedy tokens (stopping after end-of-turn) and the logits that
        chose each."""
        out: list[int] = []
        chose: list[torch.Tensor] = []
        logits = last
        while len(out) < n:
            token = int(logits.argmax())
            out.append(token)
            chose.append(logits)
            if token == self.eos or len(out) == n:
                break
            logits = self._prefill(torch.tensor([token]), cache)[0][-1]
        return out, chose

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
        answer, chose = self.greedy(logits[-1], cache, self.config.continuation)
        return Reference(logits, answer, torch.stack(chose), cpu, cache)

    def score(
        self, ref: Reference, p: Prompt, logits: torch.Tensor, cache: DynamicCache, **counts: Any
    ) -> Row:
        """Agreement with full prefill: top-1 over full's greedy answer, teacher-forced
        (the mode's cache runs the answer's tokens, and each position's argmax is compared
        with the token full prefill chose there), mean KL(full ‖ mode) over the same
        positions, top-1 over the question, and the ROUGE-L of the mode's own greedy
        answer against full's. The cache is cropped back between the two passes."""
        answer = ref.continuation
        length = cache_length(cache)
        forced = torch.tensor(answer[:-1], dtype=torch.long)
        mode_logits = [logits[-1:]]
        if forced.numel():
            mode_logits.append(self._prefill(forced, cache, keep=forced.numel())[0])
        along = torch.cat(mode_logits)
        agree = along.argmax(-1) == ref.answer_logits.argmax(-1)
        top1 = float(agree.double().mean())
        probs = torch.softmax(ref.answer_logits.double(), -1).topk(2, dim=-1).values
        gaps = (probs[:, 0] - probs[:, 1])[~agree].tolist()
        log_p = torch.log_softmax(ref.answer_logits.double(), -1)
        log_q = torch.log_softmax(along.double(), -1)
        kl = float((log_p.exp() * (log_p - log_q)).sum(-1).mean())
        extra = cache_length(cache) - length
        if extra:
            cache.crop(-extra)
        own, _ = self.greedy(logits[-1], cache, self.config.continuation)
        bounds = self.bounds(p)
        return Row(
            full_s=ref.cpu_s,
            top1=top1,
            kl_last=max(kl, 0.0),
            exact=own == answer,
            top1_question=float((logits.argmax(-1) == ref.logits.argmax(-1)).double().mean()),
            rouge_l=rouge_l(own, answer),
            flip_gaps=gaps,
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

    def assemble(
        self, p: Prompt, model_id: str
    ) -> tuple[KvPlan, DynamicCache, dict[str, float], float]:
        """Plan ``p`` under ``model_id``, fetch its hits through shared memory, shift them
        into place and assemble one cache (misses as zeros, to be computed); returns the
        plan, the cache, the wall seconds per part (plan, fetch, deserialise, rope,
        assemble) and their sum."""
        bounds = self.bounds(p)
        lengths = [bounds[i + 1] - bounds[i] for i in range(len(p.chunks))]
        layers, two, heads, dim = self._kv_shape
        parts = dict.fromkeys(BREAKDOWN[:5], 0.0)
        start = time.perf_counter()
        plan = self.client.plan(
            model_id,
            [self.key(model_id, c) for c in p.chunks],
            chunk_tokens=lengths,
            start=bounds[0],
        )
        parts["plan"] = time.perf_counter() - start
        kvs = [self.system_kv]
        try:
            for i, planned in enumerate(plan.chunks):
                if not planned.hit:
                    kvs.append(torch.zeros(layers, two, heads, lengths[i], dim))
                    continue
                t0 = time.perf_counter()
                blob = self.client.fetch(planned, plan.lease)
                t1 = time.perf_counter()
                kv = from_blob(blob.array(), blob.meta.dtype)
                t2 = time.perf_counter()
                kvs.append(self.shifter.shift_kv(kv, int(planned.rope_base or 0), bounds[i]))
                t3 = time.perf_counter()
                parts["fetch"] += t1 - t0
                parts["deserialise"] += t2 - t1
                parts["rope"] += t3 - t2
            t0 = time.perf_counter()
            cache = assemble_cache(kvs, self.model.config, torch.float32)  # copies
            parts["assemble"] = time.perf_counter() - t0
        finally:
            if plan.lease is not None:
                self.client.release_lease(plan.lease.id)
        return plan, cache, parts, time.perf_counter() - start

    def diagnose(self, p: Prompt, ref: Reference, name: str, picked: list[list[int]]) -> None:
        """Naive reuse's cache against full prefill's, per moved chunk, with the tokens
        ``name`` picked (and first-k and layer-1 deviation at the same count)."""
        assert self.diagnosis is not None
        plan, cache, _, _ = self.assemble(p, NAIVE_ID)
        bounds = self.bounds(p)
        reused = cache_slice(cache)
        exact = cache_slice(ref.cache, 0, bounds[-1])
        for i, planned in enumerate(plan.chunks):
            if not planned.hit or planned.exact_prefix:
                continue
            chosen = picked[i]
            self.diagnosis.add(
                reused,
                exact,
                (bounds[i], bounds[i + 1]),
                {name: chosen, "first-k (same count)": range(len(chosen))},
                check_layer=CHECK_LAYER,
            )

    def reuse(
        self,
        p: Prompt,
        ref: Reference,
        model_id: str,
        select: Selector,
        *,
        blend: float | None = None,
        check: bool = False,
    ) -> tuple[Row, list[list[int]]]:
        """Plan, fetch, shift, assemble; recompute misses and the selected positions; run
        the question. Also returns the selected positions per chunk (relative).

        ``blend`` (a ratio): CacheBlend's selection instead of ``select``: every token
        of each moved chunk goes through layers 0..CHECK_LAYER, and the ⌈ratio·n⌉ per
        chunk whose K/V deviate most there go on (``select_tokens(by_deviation=True)``);
        ``check``: the same rule with ``select``'s count per chunk. The recompute
        fraction counts token-layers (all tokens for the checked layers, the kept ones
        for the rest) ÷ layers."""
        question = torch.tensor(p.question_ids, dtype=torch.long)
        bounds = self.bounds(p)
        lengths = [bounds[i + 1] - bounds[i] for i in range(len(p.chunks))]
        layers = self._kv_shape[0]
        plan, cache, parts, fetch = self.assemble(p, model_id)

        chunks: list[tuple[int, int, Sequence[int] | None]] = []
        selected: list[list[int]] = []
        for i, planned in enumerate(plan.chunks):
            if not planned.hit:
                chunks.append((bounds[i], bounds[i + 1], None))
                selected.append([])
                continue
            if not planned.exact_prefix and model_id == alpha_id(self.config.alphas[0]):
                self.moved += 1
                self.moved_unscored += planned.cci == 0.5 and planned.beta == 0.0
            if planned.exact_prefix:
                chosen: list[int] = []
            elif blend is not None:
                chosen = list(range(math.ceil(round(blend * lengths[i], 9))))  # a count
            else:
                chosen = sorted(select(i, planned, lengths[i]))
            selected.append(chosen)
            chunks.append((bounds[i], bounds[i + 1], chosen))
        selection = select_tokens(chunks, by_deviation=blend is not None or check)
        misses = sum(end - start for start, end, picked in chunks if picked is None)
        recomputed = selection.token_layers(layers) / layers - misses
        prompt = torch.cat([self.system, *self.chunk_ids(p)])
        cpu = time.process_time()
        selection.run(self.model, cache, prompt)
        cpu_q = time.process_time()
        logits, _ = self._prefill(question, cache, keep=question.numel())
        done = time.process_time()
        parts["recompute"], parts["question"] = cpu_q - cpu, done - cpu_q
        row = self.score(
            ref,
            p,
            logits,
            cache,
            fetch_s=fetch,
            compute_s=done - cpu,
            recomputed=recomputed,
            cached=self.cached_tokens(p),
            through=len(selection.positions) + question.numel(),
            chunk_through=len(selection.positions),
            parts=parts,
        )
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


BLEND_RATIO = 0.15
"""CacheBlend's default recompute ratio."""


def run_prompt(
    bench: Bench,
    p: Prompt,
    index: int,
    results: dict[str, ModeResult],
    *,
    with_prefix: bool = True,
) -> DynamicCache:
    """Every mode on ``p`` (``with_prefix`` False: all but prefix caching); returns the
    reference's cache (exact prefill)."""

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
    if with_prefix:
        add("prefix caching", "prefix", bench.prefix(p, ref))
    add("naive reuse", "naive", bench.reuse(p, ref, NAIVE_ID, first_k(0.0))[0])
    name = f"cacheblend r={BLEND_RATIO:g}"
    add(name, "cacheblend", bench.reuse(p, ref, NAIVE_ID, first_k(0.0), blend=BLEND_RATIO)[0])
    if bench.config.controls:
        add("first-k 25%", "first-k", bench.reuse(p, ref, NAIVE_ID, first_k(0.25))[0])
    for alpha in bench.config.alphas:
        row, picked = bench.reuse(p, ref, alpha_id(alpha), planned)
        add(f"cachecraft a={alpha:g}", "cachecraft", row)
        if bench.diagnosis is not None and alpha == bench.config.alphas[0]:
            bench.diagnose(p, ref, f"cachecraft a={alpha:g}", picked)
        if not bench.config.controls:
            continue
        rng = np.random.default_rng([bench.config.seed, index, int(alpha * 1000)])
        for how, family in (("random", "random"), ("first", "first-k matched")):
            other, _ = bench.reuse(p, ref, NAIVE_ID, matched(picked, how, rng))
            add(f"{'random' if how == 'random' else 'first-k'} a={alpha:g}", family, other)
    return ref.cache


@contextlib.contextmanager
def session(model: Any, workload: Workload, config: Config) -> Iterator[Bench]:
    """A ``semcached serve`` child with one model id per alpha (and the alpha-0 one for
    naive reuse), shared memory under /dev/shm, and a :class:`Bench` on it."""
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
                    yield Bench(model, client, workload, config)
        finally:
            shutil.rmtree(shm, ignore_errors=True)


def measure(
    model: Any, workload: Workload, config: Config, warm: int, log: Any
) -> tuple[dict[str, ModeResult], int, int, Bench]:
    """Start a daemon, warm it, run every mode on the measured prompts; returns the
    results, the chunk hits and misses of the measured prompts and the bench (its
    counts of moved chunks and its diagnosis)."""
    results: dict[str, ModeResult] = {}
    hits = misses = 0
    with session(model, workload, config) as bench:
        for p in workload.prompts[:warm]:
            bench.store(p)
        for index, p in enumerate(workload.prompts[warm:], start=warm):
            t0 = time.perf_counter()
            cached = sum(c in bench.stored for c in p.chunks)
            hits, misses = hits + cached, misses + len(p.chunks) - cached
            bench.store(p, run_prompt(bench, p, index, results))
            took = time.perf_counter() - t0
            print(
                f"  prompt {index}: {len(p.chunks)} chunks, {cached} stored, {took:.0f} s",
                file=log,
                flush=True,
            )
    return results, hits, misses, bench


CURVE_LENGTHS = (512, 1024, 2048, 4096)
"""Prompt lengths (tokens) of ``--length-curve``."""


def curve_prompts(workload: Workload, length: int, count: int) -> list[Prompt]:
    """``count`` prompts of about ``length`` tokens: chunks taken in turn from the
    workload's pool until system + chunks + question reach ``length`` (a chunk is cut
    short rather than overshoot: chunks are token ids, so a shorter one is just another
    chunk), each prompt from the next chunks of the pool."""
    pool = [c.index for c in workload.chunks]
    question = workload.prompts[0].question_ids
    frame = len(workload.system_ids) + len(question)
    out: list[Prompt] = []
    cursor = 0
    for _ in range(count):
        chosen: list[int] = []
        total = frame
        while total < length:
            c = pool[cursor % len(pool)]
            cursor += 1
            if c in chosen:
                break
            chosen.append(c)
            total += len(workload.chunks[c].ids)
        out.append(Prompt(tuple(chosen), workload.prompts[0].question, question))
    return out


def length_curve(model: Any, workload: Workload, config: Config, log: Any) -> None:
    """TTFT of each reuse mode ÷ full prefill's against the prompt length, every chunk
    stored beforehand in another order (all hits, all moved: the Cache-Craft case), and
    the length at which the best Cache-Craft row crosses 0.4x."""
    curve: dict[int, dict[str, ModeResult]] = {}
    with session(model, workload, config) as bench:
        for length in CURVE_LENGTHS:
            results: dict[str, ModeResult] = {}
            for index, p in enumerate(curve_prompts(workload, length, 2)):
                # Stored in reverse order: every chunk is then served after another prefix.
                bench.store(Prompt(p.chunks[::-1], p.question, p.question_ids))
                run_prompt(bench, p, index, results, with_prefix=False)
            curve[length] = results
            tokens = statistics.median(r.prompt_tokens for r in results["full prefill"].rows)
            print(f"  length {length}: {tokens:.0f} tokens measured", file=log, flush=True)
    modes = list(curve[CURVE_LENGTHS[0]])
    print("\nTTFT / full prefill against prompt length (all chunks stored, moved):", file=log)
    print(f"{'mode':<22} " + " ".join(f"{n:>20}" for n in CURVE_LENGTHS), file=log)
    for name in modes:
        cells = []
        for n in CURVE_LENGTHS:
            r = curve[n][name]
            cells.append(f"{r.ttft_ratio:.3f} ({r.recompute_fraction:.2f}, {r.top1:.2f})")
        print(f"{name:<22} " + " ".join(f"{c:>20}" for c in cells), file=log)
    print(
        "(cells: TTFT ratio, median; in brackets the recompute fraction and top-1 over the "
        "answer, means)",
        file=log,
    )
    for name in modes:
        if not name.startswith("cachecraft"):
            continue
        ratios = [curve[n][name].ttft_ratio for n in CURVE_LENGTHS]
        print(f"{name}: {crossing(list(CURVE_LENGTHS), ratios, 0.4)}", file=log)
    for n in CURVE_LENGTHS:
        print(f"TTFT breakdown at {n} tokens (ms, medians):", file=log)
        print_breakdown(curve[n], log)


def crossing(lengths: Sequence[int], ratios: Sequence[float], target: float) -> str:
    """Where ``ratios`` (against ``lengths``) first falls to ``target``, interpolated
    linearly in log length between the two lengths around it."""
    for i, ratio in enumerate(ratios):
        if ratio <= target:
            if i == 0:
                return f"at or below {target}x from {lengths[0]} tokens on ({ratio:.3f}x)"
            x0, x1 = math.log(lengths[i - 1]), math.log(lengths[i])
            y0, y1 = ratios[i - 1], ratio
            at = math.exp(x0 + (target - y0) * (x1 - x0) / (y1 - y0))
            return f"crosses {target}x at about {at:.0f} tokens"
    return f"does not reach {target}x up to {lengths[-1]} tokens (last {ratios[-1]:.3f}x)"


def report_moved(bench: Bench, log: Any) -> None:
    print(
        f"\nOf {bench.moved} reused chunks served after another prefix, {bench.moved_unscored} "
        "were stored with no prefix chunk (no inter-attention scores).",
        file=log,
    )
    if bench.diagnosis is not None:
        print(file=log)
        bench.diagnosis.report(log)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="the short run (CI)")
    parser.add_argument(
        "--workload",
        choices=["rag", "long"],
        default="rag",
        help="rag: chunks of 128-256 tokens, 3-5 per prompt; long: 384-768 tokens, 6-8",
    )
    parser.add_argument(
        "--csv",
        action="store_true",
        help="print mode,recompute_fraction,top1_agreement,top1_question,kl,rouge_l,"
        "ttft_ratio_vs_full per mode instead of the table",
    )
    parser.add_argument(
        "--diagnose",
        action="store_true",
        help="also report where naive reuse departs from full prefill (layers, positions "
        "in the chunk) and how much of it each selection's tokens cover",
    )
    parser.add_argument(
        "--length-curve",
        action="store_true",
        help="instead: TTFT ratio against prompt length (512-4096 tokens), all chunks stored",
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
    config = CONFIGS[(args.workload, args.quick)]
    if args.prompts:
        config = replace(config, prompts=args.prompts)
    if args.alphas:
        config = replace(config, alphas=tuple(args.alphas))
    if args.diagnose:
        config = replace(config, diagnose=True)
    log = sys.stderr if args.csv else sys.stdout
    if args.device == "cuda":
        from _rag_gpu import run

        run(config.chunks, config.prompts, config.seed, log)
        return

    torch.set_num_threads(1)
    started = time.perf_counter()
    model, tokenizer = load_smollm2()
    workload = config.workload(tokenizer)
    print(describe(workload), file=log)
    if args.length_curve:
        length_curve(model, workload, config, log)
        print(f"{time.perf_counter() - started:.0f} s in all", file=log)
        return
    warm = max(1, round(config.warm_share * config.prompts))
    print(
        f"warm: {warm} prompts; measured: {config.prompts - warm}; alphas "
        f"{list(config.alphas)}; answer {config.continuation} tokens",
        file=log,
    )

    results, hits, misses, bench = measure(model, workload, config, warm, log)
    elapsed = time.perf_counter() - started
    title = (
        f"SmolLM2-135M, {args.workload} workload, {config.prompts - warm} prompts, chunk hit "
        f"rate {hits / (hits + misses):.2f}"
    )
    suffix = "" if args.workload == "rag" else f"_{args.workload}"
    png = args.out / (f"rag_reuse{suffix}_quick.png" if args.quick else f"rag_reuse{suffix}.png")
    plot(results, png, title)
    if args.csv:
        print("mode,recompute_fraction,top1_agreement,top1_question,kl,rouge_l,ttft_ratio_vs_full")
        for r in results.values():
            print(
                f"{r.name},{r.recompute_fraction:.4f},{r.top1:.4f},{r.top1_question:.4f},"
                f"{r.kl_last:.5f},{r.rouge_l:.4f},{r.ttft_ratio:.4f}"
            )
    print(
        f"\nRAG chunk reuse, {title}; full prefill median {results['full prefill'].compute_s:.2f}"
        " s CPU. top1: over full's greedy answer (teacher-forced); top1 q: over the question;"
        " KL: mean over the answer; ROUGE-L and exact: each mode's own greedy answer vs "
        "full's. recomp/prompt, top1, ROUGE-L, exact: means; KL, times, TTFT/full: medians",
        file=log,
    )
    print_table(results, log)
    print("\nTop-1 disagreements along the answer (full's top-two probability gap):", file=log)
    print_flips(results, log)
    print("\nTTFT breakdown (ms, medians; plan..assemble wall, recompute/question CPU):", file=log)
    print_breakdown(results, log)
    report_moved(bench, log)
    print("\nGoals:\n  " + "\n  ".join(goals(results)), file=log)
    print(
        f"plot: {png}; {elapsed:.0f} s in all; load average "
        f"{', '.join(f'{x:.1f}' for x in os.getloadavg())}",
        file=log,
    )


if __name__ == "__main__":
    main()
