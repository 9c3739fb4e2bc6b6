"""The build-and-boot check of the image (scripts/image-check), marked slow: it
bootstraps a Debian base, builds the wheelhouse and the image with podman, and boots
the image twice. .ci/run installs podman and mmdebstrap before the slow suites."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _missing() -> str | None:
    tools = [t for t in ("podman", "mmdebstrap", "unshare", "chroot") if not shutil.which(t)]
    if tools:
        return f"needs {', '.join(tools)} (apt-get install mmdebstrap podman uidmap)"
    if os.geteuid() != 0:
        return "needs root: podman image mount, mounts in a namespace, chroot"
    if sys.version_info[:2] != (3, 11):
        return "the wheelhouse is built for the base's Python, 3.11"
    return None


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_image_builds_offline_boots_serves_drains_and_keeps_its_data() -> None:
    reason = _missing()
    if reason:
        pytest.skip(reason)
    result = subprocess.run(
        [str(ROOT / "scripts" / "image-check")],
        env={**os.environ, "PYTHON": sys.executable},
        capture_output=True,
        text=True,
        check=False,
        timeout=870,
    )
    print(result.stdout, result.stderr)
    assert result.returncode == 0
    lines = result.stdout.splitlines()
    assert any(line.startswith("LOOKUP paraphrase hit=True") for line in lines)
    assert [line for line in lines if line.startswith("DRAIN")] == [
        line for line in lines if line.startswith("DRAIN SIGTERM -> exit 0 ")
    ]
    assert sum(line.startswith("DRAIN") for line in lines) == 2
    assert any("hit=True" in line for line in lines if line.startswith("RESTART"))
    assert "RESULT PASS" in lines
