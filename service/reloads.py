"""Configuration reloads (SIGHUP): the features' hooks that re-apply new settings.

Most settings take effect at start only. A feature whose settings can change while
the daemon runs registers a hook at set-up (as it registers its components); on a
reload the daemon rereads its settings from the same sources it started from (flags,
environment, the TOML file) and hands them to every hook. A file that no longer
parses changes nothing; a hook that fails is logged and leaves its feature as it was,
and the other hooks still run.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from semcached.service.config import Settings

__all__ = ["ReloadHook", "Reloads"]

log = logging.getLogger(__name__)

ReloadHook = Callable[[Settings], Awaitable[bool]]
"""Applies new settings to one feature; False (after logging why) when it kept the old."""


class Reloads:
    """The registered reload hooks, run in registration order."""

    def __init__(self) -> None:
        self._hooks: list[tuple[str, ReloadHook]] = []

    def add(self, name: str, hook: ReloadHook) -> None:
        """Run ``hook`` with the new settings on every reload."""
        self._hooks.append((name, hook))

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self._hooks]

    async def apply(self, settings: Settings) -> int:
        """Hand ``settings`` to every hook; how many failed (each is logged)."""
        failed = 0
        for name, hook in self._hooks:
            try:
                applied = await hook(settings)
            except Exception:
                applied = False
                log.exception("reload of %s failed; it stays as it was", name)
            failed += not applied
        return failed
