"""ROUGE-L between two token sequences: the F-measure of their longest common
subsequence (Lin, 2004), as bench/rag_reuse.py scores a reuse mode's greedy answer
against full prefill's.

Written here rather than taken from the ``rouge-score`` package: the bench compares
token ids (no tokenising, stemming or text normalisation is wanted), and the whole
metric is one dynamic programme.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

__all__ = ["lcs_length", "rouge_l"]

T = TypeVar("T")


def lcs_length(a: Sequence[T], b: Sequence[T]) -> int:
    """The length of the longest common subsequence of ``a`` and ``b``.
    O(len(a)·len(b)) time, O(min(len(a), len(b))) memory (one row kept)."""
    if len(a) < len(b):
        a, b = b, a
    row = [0] * (len(b) + 1)
    for x in a:
        diagonal = 0  # row[j - 1] of the previous row
        for j, y in enumerate(b, start=1):
            above = row[j]
            row[j] = diagonal + 1 if x == y else max(above, row[j - 1])
            diagonal = above
    return row[-1]


def rouge_l(candidate: Sequence[T], reference: Sequence[T], beta: float = 1.0) -> float:
    """ROUGE-L F_beta of ``candidate`` against ``reference``: with L the LCS length,
    P = L/|candidate|, R = L/|reference|, F = (1+β²)·P·R / (R + β²·P); β = 1 is the
    harmonic mean. Two empty sequences score 1.0, one empty sequence 0.0.
    O(|candidate|·|reference|)."""
    if not candidate and not reference:
        return 1.0
    if not candidate or not reference:
        return 0.0
    common = lcs_length(candidate, reference)
    if common == 0:
        return 0.0
    precision, recall = common / len(candidate), common / len(reference)
    b2 = beta * beta
    return (1 + b2) * precision * recall / (recall + b2 * precision)
