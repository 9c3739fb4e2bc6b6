"""Where reused chunk KV departs from full prefill (bench/rag_reuse.py --diagnose).

For each reused chunk that moved (its variant was computed after another prefix), the
assembled cache of naive reuse is compared with full prefill's cache: per layer and per
token, the squared L2 distance of K and V (summed over heads and dimensions). The
report says which layers carry the deviation, how it falls along a chunk (its first
tokens after the boundary vs the rest), and how much of it each selection's tokens
cover (the deviation summed over the tokens a mode recomputes ÷ the chunk's total):
a selection that covers more of the deviation leaves less of it in the cache.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

__all__ = ["BUCKETS", "Diagnosis"]

BUCKETS: tuple[tuple[int, int], ...] = ((0, 4), (4, 16), (16, 64), (64, 1 << 30))
"""Token positions within a chunk, grouped: the first after the boundary, then wider."""


@dataclass(slots=True)
class Diagnosis:
    """Deviation sums over every moved chunk seen. O(layers·tokens) per chunk."""

    layer_sum: list[NDArray[np.float64]] = field(default_factory=list)  # per chunk: [layers]
    bucket_sum: list[list[float]] = field(default_factory=list)  # per chunk: mean per bucket
    coverage: dict[str, list[float]] = field(default_factory=dict)
    shares: list[float] = field(default_factory=list)  # share of the chunk's tokens

    def add(
        self,
        reused: torch.Tensor,
        exact: torch.Tensor,
        span: tuple[int, int],
        selections: Mapping[str, Sequence[int]],
        check_layer: int = 1,
    ) -> None:
        """One moved chunk at ``span`` = ``[start, end)``: ``reused`` and ``exact`` are the caches
        as ``[layers, 2, kv_heads, T, head_dim]``; ``selections`` the positions within
        the chunk that each mode recomputes. Also scored: the tokens with the largest
        deviation at ``check_layer`` (what CacheBlend selects: its fresh K/V there are
        exact, layer 0 being context-free) and the oracle, at the first selection's
        count."""
        start, end = span
        dev = (reused[:, :, :, start:end] - exact[:, :, :, start:end]).double().square()
        per = dev.sum(dim=(1, 2, 4))  # [layers, n]
        self.layer_sum.append(per.mean(dim=1).numpy())
        n = end - start
        self.bucket_sum.append(
            [float(per[:, a : min(b, n)].mean()) if a < n else float("nan") for a, b in BUCKETS]
        )
        total = float(per.sum()) or 1.0
        per_token = per.sum(dim=0)
        for name, chosen in selections.items():
            index = torch.as_tensor(list(chosen), dtype=torch.long)
            covered = float(per_token[index].sum()) if index.numel() else 0.0
            self.coverage.setdefault(name, []).append(covered / total)
        if selections:
            k = len(next(iter(selections.values())))
            early = torch.sort(per[check_layer], descending=True, stable=True).indices[:k]
            name = f"layer-{check_layer} deviation (same count)"
            self.coverage.setdefault(name, []).append(float(per_token[early].sum()) / total)
            # The oracle: the most deviation any k tokens cover.
            top = torch.sort(per_token, descending=True).values[:k]
            self.coverage.setdefault("oracle (same count)", []).append(float(top.sum()) / total)

    def report(self, stream: Any = sys.stdout) -> None:
        if not self.layer_sum:
            print("no moved chunks to diagnose", file=stream)
            return
        layers = np.mean(self.layer_sum, axis=0)
        share = layers / layers.sum()
        print(
            f"Deviation of naive reuse from full prefill over {len(self.layer_sum)} moved "
            "chunks (squared L2 of K and V per token):",
            file=stream,
        )
        print(
            "  by layer (share of the total): "
            + " ".join(f"{i}:{s:.3f}" for i, s in enumerate(share)),
            file=stream,
        )
        buckets = np.nanmean(np.array(self.bucket_sum), axis=0)
        print(
            "  by position in the chunk (mean per token, all layers): "
            + ", ".join(
                f"[{a}, {b if b < 1 << 30 else 'end'}): {v:.1f}"
                for (a, b), v in zip(BUCKETS, buckets, strict=True)
            ),
            file=stream,
        )
        for name, values in self.coverage.items():
            print(
                f"  share of the deviation on the tokens {name} recomputes: {np.mean(values):.3f}",
                file=stream,
            )
