"""ROUGE-L of bench/_rouge.py on strings whose LCS is known by hand."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from _rouge import lcs_length, rouge_l


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ("ABCBDAB", "BDCABA", 4),  # the textbook pair (BCBA)
        ("abc", "abc", 3),
        ("abc", "def", 0),
        ("", "abc", 0),
        ("axbxcx", "abc", 3),
    ],
)
def test_lcs_length(a: str, b: str, expected: int) -> None:
    assert lcs_length(a, b) == expected
    assert lcs_length(b, a) == expected


def test_rouge_l_on_words() -> None:
    ref = ["the", "cat", "sat", "on", "the", "mat"]
    cand = ["the", "cat", "lay", "on", "a", "mat"]
    # LCS: the cat on mat = 4; P = R = 4/6.
    assert rouge_l(cand, ref) == pytest.approx(4 / 6)
    assert rouge_l(ref, ref) == 1.0


def test_rouge_l_unequal_lengths_is_the_harmonic_mean() -> None:
    # LCS 2 of a 2-token candidate and a 4-token reference: P = 1, R = 0.5, F = 2/3.
    assert rouge_l([1, 2], [1, 5, 2, 6]) == pytest.approx(2 / 3)


def test_rouge_l_empty() -> None:
    assert rouge_l([], []) == 1.0
    assert rouge_l([1], []) == 0.0
    assert rouge_l([], [1]) == 0.0
