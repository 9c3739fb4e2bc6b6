"""The results of bench/rag_reuse.py and their output: a :class:`Row` per mode and
prompt, a :class:`ModeResult` per mode (means of fractions, agreement and ROUGE-L,
medians of times, KL and TTFT ratios), the table, the TTFT breakdown, the goals and
the PNG.
"""

from __future__ import annotations

import math
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


@dataclass(slots=True)
class Row:
    """One mode on one prompt."""

    fetch_s: float
    compute_s: float
    full_s: float
    recomputed: float  # cached-chunk tokens through the model (token-layers / layers)
    cached: int  # tokens of chunks the store held
    through: int  # all tokens through the model (chunks, system part, question)
    chunk_through: int  # chunk tokens through the model (misses included)
    chunk_tokens: int
    prompt_tokens: int
    top1: float  # over full prefill's greedy answer, teacher-forced
    kl_last: float  # KL(full || mode), mean over the answer's positions
    exact: bool  # the greedy answer equals full prefill's
    top1_question: float = 1.0  # over the question's positions
    rouge_l: float = 1.0  # the greedy answer against full prefill's (token ids)
    # Where the TTFT went (seconds): plan, fetch (shm map), deserialise, rope, assemble
    # (wall), recompute, question (CPU).
    parts: dict[str, float] = field(default_factory=dict)
    # Per answer position where the mode's top-1 differs from full's: full prefill's
    # probability gap between its top two tokens there (small: a near tie).
    flip_gaps: list[float] = field(default_factory=list)

    @property
    def ttft_ratio(self) -> float:
        return (self.fetch_s + self.compute_s) / self.full_s


@dataclass(slots=True)
class ModeResult:
    name: str
    family: str
    rows: list[Row] = field(default_factory=list)

    def mean(self, values: Sequence[float]) -> float:
        finite = [v for v in values if math.isfinite(v)]
        return float(np.mean(finite)) if finite else math.nan

    @property
    def recompute_fraction(self) -> float:
        return self.mean([r.recomputed / r.cached if r.cached else math.nan for r in self.rows])

    @property
    def chunk_fraction(self) -> float:
        return self.mean([r.chunk_through / r.chunk_tokens for r in self.rows])

    @property
    def prompt_fraction(self) -> float:
        return self.mean([r.through / r.prompt_tokens for r in self.rows])

    @property
    def top1(self) -> float:
        return self.mean([r.top1 for r in self.rows])

    @property
    def top1_question(self) -> float:
        return self.mean([r.top1_question for r in self.rows])

    @property
    def rouge_l(self) -> float:
        return self.mean([r.rouge_l for r in self.rows])

    def part_ms(self, name: str) -> float:
        return statistics.median(r.parts.get(name, 0.0) for r in self.rows) * 1e3

    @property
    def kl_last(self) -> float:
        return statistics.median(r.kl_last for r in self.rows)

    @property
    def exact(self) -> float:
        return self.mean([float(r.exact) for r in self.rows])

    @property
    def fetch_ms(self) -> float:
        return statistics.median(r.fetch_s for r in self.rows) * 1e3

    @property
    def compute_s(self) -> float:
        return statistics.median(r.compute_s for r in self.rows)

    @property
    def ttft_ratio(self) -> float:
        return statistics.median(r.ttft_ratio for r in self.rows)

    @property
    def ttft_ratio_all_stored(self) -> float:
        """The median TTFT ratio over the prompts whose chunks were all stored."""
        rows = [r.ttft_ratio for r in self.rows if r.cached == r.chunk_tokens]
        return statistics.median(rows) if rows else math.nan


def print_table(results: dict[str, ModeResult], stream: Any = sys.stdout) -> None:
    head = (
        f"{'mode':<22} {'recomp':>7} {'prompt':>6} {'top1':>6} {'top1 q':>6} {'KL':>8} "
        f"{'ROUGE-L':>7} {'exact':>6} {'fetch ms':>9} {'compute s':>9} {'TTFT/full':>9}"
    )
    print(head, file=stream)
    print("-" * len(head), file=stream)
    for r in results.values():
        print(
            f"{r.name:<22} {r.recompute_fraction:>7.3f} {r.prompt_fraction:>6.3f} "
            f"{r.top1:>6.3f} {r.top1_question:>6.3f} {r.kl_last:>8.4f} {r.rouge_l:>7.3f} "
            f"{r.exact:>6.2f} {r.fetch_ms:>9.1f} {r.compute_s:>9.3f} {r.ttft_ratio:>9.3f}",
            file=stream,
        )


BREAKDOWN = ("plan", "fetch", "deserialise", "rope", "assemble", "recompute", "question")
"""The TTFT parts of a reuse mode, in the order they happen."""


