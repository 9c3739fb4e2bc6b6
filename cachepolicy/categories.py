"""Per-category cache policy: the one place that decides "hit or not" and "how long".

Prompt categories differ in how densely their embeddings cluster, how often they
repeat and how fast answers go stale ("Category-Aware Semantic Caching for
Heterogeneous LLM Workloads", arXiv 2510.26835): code clusters densely, so a
paraphrase threshold that suits chat would return wrong code; stock prices go
stale in minutes, code patterns in months. Each category therefore carries its
own similarity threshold, TTL and quota, and a caller's per-request overrides
are clamped to bounds the operator set.

Policies are pure: numbers in, decisions out; no I/O, no clock.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace

from semcached.cachepolicy.policies import EVICTION_POLICIES, EvictionName
from semcached.errors import BadRequestError

__all__ = [
    "CATEGORY_FIELD_HELP",
    "DEFAULT_CATEGORIES",
    "DEFAULT_CATEGORY",
    "MAX_EXAMPLES",
    "MAX_EXAMPLE_CHARS",
    "CategoryPolicy",
    "CategoryTable",
    "UnknownCategoryError",
]

DEFAULT_CATEGORY = "default"

_MINUTE = 60.0
_HOUR = 60 * _MINUTE
_DAY = 24 * _HOUR
_MiB = 1 << 20

MAX_EXAMPLES = 64
"""Most example prompts per category: enough to span a category's phrasings; each is
embedded at start and on reload, and scanned on every classified request."""
MAX_EXAMPLE_CHARS = 1000
"""Longest example prompt: examples are short typical prompts, not documents."""


class UnknownCategoryError(BadRequestError):
    """A request named a category that is not configured (or is disabled)."""


@dataclass(frozen=True, slots=True)
class CategoryPolicy:
    """Threshold, lifetime and quota of one prompt category.

    ``threshold`` is a cosine similarity: a cached entry answers a lookup when its
    similarity to the query is at least the effective threshold. Per-request
    overrides of threshold and TTL are clamped to ``[min_*, max_*]``. ``eviction``
    names the policy that picks victims when the category is over its quota.
    """

    name: str
    threshold: float
    ttl_s: float
    max_entries: int
    max_bytes: int
    enabled: bool = True
    min_threshold: float = 0.5
    max_threshold: float = 1.0
    min_ttl_s: float = 1.0
    max_ttl_s: float = 365 * _DAY
    # S3-FIFO by the numbers of bench/eviction.py (README, "Eviction").
    eviction: EvictionName = "s3fifo"
    # 0: the threshold stays as configured. Else feedback recalibrates it
    # (semcached.cachepolicy.calibration) within [min_threshold, max_threshold].
    max_false_hit_rate: float = 0.0
    # Typical prompts of the category, for classifying requests that name none
    # (cachepolicy/classify.py).
    examples: tuple[str, ...] = ()
    # Whether candidates in the verifier's grey band are verified (cachepolicy/verify.py)
    # when the daemon runs a verifier, and the probability they need (0: the model's).
    verify: bool = True
    verify_threshold: float = 0.0
    # Load adaptation (cachepolicy/load.py): while the downstream model is busy the
    # threshold may fall to ``load_min_threshold`` (None: it never relaxes) and the
    # default TTL grow by up to ``load_ttl_factor``, both at full load. A positive
    # ``load_max_false_hit_rate`` lets the threshold relax only as far as feedback
    # certifies that rate (cachepolicy/load.py, certified_floor); 0: no such check.
    load_min_threshold: float | None = None
    load_ttl_factor: float = 1.0
    load_max_false_hit_rate: float = 0.0

    def __post_init__(self) -> None:
        problems = []
        if self.eviction not in EVICTION_POLICIES:
            problems.append(f"eviction must be one of {', '.join(EVICTION_POLICIES)}")
        if not (-1.0 <= self.min_threshold <= self.threshold <= self.max_threshold <= 1.0):
            problems.append("need -1 <= min_threshold <= threshold <= max_threshold <= 1")
        if not (0 < self.min_ttl_s <= self.ttl_s <= self.max_ttl_s) or math.isinf(self.max_ttl_s):
            problems.append("need 0 < min_ttl_s <= ttl_s <= max_ttl_s, all finite")
        if not 0.0 <= self.max_false_hit_rate < 1.0:
            problems.append("need 0 <= max_false_hit_rate < 1")
        if not 0.0 <= self.verify_threshold <= 1.0:
            problems.append("need 0 <= verify_threshold <= 1")
        if self.load_min_threshold is not None and not (
            self.min_threshold <= self.load_min_threshold <= self.threshold
        ):
            problems.append("need min_threshold <= load_min_threshold <= threshold")
        if not (self.load_ttl_factor >= 1.0 and math.isfinite(self.load_ttl_factor)):
            problems.append("need a finite load_ttl_factor >= 1")
        if not 0.0 <= self.load_max_false_hit_rate < 1.0:
            problems.append("need 0 <= load_max_false_hit_rate < 1")
        if self.max_entries < 1 or self.max_bytes < 1:
            problems.append("max_entries and max_bytes must be positive")
        problems.extend(_example_problems(self.examples))
        if problems:
            raise ValueError(f"category {self.name!r}: " + "; ".join(problems))

    def effective_threshold(self, requested: float | None = None) -> float:
        """The threshold in force for one lookup: the request's, clamped, or the category's."""
        if requested is None:
            return self.threshold
        return min(max(requested, self.min_threshold), self.max_threshold)

    def is_hit(self, similarity: float, requested_threshold: float | None = None) -> bool:
        """Whether a candidate this similar answers the lookup."""
        return similarity >= self.effective_threshold(requested_threshold)

    def ttl(self, requested_s: float | None = None) -> float:
        """Lifetime of a new entry: the request's, clamped, or the category's."""
        if requested_s is None:
            return self.ttl_s
        return min(max(requested_s, self.min_ttl_s), self.max_ttl_s)

    def expires_at(self, now: float, requested_ttl_s: float | None = None) -> float:
        return now + self.ttl(requested_ttl_s)

    @staticmethod
    def is_expired(expires_at: float, now: float) -> bool:
        """Expired entries are never served, whether or not the sweeper removed them yet."""
        return now >= expires_at

    @property
    def load_floor(self) -> float:
        """The lowest threshold load may relax to (the threshold itself when off)."""
        return self.threshold if self.load_min_threshold is None else self.load_min_threshold

    @property
    def adapts_to_load(self) -> bool:
        return self.load_floor < self.threshold or self.load_ttl_factor > 1.0

    def over_quota(self, entries: int, nbytes: int) -> bool:
        return entries > self.max_entries or nbytes > self.max_bytes


def _example_problems(examples: tuple[str, ...]) -> list[str]:
    """What is wrong with a category's example prompts (nothing: an empty list)."""
    if len(examples) > MAX_EXAMPLES:
        return [f"examples: at most {MAX_EXAMPLES}, got {len(examples)}"]
    problems = []
    for i, text in enumerate(examples):
        if not isinstance(text, str) or not text.strip():
            problems.append(f"examples[{i}]: must be a non-blank string")
        elif len(text) > MAX_EXAMPLE_CHARS:
            problems.append(
                f"examples[{i}]: at most {MAX_EXAMPLE_CHARS} characters, got {len(text)}"
            )
    if len(set(examples)) < len(examples):
        problems.append("examples: each may appear only once")
    return problems


