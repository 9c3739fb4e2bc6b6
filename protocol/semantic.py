"""The semantic cache's request and response bodies as they travel (msgspec structs).

The daemon decodes every request body with these structs (unknown fields are
rejected) and generates its OpenAPI document from them, so the constraints below
(name patterns, lengths, ranges, enums) are at once what is enforced and what is
documented. A client builds and reads the same structs.

Why msgspec rather than pydantic v2: a struct decodes straight from JSON bytes and
validates in the same pass, several times faster than pydantic on the small bodies
of the lookup path (no model instantiation, no separate JSON parse), and
``msgspec.json.schema_components`` emits JSON Schema 2020-12 (OpenAPI 3.1's dialect)
with every ``Meta`` constraint, enum and pattern. It is also one small C extension
with no dependencies, for the clients too.

Vectors travel as a JSON list of numbers or as base64 of little-endian float32 (4
bytes a value instead of about 20, and no number parsing). Their dimension is the
index's (``embedding.dim``, or the embedding model's); the daemon checks it.
Cached JSON responses are :class:`msgspec.Raw`: the daemon embeds the stored bytes
in its answer without parsing them again.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

__all__ = [
    "MAX_LOOKUP_ID_CHARS",
    "MAX_PARTITION_CHARS",
    "MAX_PROMPT_CHARS",
    "MAX_REASON_CHARS",
    "MAX_TTL_S",
    "MODEL_PATTERN",
    "NAME_PATTERN",
    "CalibrationSource",
    "CategoryCalibration",
    "CategorySource",
    "CategoryStats",
    "ClassificationStats",
    "ResponseFormat",
    "SemanticEntry",
    "SemanticFeedback",
    "SemanticFeedbackResult",
    "SemanticInsert",
    "SemanticInsertResult",
    "SemanticLoadReport",
    "SemanticLoadResult",
    "SemanticLookup",
    "SemanticLookupBatch",
    "SemanticLookupResult",
    "SemanticLookupResults",
    "SemanticPurge",
    "SemanticPurgeResult",
    "SemanticStats",
    "Strategy",
    "VerificationStats",
]

NAME_PATTERN = r"^[A-Za-z0-9_.:\-]{1,128}$"
"""Namespaces and categories: printable, short, no separator that could collide in
composite keys or metric labels."""
MODEL_PATTERN = r"^[A-Za-z0-9_.:/@\-]{1,256}$"
"""Downstream model names as gateways spell them (``gpt-4o``, ``meta-llama/Llama-3-8B``)."""
MAX_LOAD = 1e12
MAX_PROMPT_CHARS = 1 << 20
MAX_PARTITION_CHARS = 1024
MAX_TTL_S = 10 * 365 * 86400.0
MAX_LOOKUP_ID_CHARS = 1024
MAX_REASON_CHARS = 1024

ResponseFormat = Literal["json", "bytes"]
Strategy = Literal["exact", "semantic"]
CalibrationSource = Literal["off", "configured", "calibrated", "budget_unmet"]
CategorySource = Literal["given", "inferred", "default", "entry"]
"""How a request's category was chosen: named by the caller (``given``), classified by
the categories' example prompts (``inferred``), the default category because the
request named none and classification was unsure or off (``default``), or an exact
match's stored entry (``entry``: nothing was classified)."""