def print_flips(results: dict[str, ModeResult], stream: Any = sys.stdout) -> None:
    """Where the top-1 disagreements along the answer are: how many, on how many
    prompts, and how many at near ties of full prefill (its top two tokens within 0.1
    or 0.3 of probability)."""
    print(
        f"{'mode':<22} {'flips':>6} {'prompts':>8} {'gap<0.1':>8} {'gap<0.3':>8} "
        f"{'worst prompt':>13}",
        file=stream,
    )
    for r in results.values():
        gaps = [g for row in r.rows for g in row.flip_gaps]
        if not gaps and r.family == "full":
            continue
        per_prompt = [len(row.flip_gaps) for row in r.rows]
        print(
            f"{r.name:<22} {len(gaps):>6} {sum(1 for n in per_prompt if n):>8} "
            f"{sum(g < 0.1 for g in gaps):>8} {sum(g < 0.3 for g in gaps):>8} "
            f"{max(per_prompt, default=0):>13}",
            file=stream,
        )


def print_breakdown(results: dict[str, ModeResult], stream: Any = sys.stdout) -> None:
    """Median milliseconds per TTFT part for every mode that recorded parts."""
    head = f"{'mode':<22} " + " ".join(f"{p:>11}" for p in BREAKDOWN) + f" {'TTFT ms':>9}"
    print(head, file=stream)
    print("-" * len(head), file=stream)
    for r in results.values():
        if not any(row.parts for row in r.rows):
            continue
        total = statistics.median((row.fetch_s + row.compute_s) for row in r.rows) * 1e3
        cells = " ".join(f"{r.part_ms(p):>11.1f}" for p in BREAKDOWN)
        print(f"{r.name:<22} {cells} {total:>9.1f}", file=stream)


def goals(results: dict[str, ModeResult]) -> list[str]:
    lines = []
    craft = [r for r in results.values() if r.family == "cachecraft"]
    ok = [
        r for r in craft if r.top1 >= 0.97 and r.recompute_fraction <= 0.30 and r.ttft_ratio <= 0.4
    ]
    lines.append(
        "Cache-Craft >= 0.97 top-1 with <= 30 % of cached chunk tokens recomputed and TTFT "
        f"<= 0.4x full: {'met by ' + ', '.join(r.name for r in ok) if ok else 'missed'}"
    )
    quality = [r for r in craft if r.top1 >= 0.97 and r.recompute_fraction <= 0.30]
    lines.append(
        "Cache-Craft >= 0.97 top-1 at <= 30 % recompute (quality alone): "
        f"{'met by ' + ', '.join(r.name for r in quality) if quality else 'missed'}"
    )
    for r in craft:
        stored = r.ttft_ratio_all_stored
        on_stored = "no prompt had" if math.isnan(stored) else f"{stored:.3f}x on the prompts with"
        lines.append(
            f"{r.name}: top-1 {r.top1:.3f}, recompute {r.recompute_fraction:.3f}, TTFT "
            f"{r.ttft_ratio:.3f}x full ({on_stored} all chunks stored)"
        )
    for r in craft:
        alpha = r.name.split("=")[1]
        rnd, fk = results.get(f"random a={alpha}"), results.get(f"first-k a={alpha}")
        if rnd is None or fk is None:
            continue
        lines.append(
            f"{r.name} (recompute {r.recompute_fraction:.3f}): top-1 {r.top1:.3f} vs first-k "
            f"{fk.top1:.3f} ({'beats' if r.top1 > fk.top1 else 'does not beat'}), random "
            f"{rnd.top1:.3f} ({'beats' if r.top1 > rnd.top1 else 'does not beat'}); KL "
            f"{r.kl_last:.4f} vs {fk.kl_last:.4f} / {rnd.kl_last:.4f}"
        )
    return lines


def plot(results: dict[str, ModeResult], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, kl_ax) = plt.subplots(1, 2, figsize=(12, 4.5))
    naive, full = results["naive reuse"], results["full prefill"]
    styles = {
        "first-k": "s-",
        "cachecraft": "o-",
        "cacheblend": "P",
        "random": "^--",
        "first-k matched": "v:",
    }
    names = {"first-k matched": "first-k at Cache-Craft's count", "cachecraft": "Cache-Craft"}
    for family, style in styles.items():
        modes = sorted(
            (r for r in results.values() if r.family == family), key=lambda r: r.recompute_fraction
        )
        if not modes:
            continue
        xs = [0.0] + [r.recompute_fraction for r in modes]
        label = names.get(family, family)
        ax.plot(xs, [naive.top1] + [r.top1 for r in modes], style, label=label)
        kl_ax.plot(xs, [naive.kl_last] + [r.kl_last for r in modes], style, label=label)
    pre = results["prefix caching"]
    for axis, value in ((ax, lambda r: r.top1), (kl_ax, lambda r: r.kl_last)):
        axis.plot([0.0], [value(naive)], "kx", markersize=9, label="naive reuse")
        axis.plot([pre.recompute_fraction], [value(pre)], "D", color="grey", label="prefix caching")
        axis.set_xlabel("recompute fraction (cached chunk tokens through the model)")
        axis.grid(alpha=0.3)
    ax.plot([1.0], [full.top1], "k*", markersize=11, label="full prefill")
    ax.set_ylabel("top-1 agreement with full prefill (answer, mean)")
    kl_ax.set_ylabel("KL(full || mode) over the answer (median)")
    kl_ax.set_yscale("symlog", linthresh=1e-4)
    ax.legend(fontsize=8, loc="lower right")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