# What each field of a ``[categories.<name>]`` table means (the reference table).
CATEGORY_FIELD_HELP: dict[str, str] = {
    "threshold": "Cosine similarity a cached entry needs to answer a lookup.",
    "ttl_s": "Lifetime of a new entry, in seconds.",
    "max_entries": "Most entries kept; over it the category evicts.",
    "max_bytes": "Most bytes of entries kept; over it the category evicts.",
    "enabled": "Whether requests may name the category.",
    "min_threshold": "Lowest threshold a request may ask for.",
    "max_threshold": "Highest threshold a request may ask for.",
    "min_ttl_s": "Shortest TTL a request may ask for.",
    "max_ttl_s": "Longest TTL a request may ask for.",
    "eviction": "Which entry goes when over quota: `lru` (least recently used), "
    "`s3fifo` (S3-FIFO), `onebit` (learned one-bit predictions with a robustness guard; "
    "see Eviction), `reuse` (GDSF: hits times saved cost per byte, aged).",
    "max_false_hit_rate": "Budget of wrong hits among served semantic hits (e.g. 0.02); "
    "feedback then recalibrates the threshold within its min/max (0: the threshold "
    "stays as configured; see Feedback and calibration).",
    "verify": "Whether candidates in the verifier's grey band of similarity are judged by "
    "the hit verifier (when the daemon runs one; see Hit verification).",
    "verify_threshold": "Verifier probability a grey-band candidate needs (0: the model's "
    "own); feedback on verified hits recalibrates it to max_false_hit_rate.",
    "load_min_threshold": "Lowest the threshold may relax to while the downstream model "
    "is fully loaded (within [min_threshold, threshold]; unset: it never relaxes; see "
    "Load adaptation).",
    "load_ttl_factor": "How much longer a new entry's default TTL is at full load "
    "(at least 1; within max_ttl_s).",
    "load_max_false_hit_rate": "Budget of wrong hits while relaxed: the threshold relaxes "
    "only as far as feedback certifies this rate among served hits (0: no check, down "
    "to load_min_threshold).",
    "examples": f"Typical prompts of the category (at most {MAX_EXAMPLES}, each at most "
    f"{MAX_EXAMPLE_CHARS} characters): a lookup or insert that names no category is given "
    "the one whose examples its vector is nearest (see Category classification).",
}

