"""Category classification in the daemon: the examples embedded, the decision applied.

The decision itself is pure (:class:`~semcached.cachepolicy.classify.ExampleClassifier`);
this module gives it the example vectors and the request vectors:

- The examples of every enabled category (``examples = [...]`` in its
  ``[categories.<name>]`` table) are embedded with the daemon's own embedder, once at
  start and again on a configuration reload (SIGHUP). A reload builds a whole new
  classifier and swaps it in with one assignment, so a request sees the old one or the
  new one, never a mix; if embedding the new examples fails, the old classifier stays
  and the log says why.
- A request that names no category is classified by the vector its lookup or insert
  computes anyway (the embedded text, or the caller's vector: with a server-side
  embedder, vectors live in the examples' space), so classifying costs no model call.
- With ``embedding.backend = "none"`` nothing can embed the examples: classification
  is off, said once at start and in the stats, and such requests go to ``default``.

Loop-only, like the engine: ``choose`` and the counters are used on the event loop.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from semcached.cachepolicy.categories import DEFAULT_CATEGORY, CategoryPolicy, CategoryTable
from semcached.cachepolicy.classify import ExampleClassifier, Source
from semcached.service.config import ClassificationSettings
from semcached.service.semantic.embedding.base import Embedder
from semcached.service.semantic.embedding.disabled import DisabledEmbedder
from semcached.service.semantic.types import Vector

__all__ = ["CategoryChoice", "CategoryClassifier", "ClassificationStats"]

log = logging.getLogger(__name__)

_OFF_NO_EMBEDDER = (
    "embedding.backend is 'none': the examples cannot be embedded, so requests that name "
    "no category go to 'default'"
)
_OFF_NO_EXAMPLES = "no category lists examples: requests that name no category go to 'default'"
_OFF_NOT_LOADED = "the examples are not embedded yet"


@dataclass(frozen=True, slots=True)
class CategoryChoice:
    """The category a request is served under, and how it was chosen."""

    policy: CategoryPolicy
    source: Source
    confidence: float | None = None  # only when inferred


@dataclass(slots=True)
class ClassificationStats:
    """Counters since start (read them; never reset)."""

    inferred: Counter[str] = field(default_factory=Counter)
    """Requests classified into each category."""
    below_floor: Counter[str] = field(default_factory=Counter)
    """Requests sent to the default category for want of confidence, by the category
    that was nearest."""
    unclassified: int = 0
    """Requests that named no category while classification was off (to the default)."""
    reloads: int = 0
    reload_failures: int = 0


class CategoryClassifier:
    """The current classifier of one engine, built from its categories' examples."""

    def __init__(
        self,
        embedder: Embedder,
        categories: CategoryTable,
        settings: ClassificationSettings | None = None,
    ) -> None:
        """``categories``: the table the engine serves (a reload may change examples,
        never which categories exist)."""
        self._embedder = embedder
        self._categories = categories
        self._settings = settings or ClassificationSettings()
        self._current: ExampleClassifier | None = None
        self.stats = ClassificationStats()
        self.server_side = not isinstance(embedder, DisabledEmbedder)
        self.off_reason: str | None = _OFF_NOT_LOADED if self.server_side else _OFF_NO_EMBEDDER
        self.last_error: str | None = None

    @property
    def current(self) -> ExampleClassifier | None:
        """The classifier in force; None while classification is off."""
        return self._current

    @property
    def model(self) -> str:
        """The embedding model the examples were embedded with."""
        return self._embedder.name

    async def load(
        self,
        categories: CategoryTable | None = None,
        settings: ClassificationSettings | None = None,
    ) -> bool:
        """Embed the examples of ``categories`` (default: the engine's) and swap the new
        classifier in; on failure keep the old one, log why and return False.

        Only categories the engine serves, and that are enabled, are classified into: a
        category that appears in a reloaded file but not in the running table needs a
        restart, and is skipped with a warning.
        """
        table = categories or self._categories
        settings = settings or self._settings
        if not self.server_side:
            log.info("category classification off: %s", _OFF_NO_EMBEDDER)
            return False
        for policy in table:
            if policy.examples and policy.name not in self._categories.policies:
                log.warning(
                    "category %r is not served by the running daemon (restart to add it); "
                    "its examples are ignored",
                    policy.name,
                )
        examples = {
            p.name: p.examples
            for p in table
            if p.examples
            and p.name in self._categories.policies
            and self._categories.policies[p.name].enabled
        }
        try:
            texts = [t for rows in examples.values() for t in rows]
            embedded = await self._embedder.embed(texts) if texts else None
            rows: dict[str, Vector] = {}
            start = 0
            for name, prompts in examples.items():
                assert embedded is not None
                rows[name] = np.asarray(embedded[start : start + len(prompts)], dtype=np.float32)
                start += len(prompts)
            new = ExampleClassifier(
                rows,
                default=DEFAULT_CATEGORY,
                neighbours=settings.neighbours,
                scale=settings.scale,
                min_confidence=settings.min_confidence,
            )
        except Exception as exc:  # a failing embedder must not take the old classifier
            self.last_error = f"{type(exc).__name__}: {exc}"
            state = "the previous examples stay in force" if self._current else "it stays off"
            log.error("category examples not embedded, %s: %s", state, self.last_error)
            return False
        self._current = new if new.enabled else None
        self._settings = settings
        self.last_error = None
        self.off_reason = None if new.enabled else _OFF_NO_EXAMPLES
        if new.enabled:
            counts = ", ".join(f"{n} ({c})" for n, c in new.example_counts.items())
            log.info(
                "category classification on: examples of %s embedded with %s "
                "(confidence floor %.2f)",
                counts,
                self.model,
                new.min_confidence,
            )
        else:
            log.info("category classification off: %s", _OFF_NO_EXAMPLES)
        return True

    async def reload(self, categories: CategoryTable, settings: ClassificationSettings) -> bool:
        """:meth:`load` for a configuration reload, counted in the stats."""
        ok = await self.load(categories, settings)
        self.stats.reloads += 1
        if not ok and self.server_side:
            self.stats.reload_failures += 1
        return ok

    def given(self, name: str | None) -> CategoryChoice | None:
        """The caller's category, resolved (400 if unknown); None if it named none."""
        if name is None:
            return None
        return CategoryChoice(self._categories.resolve(name), "given")

    def default(self) -> CategoryChoice:
        """The default category, for a request that named none and has no vector."""
        return CategoryChoice(self._categories.resolve(None), "default")

    def choose(self, given: CategoryChoice | None, vector: Vector) -> CategoryChoice:
        """``given``, else the category ``vector`` is classified into; counted."""
        if given is not None:
            return given
        current = self._current
        if current is None:
            self.stats.unclassified += 1
            return CategoryChoice(self._categories.resolve(None), "default")
        decision = current.classify(vector)
        if decision.source == "inferred":
            self.stats.inferred[decision.category] += 1
            return CategoryChoice(
                self._categories.resolve(decision.category), "inferred", decision.confidence
            )
        self.stats.below_floor[decision.nearest] += 1
        return CategoryChoice(self._categories.resolve(None), "default")