Name = Annotated[str, msgspec.Meta(pattern=NAME_PATTERN)]
Namespace = Annotated[
    str,
    msgspec.Meta(
        pattern=NAME_PATTERN, description="Tenant; entries never match across namespaces."
    ),
]
Category = Annotated[
    str,
    msgspec.Meta(
        pattern=NAME_PATTERN,
        description="Category policy to apply; when absent, classified by the categories' "
        "example prompts (the default category if unsure).",
    ),
]
Model = Annotated[
    str,
    msgspec.Meta(
        pattern=MODEL_PATTERN,
        description="The downstream model the prompt is for: its reported load (POST "
        "/v1/semantic/load) may relax the category's threshold and lengthen TTLs.",
    ),
]
Source = Annotated[CategorySource, msgspec.Meta(description="How the category was chosen.")]
Confidence = Annotated[
    float | None,
    msgspec.Meta(description="The classifier's confidence, when the category was inferred."),
]
Partition = Annotated[
    str,
    msgspec.Meta(
        max_length=MAX_PARTITION_CHARS,
        description="E.g. model + system-prompt hash + tools; entries never match across.",
    ),
]
# A prompt: not blank (\S: at least one character that is not whitespace).
Prompt = Annotated[str, msgspec.Meta(pattern=r"\S", max_length=MAX_PROMPT_CHARS)]
Vector = Annotated[
    Annotated[list[float], msgspec.Meta(min_length=1)] | Annotated[str, msgspec.Meta(min_length=1)],
    msgspec.Meta(
        description="A list of numbers, or base64 of little-endian float32; of the "
        "index's dimension, finite and not all zeros."
    ),
]


