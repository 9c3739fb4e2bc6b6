"""Fixtures shared by every suite."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemon import DaemonProcess


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[DaemonProcess]:
    """A real daemon on an OS-chosen port with a fresh data directory, ready to serve."""
    process = DaemonProcess(tmp_path / "data")
    try:
        process.wait_ready()
        yield process
    finally:
        process.terminate()


@pytest.fixture
def daemon_url(daemon: DaemonProcess) -> str:
    return daemon.wait_listening()
