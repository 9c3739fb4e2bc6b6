"""Tokens in the real daemon: the mode it says it runs in, SIGHUP reloads, flag warnings."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import urllib3

from tests.daemon import DaemonProcess
from tests.service.http.tenancy_kit import TOKENS, digest, tokens_file_text


def status(url: str, token: str | None) -> int:
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    http = urllib3.PoolManager(retries=False)
    return http.request("GET", url + "/v1/admin/config", headers=headers).status


def test_sighup_rereads_the_tokens_file(tmp_path: Path) -> None:
    path = tmp_path / "tokens.toml"
    path.write_text(tokens_file_text())
    daemon = DaemonProcess(tmp_path / "data", ["--auth.tokens_file", str(path)])
    try:
        url = daemon.wait_ready()
        assert "authentication: tokens file" in daemon.log
        assert "3 tenants, 4 tokens" in daemon.log
        assert status(url, TOKENS["ops"]) == 200
        rotated = "the-operator-token-after-rotation-0123"
        path.write_text(tokens_file_text().replace(digest(TOKENS["ops"]), digest(rotated)))
        daemon.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 20
        while status(url, rotated) != 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert status(url, rotated) == 200
        assert status(url, TOKENS["ops"]) == 401
        assert "tokens file reloaded" in daemon.log
        assert not any(token in daemon.log for token in (*TOKENS.values(), rotated))
    finally:
        assert daemon.terminate() == 0


def test_the_daemon_says_which_mode_it_runs_in(tmp_path: Path) -> None:
    daemon = DaemonProcess(tmp_path / "open")
    try:
        daemon.wait_ready()
        assert "authentication: none" in daemon.log
    finally:
        daemon.terminate()
    flagged = DaemonProcess(tmp_path / "flag", ["--server.auth_token", "s3cret-token"])
    try:
        url = flagged.wait_ready()
        assert "authentication: one bearer token" in flagged.log
        assert "--server.auth_token is visible" in flagged.log
        assert "s3cret-token" not in flagged.log
        assert status(url, "s3cret-token") == 200
    finally:
        flagged.terminate()
    from_env = DaemonProcess(tmp_path / "env", env={"SEMCACHED_SERVER_AUTH_TOKEN": "s3cret"})
    try:
        from_env.wait_ready()
        assert "authentication: one bearer token" in from_env.log
        assert "is visible" not in from_env.log
    finally:
        from_env.terminate()


def test_a_bad_tokens_file_stops_the_daemon_at_start(tmp_path: Path) -> None:
    path = tmp_path / "tokens.toml"
    path.write_text("[[tokens]]\ntoken = 'plain text'\n")
    daemon = DaemonProcess(tmp_path / "data", ["--auth.tokens_file", str(path)])
    assert daemon.proc.wait(30) == 2
    daemon._reader.join(5)
    assert "unknown key 'token'" in daemon.log
    assert "plain text" not in daemon.log