class SemanticLookup(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """Has a prompt meaning the same thing been answered? Give text, vector or both."""

    namespace: Namespace
    text: (
        Annotated[
            str,
            msgspec.Meta(
                pattern=r"\S",
                max_length=MAX_PROMPT_CHARS,
                description="The prompt (embedded if no vector is given).",
            ),
        ]
        | None
    ) = None
    vector: Vector | None = None
    category: Category | None = None
    partition: Partition = ""
    threshold: (
        Annotated[
            float,
            msgspec.Meta(ge=-1.0, le=1.0, description="Clamped to the category's bounds."),
        ]
        | None
    ) = None
    model: Model | None = None
    exact_only: Annotated[
        bool,
        msgspec.Meta(
            description="Only the exact tier (the same normalised text in the partition): "
            "no embedding, no similarity search. Needs text."
        ),
    ] = False


class SemanticLookupBatch(msgspec.Struct, forbid_unknown_fields=True):
    """Several lookups in one request (at most ``semantic.max_batch``)."""

    lookups: Annotated[list[SemanticLookup], msgspec.Meta(min_length=1)]


class SemanticLookupResult(msgspec.Struct, kw_only=True):
    """Hit or miss; ``response`` and ``response_format`` only with a document."""

    hit: bool
    similarity: Annotated[
        float | None, msgspec.Meta(description="The best candidate's, also on a miss.")
    ] = None
    entry_id: int | None = None
    age_s: float | None = None
    category: str
    strategy: Strategy | None = None
    response: Annotated[
        msgspec.Raw | msgspec.UnsetType,
        msgspec.Meta(description="The cached response: its JSON, or base64 for bytes."),
    ] = msgspec.UNSET
    response_format: ResponseFormat | msgspec.UnsetType = msgspec.UNSET
    lookup_id: Annotated[
        str | msgspec.UnsetType,
        msgspec.Meta(description="Only on a hit: names it in POST /v1/semantic/feedback."),
    ] = msgspec.UNSET
    category_source: Source = "given"
    category_confidence: Confidence = None
    verifier_score: Annotated[
        float | None,
        msgspec.Meta(
            description="The verifier's probability that the best candidate's answer "
            "serves this prompt, when its similarity fell in the verifier's grey band "
            "(null: the similarity alone decided)."
        ),
    ] = None
    load_level: Annotated[
        float,
        msgspec.Meta(
            description="How far the model's reported load relaxed the hit rule: 0 (not at "
            "all) to 1 (to the category's load_min_threshold)."
        ),
    ] = 0.0


class SemanticLookupResults(msgspec.Struct):
    results: Annotated[
        list[SemanticLookupResult], msgspec.Meta(description="One per lookup, in order.")
    ]


class SemanticInsert(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """A prompt and its response to cache."""

    namespace: Namespace
    prompt: Prompt
    response: Annotated[
        msgspec.Raw,
        msgspec.Meta(description="Any JSON value, or base64 when response_format is bytes."),
    ]
    response_format: ResponseFormat = "json"
    category: Category | None = None
    partition: Partition = ""
    model: str = ""
    vector: Vector | None = None
    ttl_s: (
        Annotated[
            float,
            msgspec.Meta(ge=1e-3, le=MAX_TTL_S, description="Default: the category's TTL."),
        ]
        | None
    ) = None


class SemanticInsertResult(msgspec.Struct):
    entry_id: int
    category: str
    expires_at: Annotated[float, msgspec.Meta(description="Unix time.")]
    category_source: Source = "given"
    category_confidence: Confidence = None


class SemanticEntry(msgspec.Struct):
    """One stored entry."""

    entry_id: int
    namespace: str
    category: str
    partition: str
    model: str
    prompt: str
    response: Annotated[
        msgspec.Raw, msgspec.Meta(description="The response: its JSON, or base64 for bytes.")
    ]
    response_format: ResponseFormat
    created_at: float
    expires_at: float
    hit_count: int
    last_hit_at: float
    size_bytes: int


class SemanticPurge(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """Every entry of a namespace, optionally only one category or partition."""

    namespace: Namespace
    category: Category | None = None
    partition: Partition | msgspec.UnsetType = msgspec.UNSET


class SemanticPurgeResult(msgspec.Struct):
    purged: int


class CategoryCalibration(msgspec.Struct):
    """A category's threshold as feedback calibrated it, and the evidence behind it."""

    threshold: Annotated[float, msgspec.Meta(description="In force for lookups that ask none.")]
    configured_threshold: float
    max_false_hit_rate: Annotated[float, msgspec.Meta(description="The budget; 0: none.")]
    source: Annotated[
        CalibrationSource,
        msgspec.Meta(
            description="off: no budget; configured: too little feedback yet; calibrated; "
            "budget_unmet: even the best-supported scores miss the budget (max_threshold)."
        ),
    ]
    confidence: Annotated[float, msgspec.Meta(description="Of the upper bound.")]
    observations: Annotated[int, msgspec.Meta(description="Reports on hits kept (windowed).")]
    false_hits: int
    hits_above: Annotated[int, msgspec.Meta(description="Reports on hits at or above threshold.")]
    estimate: Annotated[
        float | None,
        msgspec.Meta(description="Wrong among the reported hits at or above the threshold."),
    ]
    upper_bound: Annotated[
        float | None, msgspec.Meta(description="Clopper-Pearson upper bound of the estimate.")
    ]


class CategoryStats(msgspec.Struct):
    """Counters of one category since start, and its current size."""

    entries: int
    bytes: int
    hits: int
    misses: int
    inserts: int
    evictions: int
    expirations: int
    inferred: Annotated[
        int, msgspec.Meta(description="Requests naming no category classified into this one.")
    ] = 0
    relaxed_lookups: Annotated[
        int, msgspec.Meta(description="Lookups whose threshold a model's load lowered.")
    ] = 0
    relaxed_hits: Annotated[
        int, msgspec.Meta(description="Hits among them that the unrelaxed threshold would miss.")
    ] = 0
    below_floor: Annotated[
        int,
        msgspec.Meta(
            description="Requests naming no category nearest to this one but below the "
            "confidence floor (served under default)."
        ),
    ] = 0
    calibration: CategoryCalibration | None = None
    verified: Annotated[
        int,
        msgspec.Meta(description="Lookups whose best candidate the verifier judged."),
    ] = 0
    verified_hits: Annotated[int, msgspec.Meta(description="Of those, the ones it accepted.")] = 0
    verify_seconds: Annotated[
        float, msgspec.Meta(description="Time spent verifying them, summed.")
    ] = 0.0
    verified_calibration: Annotated[
        CategoryCalibration | None,
        msgspec.Meta(
            description="The verifier probability a grey-band candidate needs, as feedback "
            "on verified hits calibrated it (null: no verified hit yet)."
        ),
    ] = None


class SemanticFeedback(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """Whether a served hit was right. Name it by ``lookup_id`` (which carries the score
    the hit was decided at, so that it recalibrates the category) or ``entry_id``
    (removes a wrong entry, but has no score to calibrate with); exactly one of them."""

    correct: bool
    lookup_id: (
        Annotated[
            str,
            msgspec.Meta(
                min_length=1,
                max_length=MAX_LOOKUP_ID_CHARS,
                pattern=r"^[A-Za-z0-9_\-]+$",
                description="From the lookup's answer.",
            ),
        ]
        | None
    ) = None
    entry_id: Annotated[int, msgspec.Meta(ge=1, le=(1 << 63) - 1)] | None = None
    reason: (
        Annotated[str, msgspec.Meta(max_length=MAX_REASON_CHARS, description="Logged, not stored.")]
        | None
    ) = None


class SemanticFeedbackResult(msgspec.Struct):
    """What the report changed."""

    entry_id: int
    category: str
    correct: bool
    counted: Annotated[
        bool,
        msgspec.Meta(
            description="Whether it fed the category's calibration: a first report by "
            "lookup id of a semantic (not exact) hit."
        ),
    ]
    removed: Annotated[
        bool, msgspec.Meta(description="Whether the entry was deleted (reported wrong).")
    ]
    calibration: CategoryCalibration


class ClassificationStats(msgspec.Struct):
    """Category classification of requests that name no category."""

    enabled: bool
    reason: Annotated[
        str | None, msgspec.Meta(description="Why classification is off (null when on).")
    ] = None
    model: Annotated[
        str, msgspec.Meta(description="The embedding model the examples were embedded with.")
    ] = ""
    min_confidence: float = 0.0
    examples: Annotated[
        dict[str, int], msgspec.Meta(description="Example prompts in force, per category.")
    ] = {}
    unclassified: Annotated[
        int,
        msgspec.Meta(description="Requests naming no category while classification was off."),
    ] = 0
    reloads: int = 0
    reload_failures: int = 0
    last_error: Annotated[
        str | None,
        msgspec.Meta(description="Why the last load of the examples failed (null: it did not)."),
    ] = None


class VerificationStats(msgspec.Struct):
    """The hit verifier: whether it runs, which model, and its grey band."""

    enabled: bool
    reason: Annotated[
        str | None, msgspec.Meta(description="Why verification is off (null when on).")
    ] = None
    model: str = ""
    embedding_model: str = ""
    band: Annotated[
        list[float],
        msgspec.Meta(
            description="[low, high): candidates below low miss, from high (or the "
            "category's threshold, if higher) hit unverified, in between are verified."
        ),
    ] = []
    threshold: Annotated[
        float, msgspec.Meta(description="The model's own verifier-probability threshold.")
    ] = 0.0
    token_cache_bytes: Annotated[
        int, msgspec.Meta(description="Bytes of recent prompts' token embeddings held.")
    ] = 0


LoadValue = Annotated[float, msgspec.Meta(ge=0.0, le=MAX_LOAD)]


class SemanticLoadReport(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """A downstream model's load, as the gateway sees it: its queue depth, its latency,
    or both (the busier one counts), each over the model's configured target."""

    namespace: Namespace
    model: Model
    queue_depth: (
        Annotated[LoadValue, msgspec.Meta(description="Requests waiting for the model.")] | None
    ) = None
    latency_ms: (
        Annotated[LoadValue, msgspec.Meta(description="The model's recent latency.")] | None
    ) = None


class SemanticLoadResult(msgspec.Struct):
    """A model's load in a namespace after the report."""

    namespace: str
    model: str
    pressure: Annotated[
        float, msgspec.Meta(description="Smoothed load over target (0 when stale).")
    ]
    level: Annotated[float, msgspec.Meta(description="Relaxation: 0 (none) to 1 (full).")]
    engaged: Annotated[
        bool,
        msgspec.Meta(description="Relaxing: pressure reached load.engage, not yet below release."),
    ]


class SemanticStats(msgspec.Struct):
    entries: int
    categories: dict[str, CategoryStats]
    classification: ClassificationStats | None = None
    verification: VerificationStats | None = None
    load: Annotated[
        list[SemanticLoadResult],
        msgspec.Meta(description="Every model whose load is tracked, by namespace."),
    ] = []
