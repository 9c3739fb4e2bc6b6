"""Fail-open clients against a real daemon, a stopped one, one that stalls and one that
answers 500s: a lookup that cannot be answered within its budget is a miss, a failing
daemon opens the breaker, and stores never wait for the daemon."""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np
import pytest

from semcached.clients import (
    AsyncFailOpenClient,
    AsyncSemcachedClient,
    FailOpenClient,
    FailOpenPolicy,
    SemcachedClient,
)
from semcached.clients.breaker import CircuitBreaker
from semcached.clients.commands import lookup
from semcached.errors import SemcachedTimeoutError
from tests.daemon import DaemonProcess
from tests.unwell import FlakyServer, StalledServer

DIM = 384
# Generous: a budget of 50 ms must end a stalled call long before this.
STALL_BOUND_S = 5.0
POLICY = FailOpenPolicy(lookup_budget_s=0.05, failures_to_open=3, cooldown_s=30.0)
# Where the daemon must answer: a budget no busy test machine misses.
PATIENT = FailOpenPolicy(lookup_budget_s=5.0, failures_to_open=3, cooldown_s=30.0)


def unit(seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)
    return v / np.linalg.norm(v)


class Clock:
    """Monotonic seconds that move only when a test says so (the breaker's cool-down)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_healthy_daemon_answers_and_stores_arrive(daemon_url: str) -> None:
    with SemcachedClient(daemon_url) as client, FailOpenClient(client, PATIENT) as cache:
        assert cache.store("t1", "what is 2+2", {"a": 4}, partition="p", vector=unit(1))
        assert cache.flush(10)
        hit = cache.lookup("t1", "what is 2+2", partition="p")
        assert hit is not None
        assert (hit.hit, hit.response, hit.strategy) == (True, {"a": 4}, "exact")
        miss = cache.lookup("t1", vector=unit(2), partition="p")
        assert miss is not None
        assert not miss.hit
        stats = cache.stats
        assert (stats.lookups, stats.hits, stats.stores_sent) == (2, 1, 1)
        assert stats.errors == stats.budget_misses == stats.breaker_opens == 0
        assert cache.breaker.state == "closed"


def test_a_stopped_daemon_is_a_miss_and_opens_the_breaker(daemon: DaemonProcess) -> None:
    url = daemon.wait_listening()
    daemon.terminate()
    with SemcachedClient(url) as client, FailOpenClient(client, POLICY) as cache:
        for _ in range(3):
            assert cache.lookup("t1", "anything") is None
        assert cache.breaker.state == "open"
        assert cache.lookup("t1", "anything") is None
        assert not cache.store("t1", "p", 1, vector=unit(1))  # not even queued
        stats = cache.stats
        # Refused at once, or (on a busy machine) out of budget first.
        assert stats.errors + stats.budget_misses == 3
        assert (stats.lookups, stats.breaker_opens) == (4, 1)
        assert stats.short_circuits == 2  # the fourth lookup and the store


def test_a_stalled_daemon_costs_one_budget_per_lookup_then_nothing() -> None:
    with (
        StalledServer() as stalled,
        SemcachedClient(stalled.url, timeout_s=60) as client,
        FailOpenClient(client, POLICY) as cache,
    ):
        for _ in range(3):
            started = time.monotonic()
            assert cache.lookup("t1", "anything") is None
            assert time.monotonic() - started < STALL_BOUND_S  # not the client's 60 s
        assert stalled.accepted >= 1
        assert cache.stats.budget_misses == 3
        assert cache.breaker.state == "open"
        accepted = stalled.accepted
        assert cache.lookup("t1", "anything") is None
        assert stalled.accepted == accepted  # short-circuited: no new connection
        assert cache.stats.short_circuits == 1


def test_a_request_budget_is_a_real_timeout_for_that_call() -> None:
    with StalledServer() as stalled, SemcachedClient(stalled.url, timeout_s=60) as client:
        request = lookup("t1", "anything")
        started = time.monotonic()
        with pytest.raises(SemcachedTimeoutError):
            client.execute(replace(request, timeout_s=0.05))
        assert time.monotonic() - started < STALL_BOUND_S


def test_500s_are_misses_and_open_the_breaker() -> None:
    with (
        FlakyServer() as flaky,
        SemcachedClient(flaky.url) as client,
        FailOpenClient(client, POLICY) as cache,
    ):
        for _ in range(5):
            assert cache.lookup("t1", "anything") is None
        assert flaky.requests == 3  # 500 is not retried; then the breaker held the rest
        stats = cache.stats
        assert stats.errors + stats.budget_misses == 3
        assert (stats.short_circuits, stats.breaker_opens) == (2, 1)


def test_the_callers_own_mistake_does_not_open_the_breaker(daemon_url: str) -> None:
    with SemcachedClient(daemon_url) as client, FailOpenClient(client, PATIENT) as cache:
        for _ in range(5):
            assert cache.lookup("not a namespace!", "x") is None  # 400
        assert cache.stats.errors == 5
        assert cache.breaker.state == "closed"


def test_the_breaker_probes_after_its_cool_down_and_closes_on_recovery(daemon_url: str) -> None:
    clock = Clock()
    with (
        FlakyServer(daemon_url) as flaky,
        SemcachedClient(flaky.url) as client,
        FailOpenClient(client, PATIENT, clock=clock) as cache,
    ):
        for _ in range(3):
            assert cache.lookup("t1", vector=unit(1)) is None
        assert cache.breaker.state == "open"
        clock.now += 29.0
        assert cache.lookup("t1", vector=unit(1)) is None
        assert flaky.requests == 3
        clock.now += 2.0  # past the cool-down: half-open, one probe; still failing
        assert cache.breaker.state == "half_open"
        assert cache.lookup("t1", vector=unit(1)) is None
        assert (flaky.requests, cache.breaker.state, cache.stats.breaker_opens) == (4, "open", 2)
        flaky.failing = False
        assert cache.lookup("t1", vector=unit(1)) is None  # still cooling down
        clock.now += 31.0
        probe = cache.lookup("t1", vector=unit(1))
        assert probe is not None  # the daemon's own miss, through the proxy
        assert not probe.hit
        assert cache.breaker.state == "closed"
        assert cache.store("t1", "p", {"ok": True}, vector=unit(1))
        assert cache.flush(10)
        hit = cache.lookup("t1", vector=unit(1))
        assert hit is not None
        assert hit.hit
        assert flaky.requests == 7


def test_stores_are_dropped_and_counted_when_the_queue_is_full() -> None:
    policy = FailOpenPolicy(store_queue=2, store_workers=1, store_timeout_s=0.5)
    with (
        StalledServer() as stalled,
        SemcachedClient(stalled.url, timeout_s=60) as client,
        FailOpenClient(client, policy) as cache,
    ):
        started = time.monotonic()
        assert cache.store("t1", "p0", 0, vector=unit(0))
        assert stalled.accepted_event.wait(10)  # the worker holds the first store
        results = [cache.store("t1", f"p{i}", i, vector=unit(i)) for i in range(1, 6)]
        assert time.monotonic() - started < STALL_BOUND_S  # no store waited for the daemon
        assert results == [True, True, False, False, False]
        assert cache.stats.stores_dropped == 3
        assert cache.flush(10)
        stats = cache.stats
        assert stats.stores_failed == 3  # each timed out after store_timeout_s
        assert stats.stores_sent == 0


def test_breaker_state_machine_without_a_daemon() -> None:
    clock = Clock()
    breaker = CircuitBreaker(2, 10.0, clock=clock)
    assert breaker.allow()
    assert not breaker.failure()
    breaker.success()  # resets the count
    assert not breaker.failure()
    assert breaker.failure()
    assert (breaker.state, breaker.allow(), breaker.rejecting()) == ("open", False, True)
    clock.now += 10.0
    assert not breaker.rejecting()
    assert breaker.allow()  # the probe
    assert not breaker.allow()  # only one
    breaker.success()
    assert breaker.state == "closed"
    assert breaker.opens == 1


# --- asyncio ---------------------------------------------------------------------------


async def test_async_healthy_daemon(daemon_url: str) -> None:
    async with (
        AsyncSemcachedClient(daemon_url) as client,
        AsyncFailOpenClient(client, PATIENT) as cache,
    ):
        assert cache.store("t1", "hello there", [1], vector=unit(3))
        assert await cache.flush(10)
        hit = await cache.lookup("t1", vector=unit(3))
        assert hit is not None
        assert (hit.hit, hit.response) == (True, [1])
        assert (cache.stats.hits, cache.stats.stores_sent) == (1, 1)


async def test_async_stopped_stalled_and_failing_daemons_are_misses(
    daemon: DaemonProcess,
) -> None:
    url = daemon.wait_listening()
    daemon.terminate()
    with StalledServer() as stalled, FlakyServer() as flaky:
        for where, counter in (
            (url, "errors"),
            (stalled.url, "budget_misses"),
            (flaky.url, "errors"),
        ):
            async with (
                AsyncSemcachedClient(where, timeout_s=60) as client,
                AsyncFailOpenClient(client, POLICY) as cache,
            ):
                for _ in range(4):
                    started = time.monotonic()
                    assert await cache.lookup("t1", "anything") is None
                    assert time.monotonic() - started < STALL_BOUND_S
                stats = cache.stats
                # A refused or failed call may also run out of budget on a busy machine.
                assert stats.errors + stats.budget_misses == 3, (where, stats)
                assert getattr(stats, counter) >= 1, (where, stats)
                assert (stats.breaker_opens, stats.short_circuits) == (1, 1)
                assert not cache.store("t1", "p", 1)


async def test_async_stores_are_dropped_when_the_queue_is_full() -> None:
    policy = FailOpenPolicy(store_queue=2, store_workers=1, store_timeout_s=0.5)
    with StalledServer() as stalled:
        async with (
            AsyncSemcachedClient(stalled.url, timeout_s=60) as client,
            AsyncFailOpenClient(client, policy) as cache,
        ):
            results = [cache.store("t1", f"p{i}", i, vector=unit(i)) for i in range(5)]
            # Nothing ran yet (no await): the queue holds two, the rest were dropped.
            assert results == [True, True, False, False, False]
            assert cache.stats.stores_dropped == 3
            assert await cache.flush(10)
            assert cache.stats.stores_failed == 2


def test_a_store_that_is_not_json_fails_in_the_caller_and_spares_the_breaker(
    daemon_url: str,
) -> None:
    with SemcachedClient(daemon_url) as client, FailOpenClient(client, POLICY) as cache:
        for _ in range(5):
            assert not cache.store("t1", "p", object(), vector=unit(1))
        assert cache.stats.stores_failed == 5
        assert cache.breaker.state == "closed"
