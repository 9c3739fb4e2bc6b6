"""The synthetic data set of the semantic benchmarks: clustered unit vectors (see
:func:`synthetic_vectors`) and template prompts with paraphrases (see :func:`text_prompts`),
and MiniLM embeddings of texts through the daemon's own embedder.

The vector data set (dimension 384, like all-MiniLM-L6-v2):

- ``centroids`` topic centres on the unit sphere, made anisotropic like real sentence
  embeddings: each is ``normalise(a * mu + g / sqrt(d))`` with one shared direction
  ``mu`` and ``g ~ N(0, I)``, ``a = 0.42``, so two unrelated centres have cosine ~0.15;
- topic popularity is Zipf-like (weight ``1 / rank**0.8``, ranks shuffled), so a few
  topics hold many entries and most hold few;
- each topic has its own spread ``s**2 ~ U[0.2, 1.0]``: an entry is
  ``normalise(c + s * g / sqrt(d))``, so two entries of one topic have cosine ~0.5
  (loose topics, like conversation) to ~0.83 (dense ones, like code);
- *hit* queries are noisy copies of stored entries, ``normalise(e + t * g / sqrt(d))``
  with ``t**2 ~ U[0, 0.35]`` (cosine 0.86 to 1 to their source), so many sit on either
  side of a 0.90 threshold; *miss* queries are fresh draws from the same mixture (their
  best stored neighbour is a topic sibling, cosine ~0.5 to ~0.9 in dense topics).

Everything is seeded; chunk ``i`` of the entries comes from its own generator, so the
entries of a size are generated in bounded memory and written to a memory-mapped file.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

DIM = 384
CHUNK = 65_536
ANISOTROPY = 0.42
ZIPF = 0.8
SPREAD = (0.2, 1.0)
HIT_NOISE = (0.0, 0.35)

Matrix = NDArray[np.float32]


def normalise(rows: Matrix) -> Matrix:
    rows = np.asarray(rows, dtype=np.float32)
    out: Matrix = rows / np.linalg.norm(rows, axis=-1, keepdims=True)
    return out


# -- synthetic vectors --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Mixture:
    """The topic model every vector of one run is drawn from."""

    centres: Matrix  # (centroids, DIM), unit rows
    weights: NDArray[np.float64]  # topic popularity, sums to 1
    spread: NDArray[np.float32]  # per topic s

    @classmethod
    def create(cls, centroids: int, seed: int, dim: int = DIM) -> Mixture:
        rng = np.random.default_rng([seed, 0])
        mu = normalise(rng.standard_normal(dim).astype(np.float32))
        g = rng.standard_normal((centroids, dim)).astype(np.float32) / math.sqrt(dim)
        centres = normalise(ANISOTROPY * mu + g)
        weights = 1.0 / np.arange(1, centroids + 1, dtype=np.float64) ** ZIPF
        rng.shuffle(weights)
        spread = np.sqrt(rng.uniform(*SPREAD, size=centroids)).astype(np.float32)
        return cls(centres, weights / weights.sum(), spread)

    def draw(self, n: int, rng: np.random.Generator) -> Matrix:
        topic = rng.choice(len(self.weights), size=n, p=self.weights)
        dim = self.centres.shape[1]
        noise = rng.standard_normal((n, dim), dtype=np.float32) / np.float32(math.sqrt(dim))
        return normalise(self.centres[topic] + self.spread[topic, None] * noise)


def synthetic_vectors(out: np.memmap, start: int, mixture: Mixture, seed: int) -> None:
    """Fill ``out[start:]`` with entries of the mixture, chunk by chunk (bounded memory)."""
    for chunk, lo in enumerate(range(start, len(out), CHUNK)):
        hi = min(lo + CHUNK, len(out))
        out[lo:hi] = mixture.draw(hi - lo, np.random.default_rng([seed, 1, chunk]))


def vector_queries(
    vectors: Matrix, first: int, count: int, mixture: Mixture, seed: int
) -> tuple[Matrix, int]:
    """``count`` queries: the first half noisy copies of rows ``first..`` of ``vectors``
    (hits, mostly), the rest fresh draws (misses). Returns (queries, number of copies)."""
    rng = np.random.default_rng([seed, 2])
    copies = count // 2
    rows = np.sort(rng.choice(np.arange(first, len(vectors)), size=copies, replace=False))
    t = np.sqrt(rng.uniform(*HIT_NOISE, size=copies)).astype(np.float32)
    dim = vectors.shape[1]
    noise = rng.standard_normal((copies, dim), dtype=np.float32) / np.float32(math.sqrt(dim))
    hits = normalise(np.asarray(vectors[rows]) + t[:, None] * noise)
    return np.concatenate([hits, mixture.draw(count - copies, rng)]), copies


# -- synthetic prompts --------------------------------------------------------------------

_VERBS = (
    "sort",
    "reverse",
    "parse",
    "merge",
    "filter",
    "serialize",
    "compress",
    "encrypt",
    "validate",
    "deduplicate",
    "cache",
    "paginate",
    "index",
    "search",
    "benchmark",
    "profile",
    "debug",
    "deploy",
    "test",
    "log",
    "split",
    "join",
    "hash",
    "count",
    "round",
    "format",
    "convert",
    "download",
    "upload",
    "schedule",
)
_NOUNS = (
    "a list of integers",
    "a JSON file",
    "a CSV table",
    "a dictionary",
    "a date string",
    "an HTTP response",
    "a log file",
    "a binary tree",
    "a linked list",
    "a matrix",
    "a SQL query result",
    "a web page",
    "a PDF document",
    "an image",
    "a video stream",
    "a user table",
    "a config file",
    "a YAML document",
    "a tarball",
    "a git repository",
    "a time series",
    "a graph",
    "a queue",
    "a set of URLs",
    "a string",
    "an email address",
    "a phone number",
    "a sentence",
    "a stack trace",
    "a docker image",
)
_PLACES = (
    "in Python",
    "in Rust",
    "in Go",
    "in JavaScript",
    "in Java",
    "in C++",
    "in Bash",
    "with pandas",
    "with numpy",
    "in SQL",
    "in Excel",
    "on Linux",
    "on Windows",
    "in Kotlin",
    "in Swift",
    "in Ruby",
    "in PHP",
    "in Haskell",
    "in Scala",
    "in TypeScript",
)
_TEMPLATES = (
    "How do I {v} {n} {p}?",
    "What is the best way to {v} {n} {p}?",
    "Can you show me how to {v} {n} {p}?",
    "I need to {v} {n} {p}. How?",
    "Explain how to {v} {n} {p}.",
    "Quick question: how to {v} {n} {p}",
    "Write code to {v} {n} {p}.",
    "{P}, how can I {v} {n}?",
)
MAX_TEXT_COMBOS = len(_VERBS) * len(_NOUNS) * len(_PLACES)


def _prompt(template: int, combo: int) -> str:
    v, rest = divmod(combo, len(_NOUNS) * len(_PLACES))
    n, p = divmod(rest, len(_PLACES))
    place = _PLACES[p]
    return _TEMPLATES[template].format(
        v=_VERBS[v], n=_NOUNS[n], p=place, P=place[0].upper() + place[1:]
    )


def text_prompts(stored: int, queries: int, seed: int) -> tuple[list[str], list[str], int]:
    """Stored prompts and query prompts from (verb, object, place) templates.

    Each stored prompt is a random (verb, object, place) in one template; the first half
    of the queries are paraphrases of stored prompts (same triple, another template), the
    rest are triples that are not stored (often one word away from a stored one).
    Returns (stored, queries, number of paraphrases).
    """
    if stored + queries > MAX_TEXT_COMBOS:
        raise ValueError(f"at most {MAX_TEXT_COMBOS} distinct prompts")
    rng = np.random.default_rng([seed, 3])
    combos = rng.permutation(MAX_TEXT_COMBOS)
    templates = rng.integers(0, len(_TEMPLATES), size=stored + queries)
    kept = [_prompt(int(t), int(c)) for t, c in zip(templates, combos[:stored], strict=False)]
    paraphrases = queries // 2
    picks = rng.choice(stored, size=paraphrases, replace=False)
    asked = [
        _prompt(
            int((templates[i] + 1 + rng.integers(len(_TEMPLATES) - 1)) % len(_TEMPLATES)),
            int(combos[i]),
        )
        for i in picks
    ]
    fresh = combos[stored : stored + queries - paraphrases]
    asked += [_prompt(int(t), int(c)) for t, c in zip(templates[stored:], fresh, strict=False)]
    return kept, asked, paraphrases


async def embed_texts(texts: Sequence[str]) -> Matrix:
    """MiniLM embeddings through the daemon's own embedder (same model, same code)."""
    from concurrent.futures import ThreadPoolExecutor

    from semcached.service.config import EmbeddingSettings
    from semcached.service.semantic.embedding import create_embedder

    with ThreadPoolExecutor(2) as executor:
        embedder = create_embedder(EmbeddingSettings(backend="minilm"), executor)
        await embedder.open()
        try:
            rows = [await embedder.embed(texts[i : i + 256]) for i in range(0, len(texts), 256)]
        finally:
            await embedder.close()
    return normalise(np.concatenate(rows))
