"""Which hit verifier the daemon runs, or why it runs none.

Verification is an improvement, never a precondition: a verifier model file that is
missing, damaged or of another version turns verification off (the threshold alone
decides, as before) and says so in the log, in ``/readyz`` (``degraded``) and in
``/v1/semantic/stats``; the daemon still starts. Off by the configuration (disabled,
or an embedding model the verifier was not trained for), it says why in the log and
the stats.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from semcached.cachepolicy.verify import TreeVerifier, Verifier, VerifierModelError
from semcached.service.config import EmbeddingSettings, VerificationSettings

__all__ = ["VerificationChoice", "choose_verifier"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class VerificationChoice:
    """The verifier to run (None: none), and why not (None when one runs)."""

    verifier: Verifier | None
    reason: str | None = None
    degraded: bool = False
    """Off by a fault (the model file or the embedder), not by the configuration."""


def choose_verifier(
    settings: VerificationSettings, embedding: EmbeddingSettings, embedder_name: str
) -> VerificationChoice:
    """Load the configured verifier for an embedder named ``embedder_name``. Never raises
    for a bad model: the reason comes back, logged."""
    if not settings.enabled:
        return VerificationChoice(None, "verification.enabled is false")
    if embedding.backend == "none":
        return VerificationChoice(
            None, "embedding.backend is 'none': callers' vectors are not the verifier's"
        )
    try:
        verifier = TreeVerifier.load(settings.model or None)
    except VerifierModelError as exc:
        return _degraded(f"{exc}; the similarity threshold alone decides hits")
    if verifier.embedding_model != embedder_name:
        reason = (
            f"the verifier {verifier.name} was trained on {verifier.embedding_model}, but "
            f"the embedding model is {embedder_name}; the similarity threshold alone decides"
        )
        log.warning("hit verification is off: %s", reason)
        return VerificationChoice(None, reason)
    log.info(
        "hit verification on: %s, grey band [%.3f, %.3f), threshold %.3f",
        verifier.name,
        *verifier.band,
        verifier.threshold,
    )
    return VerificationChoice(verifier)


def _degraded(reason: str) -> VerificationChoice:
    log.error("hit verification is off: %s", reason)
    return VerificationChoice(None, reason, degraded=True)
