"""The hit verifier's cost in bench/semantic_http.py's text-in runs (issue #15).

Issue #15's goal: the verifier adds at most 10% to the mean server-side lookup time at
the default configuration, text-in. semantic_http.py answers it by running, in the same
run and round-robin with the other servers, two daemons on the same entries and the
same queries: one with ``verification.enabled = false`` on a store without token
embeddings (what a daemon with verification off writes), one at the default
configuration (verification on) on a store whose MiniLM entries carry their packed token
embeddings (what it writes at insert). This module holds what that comparison adds:

- :data:`VERIFY_OFF`, :data:`VERIFY_ON` and :func:`variants` — the two daemons' names
  and settings;
- :class:`Counts` — lookups, hits, verified candidates and time spent verifying between
  two scrapes of a daemon's ``/metrics`` (``semcached_semantic_lookups``,
  ``semcached_semantic_verifications``, ``semcached_semantic_verify_seconds``);
- :func:`print_verification` — the table (off and on side by side, the added % of the
  mean server-side lookup time) and the goal lines.

The server-side mean is exact (the request-duration histogram's ``_sum`` / ``_count``);
its p50 / p99 are interpolated inside the histogram's buckets (5, 10, 25, 50 ms at
MiniLM's latencies), so they are coarse.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

VERIFY_OFF = "semcached verify=off"
VERIFY_ON = "semcached verify=on"
GOAL_ADDED = 0.10

_SAMPLE = re.compile(r"^(\w+)\{([^}]*)\} (\S+)$")
_LABEL = re.compile(r'(\w+)="([^"]*)"')


def variants(choice: str) -> list[tuple[str, bool]]:
    """(server name, verification.enabled) of the text-in daemons ``--verification``
    asks for: ``off``, ``on`` or ``both`` (off first)."""
    out = []
    if choice in ("off", "both"):
        out.append((VERIFY_OFF, False))
    if choice in ("on", "both"):
        out.append((VERIFY_ON, True))
    return out


def counter(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of counter ``name`` (``name_total`` in the exposition) whose
    labels include ``labels``, in one /metrics text."""
    total = 0.0
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match is None or match.group(1) not in (name, name + "_total"):
            continue
        found = dict(_LABEL.findall(match.group(2)))
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(match.group(3))
    return total


@dataclass(frozen=True, slots=True)
class Counts:
    """A daemon's semantic lookups and verifications between two /metrics scrapes."""

    lookups: float
    hits: float
    verified: float
    verified_hits: float
    verify_seconds: float

    @classmethod
    def between(cls, before: str, after: str, category: str) -> Counts:
        def delta(name: str, **labels: str) -> float:
            return counter(after, name, category=category, **labels) - counter(
                before, name, category=category, **labels
            )

        return cls(
            lookups=delta("semcached_semantic_lookups"),
            hits=delta("semcached_semantic_lookups", result="hit"),
            verified=delta("semcached_semantic_verifications"),
            verified_hits=delta("semcached_semantic_verifications", verdict="hit"),
            verify_seconds=delta("semcached_semantic_verify_seconds"),
        )

    @property
    def hit_rate(self) -> float:
        return self.hits / self.lookups if self.lookups else math.nan

    @property
    def share_verified(self) -> float:
        return self.verified / self.lookups if self.lookups else math.nan

    @property
    def verify_ms(self) -> float:
        """Mean time per verified candidate (on the worker pool, queueing included)."""
        return self.verify_seconds / self.verified * 1e3 if self.verified else math.nan

    @property
    def verify_ms_per_lookup(self) -> float:
        """Time spent verifying per lookup: the verifier's own share of the mean, free of
        the run-to-run noise of comparing two daemons' means (but not counting the token
        embeddings' packing in the model call)."""
        return self.verify_seconds / self.lookups * 1e3 if self.lookups else math.nan


@dataclass(frozen=True, slots=True)
class LatencyRow:
    """One text-in daemon's measured run at one concurrency (times in ms)."""

    size: int
    concurrency: int
    server: str
    counts: Counts
    rps: float
    p50_ms: float
    p99_ms: float
    server_mean_ms: float
    server_p50_ms: float
    server_p99_ms: float


def _pct(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{x:.1%}"


def _ms(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{x:.2f}"


def added(on: LatencyRow, off: LatencyRow) -> float:
    """What verification adds to the mean server-side lookup time, as a fraction."""
    return on.server_mean_ms / off.server_mean_ms - 1.0


def print_verification(rows: Sequence[LatencyRow]) -> None:
    """The off / on table and, where both ran, issue #15's goal per size and concurrency."""
    if not rows:
        return
    off = {(r.size, r.concurrency): r for r in rows if r.server == VERIFY_OFF}
    print(
        "\n| entries | conc. | verification | hit rate | verified | verify ms / candidate "
        "| verify ms / lookup | server mean ms | server p50 ms | server p99 ms | client p50 ms "
        "| client p99 ms | req/s | mean vs off |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        base = off.get((r.size, r.concurrency))
        versus = "—" if base is None or r is base else f"{added(r, base):+.1%}"
        print(
            f"| {r.size} | {r.concurrency} | {r.server.split('=')[-1]} "
            f"| {_pct(r.counts.hit_rate)} | {_pct(r.counts.share_verified)} "
            f"| {_ms(r.counts.verify_ms)} | {_ms(r.counts.verify_ms_per_lookup)} "
            f"| {_ms(r.server_mean_ms)} | {_ms(r.server_p50_ms)} "
            f"| {_ms(r.server_p99_ms)} | {_ms(r.p50_ms)} | {_ms(r.p99_ms)} | {r.rps:.0f} "
            f"| {versus} |"
        )
    print("\nGoal (issue #15): verification adds <= 10% to the mean server-side lookup time:")
    for r in rows:
        base = off.get((r.size, r.concurrency))
        if r.server != VERIFY_ON or base is None:
            continue
        share = added(r, base)
        clean = " (server-side times are comparable at the lowest concurrency only)"
        print(
            f"- text-in, {r.size} entries, concurrency {r.concurrency}: "
            f"{base.server_mean_ms:.2f} -> {r.server_mean_ms:.2f} ms, {share:+.1%} "
            f"(verifying itself: {r.counts.verify_ms_per_lookup:.2f} ms per lookup, "
            f"{r.counts.verify_ms_per_lookup / base.server_mean_ms:+.1%}), "
            f"{_pct(r.counts.share_verified)} of lookups verified: "
            f"{'met' if share <= GOAL_ADDED else 'missed'}"
            f"{clean if r.concurrency != min(x.concurrency for x in rows) else ''}"
        )
