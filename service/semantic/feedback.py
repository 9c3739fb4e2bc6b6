"""The semantic cache's feedback: calibrated thresholds, entry confirmations, lookup ids.

The :class:`FeedbackBook` is the engine's one source of "which threshold decides this
hit" (:meth:`FeedbackBook.threshold`) and keeps what that depends on:

- two :class:`~semcached.cachepolicy.calibration.Calibrator` per category, fed by
  reports on served hits (``POST /v1/semantic/feedback``) and persisted after each
  report: one for hits decided on the cosine, one for hits the verifier decided
  (scored by its probability, a different scale);
- per-entry confirmations (vCache-style entry thresholds), at most ``max_entries`` in
  memory (the oldest are dropped first), persisted too;
- the :class:`~semcached.service.semantic.lookup_ids.LookupIdSigner` whose key lives in
  LMDB, so lookup ids outlive restarts;
- the recent lookup ids already reported (at most ``max_reported``), so that a report
  sent twice (a retry) counts once. This guard is in memory: after a restart, a repeat
  of a report acknowledged before it counts again.

Threading: loop-only like the engine; LMDB writes go to the executor.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Executor

from semcached.cachepolicy.calibration import (
    DEFAULT_CONFIDENCE,
    Calibration,
    Calibrator,
    EntryEvidence,
)
from semcached.cachepolicy.categories import CategoryPolicy, CategoryTable
from semcached.cachepolicy.verify import VERIFIER_MIN_THRESHOLD
from semcached.index.feedback import BandCounts, FeedbackStore
from semcached.index.shared.records import Change, pack_feedback
from semcached.service.blocking import run_blocking
from semcached.service.semantic.lookup_ids import LookupIdSigner, SignedLookup

__all__ = ["FeedbackBook"]


class FeedbackBook:
    """Construct, ``await open(executor)`` (loads LMDB), then use on the loop."""

    def __init__(
        self,
        categories: CategoryTable,
        store: FeedbackStore | None = None,
        *,
        max_entries: int = 100_000,
        max_reported: int = 100_000,
        verifier_threshold: float = VERIFIER_MIN_THRESHOLD,
    ) -> None:
        """``store``: where feedback is kept (None: in memory only, a fresh lookup-id
        key per process, for tests and benchmarks); its bands must be
        :data:`~semcached.cachepolicy.calibration.BANDS`; ``verifier_threshold``: the
        verifier model's own threshold, for categories that state none."""
        self._categories = categories
        self._store = store
        self._max_entries = max_entries
        self._max_reported = max_reported
        self._calibrators: dict[str, Calibrator] = {}
        self._verified: dict[str, Calibrator] = {}  # calibrators of verified hits
        self.verifier_threshold = verifier_threshold
        self._entries: OrderedDict[int, EntryEvidence] = OrderedDict()
        self._reported: OrderedDict[bytes, None] = OrderedDict()
        self._signer = LookupIdSigner(secrets.token_bytes(32))
        self._executor: Executor | None = None
        # Reports since start by (category, correct), for the metrics.
        self.reports: dict[tuple[str, bool], int] = {}

    async def open(self, executor: Executor, live: Callable[[int], bool]) -> None:
        """Load the key and the feedback; drop entry records ``live`` says are gone."""
        self._executor = executor
        if self._store is None:
            return
        store = self._store
        self._signer = LookupIdSigner(await run_blocking(executor, store.secret))
        await run_blocking(executor, store.prune_entries, live)
        state = await run_blocking(executor, store.load)
        for name, counts in state.categories.items():
            policy = self._categories.policies.get(name)
            if policy is not None:  # a category since removed from the config: ignored
                self._calibrators[name] = self._new_calibrator(policy, counts)
        for name, counts in state.verified.items():
            if name in self._categories.policies:
                self._verified[name] = self._new_verified_calibrator(
                    self._categories.policies[name], counts
                )
        for entry_id, (count, lowest) in list(state.entries.items())[-self._max_entries :]:
            self._entries[entry_id] = EntryEvidence(count, lowest)

    @staticmethod
    def _new_calibrator(policy: CategoryPolicy, counts: BandCounts | None = None) -> Calibrator:
        return Calibrator(
            configured=policy.threshold,
            min_threshold=policy.min_threshold,
            max_threshold=policy.max_threshold,
            budget=policy.max_false_hit_rate,
            counts=counts,
        )

    def configured_verified_threshold(self, policy: CategoryPolicy) -> float:
        """The verifier probability ``policy`` states, or the model's (0 in the config)."""
        return policy.verify_threshold or self.verifier_threshold

    def _new_verified_calibrator(
        self, policy: CategoryPolicy, counts: BandCounts | None = None
    ) -> Calibrator:
        configured = self.configured_verified_threshold(policy)
        return Calibrator(
            configured=configured,
            min_threshold=min(VERIFIER_MIN_THRESHOLD, configured),
            max_threshold=1.0,
            budget=policy.max_false_hit_rate,
            counts=counts,
        )

    def calibrator(self, policy: CategoryPolicy) -> Calibrator:
        found = self._calibrators.get(policy.name)
        if found is None:
            found = self._calibrators[policy.name] = self._new_calibrator(policy)
        return found

    def verified_calibrator(self, policy: CategoryPolicy) -> Calibrator:
        """The calibrator of the category's verified hits."""
        found = self._verified.get(policy.name)
        if found is None:
            found = self._verified[policy.name] = self._new_verified_calibrator(policy)
        return found

    # -- the hit rule ------------------------------------------------------------------

    def threshold(
        self, policy: CategoryPolicy, entry_id: int, requested: float | None = None
    ) -> float:
        """The threshold a candidate's score must reach. A request's own threshold wins
        (clamped, as before); else the entry's own once confirmed often enough, else
        the category's calibrated one (its configured one until feedback says more).
        O(1) (a recalibration after new feedback: O(bands))."""
        if requested is not None:
            return policy.effective_threshold(requested)
        category = self.calibrator(policy).threshold()
        evidence = self._entries.get(entry_id)
        if evidence is None:
            return category
        return evidence.threshold(category, policy.min_threshold)

    def verified_threshold(self, policy: CategoryPolicy) -> float:
        """The verifier probability a grey-band candidate needs: the configured one
        (:meth:`configured_verified_threshold`) until feedback on verified hits
        calibrates it to the category's budget, never below
        :data:`~semcached.cachepolicy.verify.VERIFIER_MIN_THRESHOLD` (unless configured
        lower). O(1), as :meth:`threshold`."""
        return self.verified_calibrator(policy).threshold()

    def issue(self, hit: SignedLookup) -> str:
        return self._signer.issue(hit)

    def resolve(self, lookup_id: str) -> SignedLookup | None:
        return self._signer.verify(lookup_id)

    # -- reports -----------------------------------------------------------------------

    def first_report(self, lookup_id: str) -> bool:
        """False when this lookup id was reported already (since start); remembers it."""
        key = hashlib.blake2b(lookup_id.encode(), digest_size=16).digest()
        if key in self._reported:
            return False
        self._reported[key] = None
        if len(self._reported) > self._max_reported:
            self._reported.popitem(last=False)
        return True

    async def record(
        self,
        policy: CategoryPolicy,
        entry_id: int,
        score: float | None,
        correct: bool,
        *,
        verified: bool = False,
        share_in: str | None = None,
    ) -> None:
        """Count a report durably: the category's bands when ``score`` is known (a report
        by lookup id on a semantic hit; the verified hits' bands when the verifier
        decided it), and the entry's confirmations. ``share_in``: the entry's namespace,
        to ship the report to other daemons with a shared tier (None: keep it here)."""
        key = (policy.name, correct)
        self.reports[key] = self.reports.get(key, 0) + 1
        category = None
        if score is not None:
            calibrator = self.verified_calibrator(policy) if verified else self.calibrator(policy)
            calibrator.observe(score, correct)
            category = (policy.name, calibrator.counts)
        entry = forget = None
        if correct:
            # An entry's own threshold is a cosine: a verified hit confirms it, no score.
            evidence = self._entries.pop(entry_id, EntryEvidence()).confirm(
                None if verified else score
            )
            self._entries[entry_id] = evidence
            if len(self._entries) > self._max_entries:
                self._entries.popitem(last=False)
            entry = (entry_id, evidence.confirmations, evidence.lowest_confirmed)
        else:  # the entry is removed: so is what was known of it
            self._entries.pop(entry_id, None)
            forget = entry_id
        if self._store is not None:
            store = self._store
            ship = None
            if share_in is not None and store.outbox is not None:
                report = pack_feedback(policy.name, score, correct, verified)
                ship = Change("fb", share_in, entry_id, time.time(), record=report)
            await run_blocking(
                self._executor,
                lambda: store.record(
                    category=category,
                    entry=entry,
                    forget_entry=forget,
                    verified=verified,
                    ship=ship,
                ),
            )

    # -- introspection -----------------------------------------------------------------

    def calibration(self, policy: CategoryPolicy, *, verified: bool = False) -> Calibration:
        """The category's rule for hits decided on the cosine (or by the verifier)."""
        calibrator = self.verified_calibrator(policy) if verified else self.calibrator(policy)
        return calibrator.calibration()

    def calibrations(self) -> dict[str, Calibration]:
        """Every enabled category's current rule and evidence."""
        return {p.name: self.calibration(p) for p in self._categories if p.enabled}

    def verified_calibrations(self) -> dict[str, Calibration]:
        """The rule for verified hits of each enabled category that has one yet."""
        return {
            p.name: self._verified[p.name].calibration()
            for p in self._categories
            if p.enabled and p.name in self._verified
        }

    @property
    def confidence(self) -> float:
        return DEFAULT_CONFIDENCE

    def evidence(self, entry_id: int) -> EntryEvidence | None:
        return self._entries.get(entry_id)
