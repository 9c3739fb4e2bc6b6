"""Components open in order, close in reverse, and a failure stops the daemon."""

from __future__ import annotations

import asyncio

from semcached.service.lifecycle import Components, FunctionComponent, Readiness, ShutdownRequest


def recorder(events: list[str], name: str, fail: bool = False) -> FunctionComponent:
    async def opener() -> None:
        events.append(f"open {name}")
        if fail:
            raise OSError("disk on fire")

    async def closer() -> None:
        events.append(f"close {name}")

    return FunctionComponent(name, opener, closer)


async def finish(components: Components) -> None:
    components.start_opening()
    for _ in range(200):
        if components.readiness.status != "starting":
            return
        await asyncio.sleep(0.005)


async def test_open_in_order_close_in_reverse() -> None:
    events: list[str] = []
    components = Components(Readiness(), ShutdownRequest())
    for name in ("a", "b", "c"):
        components.add(recorder(events, name))
    assert components.readiness.report() == {"status": "starting", "waiting_for": ["a", "b", "c"]}
    await finish(components)
    assert components.readiness.is_ready
    await components.close_all()
    assert events == ["open a", "open b", "open c", "close c", "close b", "close a"]


async def test_failure_marks_failed_requests_exit_1_and_closes_only_opened() -> None:
    events: list[str] = []
    readiness, shutdown = Readiness(), ShutdownRequest()
    components = Components(readiness, shutdown)
    components.add(recorder(events, "a"))
    components.add(recorder(events, "b", fail=True))
    components.add(recorder(events, "c"))
    await finish(components)
    assert readiness.status == "failed"
    assert "disk on fire" in readiness.report()["failed"]["b"]
    assert shutdown.requested
    assert shutdown.exit_code == 1
    await components.close_all()
    assert events == ["open a", "open b", "close a"]


async def test_close_during_opening_cancels_the_rest() -> None:
    events: list[str] = []
    gate = asyncio.Event()

    async def slow() -> None:
        events.append("open slow")
        await gate.wait()

    components = Components(Readiness(), ShutdownRequest())
    components.add(recorder(events, "a"))
    components.add(FunctionComponent("slow", slow))
    components.add(recorder(events, "never"))
    components.start_opening()
    await asyncio.sleep(0.02)
    await components.close_all()
    assert events == ["open a", "open slow", "close a"]


def test_shutdown_request_keeps_the_first_reason() -> None:
    shutdown = ShutdownRequest()
    shutdown.request("SIGTERM")
    shutdown.request("component failed", exit_code=1)
    assert (shutdown.reason, shutdown.exit_code) == ("SIGTERM", 0)


def test_readiness_states() -> None:
    readiness = Readiness()
    assert readiness.is_ready  # nothing expected
    readiness.expect("x")
    assert readiness.status == "starting"
    readiness.opened("x")
    assert readiness.status == "ready"
    readiness.begin_shutdown()
    assert readiness.status == "shutting_down"
    assert not readiness.is_ready
