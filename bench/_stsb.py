"""The STS Benchmark as labelled prompt pairs for hit-quality work.

STS-B (Cer et al. 2017) scores sentence pairs 0-5. For caching (the data set's
README in the shared data folder defines these): **positive** score >= 4.0 (the
same answer serves both), **hard negative** 2.0 <= score < 3.5 (same topic, another
question), **easy negative** < 2.0; pairs in [3.5, 4.0) are ambiguous and left out
of every metric. Its license does not allow copying it into this repository, so
scripts take its folder as an argument (``--stsb``).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from _datasets import require

__all__ = ["STSB_WHERE", "LabelledPair", "load_stsb"]

STSB_WHERE = (
    "Get the STS Benchmark (sts-train.csv, sts-dev.csv, sts-test.csv: "
    "https://ixa2.si.ehu.eus/stswiki/index.php/STSbenchmark) and pass its folder."
)
Kind = Literal["positive", "hard", "easy", "ambiguous"]


@dataclass(frozen=True, slots=True)
class LabelledPair:
    stored: str
    asked: str
    score: float

    @property
    def kind(self) -> Kind:
        if self.score >= 4.0:
            return "positive"
        if self.score < 2.0:
            return "easy"
        return "hard" if self.score < 3.5 else "ambiguous"


def load_stsb(folder: Path, split: str) -> list[LabelledPair]:
    """One split (train, dev or test): tab-separated, score in column 5, texts in 6 and 7."""
    path = require(folder / f"sts-{split}.csv", f"STS-B {split} split", STSB_WHERE)
    pairs = []
    with path.open(encoding="utf-8", newline="") as f:
        for row in csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE):
            if len(row) >= 7:
                pairs.append(LabelledPair(row[5], row[6], float(row[4])))
    return pairs
