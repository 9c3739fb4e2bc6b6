"""Reload hooks: every hook sees the new settings; one that fails leaves the others be."""

from __future__ import annotations

import pytest

from semcached.service.config import Settings, load_settings
from semcached.service.reloads import Reloads


async def test_every_hook_runs_and_failures_are_counted_and_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    reloads = Reloads()
    seen: list[tuple[str, int]] = []

    async def records(settings: Settings) -> bool:
        seen.append(("records", settings.server.port))
        return True

    async def raises(settings: Settings) -> bool:
        raise RuntimeError("boom")

    async def declines(settings: Settings) -> bool:
        seen.append(("declines", settings.server.port))
        return False

    for name, hook in (("first", records), ("second", raises), ("third", declines)):
        reloads.add(name, hook)
    assert reloads.names == ["first", "second", "third"]
    settings = load_settings(environ={"SEMCACHED_SERVER_PORT": "4242"})
    assert await reloads.apply(settings) == 2
    assert seen == [("records", 4242), ("declines", 4242)]
    assert "reload of second failed" in caplog.text
    assert "boom" in caplog.text


async def test_no_hooks_nothing_fails() -> None:
    assert await Reloads().apply(Settings()) == 0
