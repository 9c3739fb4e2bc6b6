"""Hit verification: is the cached answer right for the new prompt, not only similar?

A semantic cache that decides on cosine similarity alone sits on one poor curve of
recall against wrong answers: same-topic prompts that ask something else ("... a
guitar" / "... a flute", "... in 2019" / "... in 2021") are as similar as true
paraphrases. A :class:`Verifier` looks at both texts (and their token embeddings,
when the embedder gave them) and returns the probability that the cached answer
serves the new prompt. It runs only in a category's grey band of similarity (see
:class:`~semcached.cachepolicy.categories.CategoryPolicy`), so most lookups pay
nothing.

The default, :class:`TreeVerifier`, is a small gradient-boosted tree model over
:mod:`~semcached.cachepolicy.verify_features`, trained on the STS Benchmark's train
split by ``bench/train_verifier.py`` and shipped in the package
(``models/verifier-minilm-v1.json``): its file names its format version and the
embedding model its features were computed with, and a file that is missing or of
another version is refused (:class:`VerifierModelError`), never half-read.
Verifying one candidate of two ~15-token prompts measured 0.16 ms (best of 15
passes over 128 STS-B pairs; median 0.22 ms), 0.11 ms per candidate in batches of 8
against one query; the features are nearly all of it, the compiled tree walk 7 us
(bench/verifier_speed.py, 2-core machine busy with other work: load average 3; the
first implementation measured 1.09 ms in the same conditions).

Pure: texts and numbers in, probabilities out; reading the model file is the one
I/O, at construction.
"""

from __future__ import annotations

import importlib.resources
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import numpy.typing as npt
import orjson

from semcached.cachepolicy.trees import TreeEnsemble
from semcached.cachepolicy.verify_features import FEATURE_NAMES, TokenEmbeddings, feature_rows
from semcached.errors import ConfigError

__all__ = [
    "DEFAULT_VERIFIER_MODEL",
    "VERIFIER_FORMAT",
    "VERIFIER_MIN_THRESHOLD",
    "Candidate",
    "TokenEmbeddings",
    "TreeVerifier",
    "Verifier",
    "VerifierModelError",
]

VERIFIER_FORMAT = "semcached-verifier/1"
VERIFIER_MIN_THRESHOLD = 0.5
"""Feedback never calibrates a verifier threshold below this: a candidate the model
thinks more likely wrong than right is not served."""
DEFAULT_VERIFIER_MODEL = "verifier-minilm-v1.json"


class VerifierModelError(ConfigError):
    """The verifier's model file is missing, unreadable or of another version."""


@dataclass(frozen=True, slots=True)
class Candidate:
    """One (cached prompt, new prompt) pair to verify."""

    cached: str
    query: str
    cosine: float
    cached_tokens: TokenEmbeddings | None = None
    query_tokens: TokenEmbeddings | None = None


class Verifier(Protocol):
    """Scores candidate hits; implementations are pure and thread-safe."""

    @property
    def name(self) -> str:
        """Names the model (in stats and logs)."""
        ...

    @property
    def embedding_model(self) -> str:
        """The embedding model whose cosines and token embeddings it was built for."""
        ...

    @property
    def threshold(self) -> float:
        """The probability from which a grey-band candidate is a hit by default."""
        ...

    @property
    def band(self) -> tuple[float, float]:
        """The grey band ``[low, high)`` of cosine similarity it was trained for: below
        ``low`` a candidate is a miss, from ``high`` a hit, in between it is verified."""
        ...

    def verify(self, candidates: Sequence[Candidate]) -> npt.NDArray[np.float64]:
        """The probability, per candidate, that its cached answer serves its query."""
        ...


@dataclass(frozen=True, slots=True)
class TreeVerifier:
    """:class:`Verifier` over :data:`~semcached.cachepolicy.verify_features.FEATURE_NAMES`
    with a tree ensemble read from a model file (see the module docstring)."""

    name: str
    embedding_model: str
    threshold: float
    band: tuple[float, float]
    trees: TreeEnsemble
    stop_ids: frozenset[int]

    @classmethod
    def load(cls, path: str | Path | None = None) -> TreeVerifier:
        """The shipped model, or the file at ``path``. Raises VerifierModelError."""
        try:
            if path is None:
                raw = (
                    importlib.resources.files("semcached.cachepolicy")
                    .joinpath("models", DEFAULT_VERIFIER_MODEL)
                    .read_bytes()
                )
                where = f"the packaged {DEFAULT_VERIFIER_MODEL}"
            else:
                raw = Path(path).read_bytes()
                where = str(path)
        except OSError as exc:
            raise VerifierModelError(f"cannot read the verifier model: {exc}") from None
        return cls.from_bytes(raw, where=where)

    @classmethod
    def from_bytes(cls, raw: bytes, *, where: str = "the verifier model") -> TreeVerifier:
        try:
            doc = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise VerifierModelError(f"{where} is not JSON: {exc}") from None
        if not isinstance(doc, dict) or doc.get("format") != VERIFIER_FORMAT:
            found = doc.get("format") if isinstance(doc, dict) else None
            raise VerifierModelError(
                f"{where} has format {found!r}; this semcached reads {VERIFIER_FORMAT!r}"
            )
        if tuple(doc.get("features", ())) != FEATURE_NAMES:
            raise VerifierModelError(f"{where} was trained on other features than these")
        try:
            trees = TreeEnsemble.from_lightgbm(doc["trees"])
            verifier = cls(
                name=str(doc["name"]),
                embedding_model=str(doc["embedding_model"]),
                threshold=float(doc["threshold"]),
                band=(float(doc["band"][0]), float(doc["band"][1])),
                trees=trees,
                stop_ids=frozenset(int(i) for i in doc.get("stop_token_ids", ())),
            )
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise VerifierModelError(f"{where} is incomplete or damaged: {exc!r}") from None
        if trees.features != len(FEATURE_NAMES) or trees.sigmoid is None:
            raise VerifierModelError(f"{where} is not a binary model of these features")
        low, high = verifier.band
        if not (-1.0 <= low <= high <= 1.0 and 0.0 <= verifier.threshold <= 1.0):
            raise VerifierModelError(f"{where} has a band or threshold out of range")
        return verifier

    def features(self, candidates: Sequence[Candidate]) -> npt.NDArray[np.float64]:
        """The feature rows of ``candidates`` (len(candidates) x len(FEATURE_NAMES))."""
        return feature_rows(candidates, self.stop_ids)

    def verify(self, candidates: Sequence[Candidate]) -> npt.NDArray[np.float64]:
        if not candidates:
            return np.empty(0)
        return self.trees.predict(self.features(candidates))
