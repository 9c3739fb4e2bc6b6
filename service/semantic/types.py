"""The semantic cache engine's requests, answers and counters (plain data, no logic)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import NDArray

from semcached.cachepolicy.calibration import Calibration
from semcached.cachepolicy.classify import Source
from semcached.index.docstore import Document

__all__ = [
    "CategoryStats",
    "FeedbackReport",
    "FeedbackResult",
    "Insert",
    "InsertResult",
    "Lookup",
    "LookupResult",
    "Strategy",
    "TenantQuota",
    "Vector",
]

Vector = NDArray[np.float32]
Strategy = Literal["exact", "semantic"]


@dataclass(frozen=True, slots=True)
class Lookup:
    """Has a prompt meaning the same thing been answered in this namespace and partition?"""

    namespace: str
    text: str | None = None
    vector: Vector | None = None
    category: str | None = None
    partition: str = ""
    threshold: float | None = None
    model: str = ""  # the downstream model: its reported load may relax the threshold
    exact_only: bool = False  # the exact tier alone: no embedding, no search


@dataclass(frozen=True, slots=True)
class LookupResult:
    hit: bool
    category: str
    similarity: float | None = None  # the best candidate's, also on a miss
    entry_id: int | None = None
    age_s: float | None = None
    strategy: Strategy | None = None
    document: Document | None = None
    lookup_id: str | None = None  # on a hit: names it in a feedback report
    # How ``category`` was chosen; the classifier's confidence when it was inferred.
    category_source: Source = "given"
    category_confidence: float | None = None
    # The verifier's probability that the best candidate answers the query, when its
    # similarity fell in the grey band and a verifier decided.
    verifier_score: float | None = None
    load_level: float = 0.0  # how far the model's load relaxed the hit rule (0 to 1)


@dataclass(frozen=True, slots=True)
class FeedbackReport:
    """Whether a served hit was right, named by its lookup id or its entry id."""

    correct: bool
    lookup_id: str | None = None
    entry_id: int | None = None
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class FeedbackResult:
    """What a report changed: ``counted`` when it fed its category's calibration (a
    first report by lookup id of a semantic hit), ``removed`` when the entry was deleted
    (reported wrong). ``calibration``: the category's rule after the report."""

    entry_id: int
    category: str
    correct: bool
    counted: bool
    removed: bool
    calibration: Calibration


@dataclass(frozen=True, slots=True)
class TenantQuota:
    """A tenant's share of the cache: the entries and bytes (0: no bound) of every
    namespace ``owns`` accepts. Past it, the tenant's oldest entries go."""

    tenant: str
    owns: Callable[[str], bool]
    max_entries: int = 0
    max_bytes: int = 0


@dataclass(frozen=True, slots=True)
class Insert:
    """A prompt and its response to cache (``quota``: the inserting tenant's, if any)."""

    namespace: str
    prompt: str
    response: bytes
    response_format: Literal["json", "bytes"] = "json"
    category: str | None = None
    partition: str = ""
    model: str = ""
    vector: Vector | None = None
    ttl_s: float | None = None
    quota: TenantQuota | None = None


@dataclass(frozen=True, slots=True)
class InsertResult:
    entry_id: int
    category: str
    expires_at: float
    category_source: Source = "given"
    category_confidence: float | None = None


@dataclass(slots=True)
class CategoryStats:
    """Counters of one category since start, and its current size."""

    entries: int = 0
    bytes: int = 0
    hits: int = 0
    misses: int = 0
    inserts: int = 0
    evictions: int = 0
    expirations: int = 0
    verified: int = 0
    """Lookups whose best candidate was in the grey band and went to the verifier."""
    verified_hits: int = 0
    """Of those, the ones the verifier accepted."""
    verify_seconds: float = 0.0
    """Time spent verifying (features and model), summed."""
