"""Start the real daemon as a subprocess on an OS-chosen loopback port, for tests."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import urllib3

from semcached.service.semantic.embedding.onnx_export import default_model_cache_dir

_LISTENING = re.compile(r"listening on (http://[\d.]+:\d+)")


class DaemonProcess:
    """A ``semcached serve`` child process; its stderr is collected line by line."""

    def __init__(self, data_dir: Path, args: Sequence[str] = (), env: dict[str, str] | None = None):
        self.data_dir = data_dir
        if "--embedding.backend" not in args:
            # Most tests send vectors; the model tests ask for it explicitly.
            args = [*args, "--embedding.backend", "none"]
        if "--embedding.model_cache_dir" not in args:
            # One ONNX export of MiniLM for every test daemon, not one per data directory.
            args = [*args, "--embedding.model_cache_dir", str(default_model_cache_dir())]
        child_env = {k: v for k, v in os.environ.items() if not k.startswith("SEMCACHED_")}
        child_env.update(env or {})
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "semcached.service.cli",
                "serve",
                "--server.port",
                "0",
                "--storage.data_dir",
                str(data_dir),
                *args,
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=child_env,
            text=True,
        )
        self.lines: list[str] = []
        self._url: str | None = None
        self._listening = threading.Event()
        self._reader = threading.Thread(target=self._read_stderr, daemon=True)
        self._reader.start()

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))
            match = _LISTENING.search(line)
            if match and self._url is None:
                self._url = match.group(1)
                self._listening.set()
        self._listening.set()  # the process ended: unblock waiters

    @property
    def log(self) -> str:
        return "\n".join(self.lines)

    def wait_listening(self, timeout: float = 30.0) -> str:
        if not self._listening.wait(timeout) or self._url is None:
            raise AssertionError(f"daemon did not start listening; log:\n{self.log}")
        return self._url

    def wait_ready(self, timeout: float = 30.0) -> str:
        url = self.wait_listening(timeout)
        deadline = time.monotonic() + timeout
        http = urllib3.PoolManager(retries=False)
        while time.monotonic() < deadline:
            if http.request("GET", url + "/readyz").status == 200:
                return url
            time.sleep(0.02)
        raise AssertionError(f"daemon not ready within {timeout} s; log:\n{self.log}")

    def terminate(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(
                f"daemon did not exit within {timeout} s; log:\n{self.log}"
            ) from None
        self._reader.join(5)
        return code
