"""The GPU mode of bench/rag_reuse.py (``--device cuda``): TTFT of full prefill vs
chunk reuse through the daemon's GPU tier vs through its host tier, on one CUDA device.

SmolLM2-135M-Instruct (float32) on ``cuda:0``, the workload of bench/_rag_workload.py,
a ``semcached serve`` child with its GPU tier (``[kv.gpu]``, promotion on the first
device read). A store pass (off the clock) runs each prompt once through
:class:`~semcached.clients.hf_adapter.HfKvAdapter`, which stores every chunk the
daemon lacks computed after the chunks it follows there (Cache-Craft's variant), and
plans once with the GPU so the stored chunks are promoted. Then, per prompt (the first
one is a warm-up, not counted), three ways to the first token's logits, each timed on
the wall clock with the GPU synchronised:

- ``full prefill``: the model over the whole prompt;
- ``reuse, GPU tier``: the adapter planning with ``device=cuda:0``: hot chunks are
  CUDA IPC handles read in the daemon's GPU memory (no copy), RoPE-shifted, assembled,
  the planned tokens recomputed, the question run;
- ``reuse, host tier``: the same adapter with ``device_handles=False``: every chunk
  copied from shared memory to the GPU first.

Both reuse modes follow the same plans (one model id, alpha 0.5), so they differ only
in how the bytes reach the GPU. Top-1 agreement is with full prefill's logits over the
question.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any, TextIO

import torch
from _rag_workload import build_workload, describe
from _server import Server, running
from _smollm2 import load_smollm2

from semcached.clients import SemcachedClient
from semcached.clients.hf_adapter import HfKvAdapter

MODEL_ID = "smollm2-gpu-alpha0.5"
TOKENIZER_ID = "smollm2"


def write_config(path: Path, shm_dir: Path) -> Path:
    path.write_text(
        f'[kv]\nshm_dir = "{shm_dir}"\nhost_bytes = {4 << 30}\ndisk_bytes = {8 << 30}\n'
        "lease_timeout_s = 120.0\n"
        f"[kv.gpu]\nmax_bytes = {2 << 30}\nslab_bytes = {256 << 20}\npromote_after_hits = 1\n"
        f'[kv_models."{MODEL_ID}"]\nlayers = 30\nkv_heads = 3\nhead_dim = 64\n'
        f'alpha = 0.5\ntokenizer = "{TOKENIZER_ID}"\n'
    )
    return path


def _timed(fn: Any) -> tuple[float, Any]:
    torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn()
    torch.cuda.synchronize()
    return time.perf_counter() - start, out


Modes = dict[str, tuple[float, torch.Tensor, tuple[str, ...]]]
MODES = ("full prefill", "reuse, GPU tier", "reuse, host tier")


def one_prompt(
    model: Any,
    adapters: dict[str, HfKvAdapter],
    system: torch.Tensor,
    pieces: list[torch.Tensor],
    question: torch.Tensor,
) -> tuple[Modes, torch.Tensor]:
    """Each mode's (TTFT, question logits, how the chunks came) and full's top-1 ids."""
    ids = torch.cat([system, *pieces, question]).view(1, -1).to(model.device)
    n = question.numel()
    with torch.no_grad():
        t, out = _timed(lambda: model(input_ids=ids).logits)
    runs: Modes = {MODES[0]: (t, out[:, -n:], ())}
    for name, rag in adapters.items():
        t, got = _timed(lambda rag=rag: rag.prefill(system, pieces, question))
        runs[name] = (t, got.logits, got.transfers)
    return runs, out[0, -n:].argmax(-1)


def run(chunks: int, prompts: int, seed: int, log: TextIO) -> None:
    device = torch.device("cuda", 0)
    started = time.perf_counter()
    model, tokenizer = load_smollm2()
    model.to(device)
    wl = build_workload(tokenizer, chunks=chunks, prompts=prompts, seed=seed)
    print(describe(wl), file=log)
    system = torch.tensor(wl.system_ids, dtype=torch.long)
    times: dict[str, list[float]] = {k: [] for k in MODES}
    top1: dict[str, list[float]] = {k: [] for k in MODES}
    how: dict[str, Counter[str]] = {k: Counter() for k in MODES}
    with tempfile.TemporaryDirectory(prefix="rag-gpu-") as tmp:
        workdir = Path(tmp)
        shm = Path(tempfile.mkdtemp(prefix="rag-gpu-", dir="/dev/shm"))
        server = Server.semcached(
            workdir / "data",
            write_config(workdir / "semcached.toml", shm),
            {"embedding.backend": "none", "server.access_log": False},
        )
        try:
            with running(server):
                server.wait_ready()
                assert server.url is not None
                with SemcachedClient(server.url, timeout_s=120.0, shm_dir=shm) as client:
                    adapters = {
                        MODES[1]: HfKvAdapter(
                            client, model, model_id=MODEL_ID, tokenizer_id=TOKENIZER_ID
                        ),
                        MODES[2]: HfKvAdapter(
                            client,
                            model,
                            model_id=MODEL_ID,
                            tokenizer_id=TOKENIZER_ID,
                            device_handles=False,
                        ),
                    }
                    parts = []
                    for p in wl.prompts:  # the store pass, then one promoting plan each
                        pieces = [torch.tensor(wl.chunks[c].ids) for c in p.chunks]
                        question = torch.tensor(p.question_ids)
                        for _ in range(2):
                            adapters[MODES[1]].prefill(system, pieces, question)
                        parts.append((pieces, question))
                    for index, (pieces, question) in enumerate(parts):
                        runs, want = one_prompt(model, adapters, system, pieces, question)
                        if index == 0:
                            continue  # warm-up: kernels, allocator, mappings
                        for name, (t, logits, transfers) in runs.items():
                            times[name].append(t)
                            top1[name].append(float((logits[0].argmax(-1) == want).float().mean()))
                            how[name].update(transfers)
        finally:
            for f in shm.glob("*"):
                f.unlink()
            shm.rmdir()
    report(times, top1, how, torch.cuda.get_device_name(device), log)
    print(f"{time.perf_counter() - started:.0f} s in all", file=log)


def report(
    times: dict[str, list[float]],
    top1: dict[str, list[float]],
    how: dict[str, Counter[str]],
    gpu: str,
    log: TextIO,
) -> None:
    full = statistics.median(times[MODES[0]])
    print(
        f"\nRAG reuse on {gpu}, SmolLM2-135M float32, {len(times[MODES[0]])} prompts: "
        "TTFT median (wall, GPU synchronised)",
        file=log,
    )
    print(f"{'mode':<20} {'TTFT ms':>9} {'vs full':>8} {'top1':>6}  chunks came by", file=log)
    for name, values in times.items():
        ttft = statistics.median(values)
        came = ", ".join(f"{k} {v}" for k, v in sorted(how[name].items())) or "-"
        print(
            f"{name:<20} {ttft * 1e3:>9.2f} {ttft / full:>7.2f}x "
            f"{statistics.fmean(top1[name]):>6.3f}  {came}",
            file=log,
        )