# Defaults follow the paper's observations. Thresholds are cosine similarities for
# all-MiniLM-L6-v2-like sentence embeddings; bench/semantic_quality.py measures them.
DEFAULT_CATEGORIES: tuple[CategoryPolicy, ...] = (
    # Anything not classified: the paraphrase threshold measured on GPTCache's pairs.
    CategoryPolicy(
        DEFAULT_CATEGORY, threshold=0.85, ttl_s=1 * _DAY, max_entries=200_000, max_bytes=512 * _MiB
    ),
    # Dense: near neighbours are often different programs ("sort ascending" vs
    # "descending"), so demand near-identity; patterns stay valid for months.
    CategoryPolicy(
        "code",
        threshold=0.93,
        ttl_s=30 * _DAY,
        max_entries=200_000,
        max_bytes=512 * _MiB,
        min_threshold=0.85,
    ),
    # Sparse and rarely repeated: paraphrases sit further apart; context ages fast.
    CategoryPolicy(
        "conversation", threshold=0.80, ttl_s=6 * _HOUR, max_entries=100_000, max_bytes=256 * _MiB
    ),
    # Factual Q&A repeats in a power law and stays true for weeks.
    CategoryPolicy(
        "factual", threshold=0.87, ttl_s=7 * _DAY, max_entries=200_000, max_bytes=512 * _MiB
    ),
    # Prices, scores, weather: stale in minutes; a near miss is a wrong number.
    CategoryPolicy(
        "volatile",
        threshold=0.95,
        ttl_s=5 * _MINUTE,
        max_entries=20_000,
        max_bytes=64 * _MiB,
        min_threshold=0.9,
        max_ttl_s=1 * _HOUR,
    ),
)


@dataclass(frozen=True)
class CategoryTable:
    """The configured categories by name; always contains :data:`DEFAULT_CATEGORY`."""

    policies: Mapping[str, CategoryPolicy] = field(
        default_factory=lambda: {p.name: p for p in DEFAULT_CATEGORIES}
    )

    def __post_init__(self) -> None:
        if DEFAULT_CATEGORY not in self.policies:
            raise ValueError(f"the category table must define {DEFAULT_CATEGORY!r}")
        for name, policy in self.policies.items():
            if name != policy.name:
                raise ValueError(f"category keyed {name!r} is named {policy.name!r}")

    def resolve(self, name: str | None) -> CategoryPolicy:
        """The policy for a request's category; no name means the default category."""
        policy = self.policies.get(name or DEFAULT_CATEGORY)
        if policy is None:
            known = ", ".join(sorted(self.policies))
            raise UnknownCategoryError(
                "unknown_category",
                f"unknown category {name!r}; configured categories: {known}",
                field="category",
            )
        if not policy.enabled:
            raise UnknownCategoryError(
                "category_disabled", f"category {name!r} is disabled", field="category"
            )
        return policy

    def __iter__(self) -> Iterator[CategoryPolicy]:
        return iter(self.policies.values())

    def with_overrides(self, overrides: Mapping[str, Mapping[str, object]]) -> CategoryTable:
        """A new table where each named category has the given fields replaced.

        A name that is not yet in the table starts from the default category's values
        (its examples excepted).
        Raises ``ValueError`` / ``TypeError`` naming the category and field on bad input.
        """
        policies = dict(self.policies)
        for name, fields in overrides.items():
            # A new category starts from the default's values, but not its examples.
            base = policies.get(name) or replace(policies[DEFAULT_CATEGORY], name=name, examples=())
            unknown = set(fields) - (set(CategoryPolicy.__dataclass_fields__) - {"name"})
            if unknown:
                raise ValueError(f"category {name!r}: unknown field {sorted(unknown)[0]!r}")
            policies[name] = replace(base, **fields)  # type: ignore[arg-type]
        return CategoryTable(policies)
