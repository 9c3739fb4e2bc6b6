"""Real Redis servers for the shared tier's tests: standalone, a 3-master Cluster, Sentinel.

Each server is a ``redis-server`` process on a loopback port the OS chose (a socket
bound to port 0 tells which is free; a start that loses the port to a race is tried
again on another), with its files in the test's directory, stopped by the fixture
that started it. Debian's ``redis-server`` package provides the binaries;
``scripts/test`` installs it where it can and sets ``REQUIRE_REDIS_SERVER=1``, so
that CI fails rather than skips when they are missing.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

import pytest
import redis

__all__ = ["RedisCluster", "RedisSentinel", "RedisServer", "need_redis", "redis_version"]


def need_redis() -> str:
    """The path of ``redis-server``; skips (or fails under REQUIRE_REDIS_SERVER) without."""
    path = shutil.which("redis-server")
    if path is None or shutil.which("redis-cli") is None:
        message = "redis-server/redis-cli not installed (Debian package redis-server)"
        if os.environ.get("REQUIRE_REDIS_SERVER") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return path


def redis_version() -> str:
    out = subprocess.run([need_redis(), "--version"], capture_output=True, text=True, check=True)
    return next((w[2:] for w in out.stdout.split() if w.startswith("v=")), out.stdout.strip())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """One ``redis-server`` process. ``args`` are extra config directives."""

    def __init__(
        self,
        workdir: Path,
        args: Sequence[str] = (),
        *,
        sentinel: bool = False,
        tls: bool = False,
    ) -> None:
        """``tls``: serve TLS only, with a self-signed certificate for 127.0.0.1
        (:attr:`ca_file`), clients not asked for one."""
        self.workdir = workdir
        self.args = list(args)
        self.sentinel = sentinel
        self.ca_file: Path | None = None
        if tls:
            if shutil.which("openssl") is None:
                pytest.skip("openssl not installed (Debian package openssl)")
            self.ca_file = workdir / "cert.pem"
            workdir.mkdir(parents=True, exist_ok=True)
            subprocess.run(
                [
                    *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
                    *("-keyout", str(workdir / "key.pem"), "-out", str(self.ca_file)),
                    *("-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"),
                ],
                check=True,
                capture_output=True,
            )
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        workdir.mkdir(parents=True, exist_ok=True)
        self.start()

    @property
    def url(self) -> str:
        if self.ca_file is not None:
            return f"rediss://127.0.0.1:{self.port}?ssl_ca_certs={self.ca_file}"
        return f"redis://127.0.0.1:{self.port}"

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, socket_timeout=5)

    def start(self, port: int | None = None) -> None:
        """Start (again, on the same port when restarting); waits until it answers PING."""
        for _ in range(5):
            self.port = port or self.port or _free_port()
            conf = self.workdir / "redis.conf"
            listen = [f"port {self.port}"]
            if self.ca_file is not None:
                listen = [
                    "port 0",
                    f"tls-port {self.port}",
                    f"tls-cert-file {self.ca_file}",
                    f"tls-key-file {self.workdir / 'key.pem'}",
                    f"tls-ca-cert-file {self.ca_file}",
                    "tls-auth-clients no",
                ]
            lines = [
                *listen,
                "bind 127.0.0.1",
                f"dir {self.workdir}",
                "save ''",
                "appendonly no",
                "protected-mode no",
                f"logfile {self.workdir / 'redis.log'}",
                *self.args,
            ]
            conf.write_text("\n".join(lines) + "\n")
            cmd = [need_redis(), str(conf)] + (["--sentinel"] if self.sentinel else [])
            self.process = subprocess.Popen(cmd, cwd=self.workdir)
            if self._wait_answering():
                return
            self.stop()
            if port is not None:
                break
            self.port = 0  # lost the port to a race: another one
        raise RuntimeError(f"redis-server did not start; see {self.workdir / 'redis.log'}")

    def _wait_answering(self, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                return False
            try:
                with redis.Redis.from_url(self.url, socket_timeout=1) as c:
                    if c.ping():
                        return True
            except (redis.ResponseError, redis.AuthenticationError):
                return True  # it answered (a server with the default user off refuses PING)
            except redis.RedisError:
                time.sleep(0.05)
        return False

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop the process (SIGKILL: as a crash) and wait for it."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def pause(self) -> None:
        """Freeze the process (SIGSTOP): a partition, as its clients see it."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)


class RedisCluster:
    """A Redis Cluster of ``masters`` masters (no replicas), slots spread evenly."""

    def __init__(self, workdir: Path, masters: int = 3) -> None:
        args = [
            "cluster-enabled yes",
            "cluster-node-timeout 2000",
            "cluster-config-file nodes.conf",
        ]
        self.nodes = [RedisServer(workdir / f"node{i}", args) for i in range(masters)]
        addresses = [f"127.0.0.1:{n.port}" for n in self.nodes]
        subprocess.run(
            ["redis-cli", "--cluster", "create", *addresses, "--cluster-yes"],
            check=True,
            capture_output=True,
        )
        self._wait_ok()

    @property
    def url(self) -> str:
        return self.nodes[0].url

    def _wait_ok(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            states = [n.client().cluster("info") for n in self.nodes]
            if all(s.get("cluster_state") == "ok" for s in states):
                return
            time.sleep(0.1)
        raise RuntimeError("the Redis Cluster did not reach cluster_state:ok")

    def node_ids(self) -> list[str]:
        ids = [n.client().execute_command("CLUSTER", "MYID") for n in self.nodes]
        return [i.decode() if isinstance(i, bytes) else str(i) for i in ids]

    def move_slots(self, source: int, destination: int, count: int) -> None:
        """Move ``count`` slots, keys included, from node ``source`` to ``destination``."""
        ids = self.node_ids()
        subprocess.run(
            [
                "redis-cli",
                "--cluster",
                "reshard",
                f"127.0.0.1:{self.nodes[0].port}",
                "--cluster-from",
                ids[source],
                "--cluster-to",
                ids[destination],
                "--cluster-slots",
                str(count),
                "--cluster-yes",
            ],
            check=True,
            capture_output=True,
        )
        self._wait_ok()

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


class RedisSentinel:
    """A master, one replica and one Sentinel watching them as ``service``."""

    def __init__(self, workdir: Path, service: str = "semcached") -> None:
        self.service = service
        sync_now = ["repl-diskless-sync-delay 0"]  # the default waits 5 s to sync a replica
        self.master = RedisServer(workdir / "master", sync_now)
        self.replica = RedisServer(
            workdir / "replica", [*sync_now, f"replicaof 127.0.0.1 {self.master.port}"]
        )
        deadline = time.monotonic() + 20
        while self.replica.client().info("replication").get("master_link_status") != "up":
            if time.monotonic() > deadline:
                raise RuntimeError("the replica did not sync with its master")
            time.sleep(0.05)
        self.sentinel = RedisServer(
            workdir / "sentinel",
            [
                f"sentinel monitor {service} 127.0.0.1 {self.master.port} 1",
                f"sentinel down-after-milliseconds {service} 1000",
                f"sentinel failover-timeout {service} 5000",
            ],
            sentinel=True,
        )

    @property
    def url(self) -> str:
        return f"redis+sentinel://127.0.0.1:{self.sentinel.port}/{self.service}"

    def master_port(self) -> int:
        addr = self.sentinel.client().execute_command(
            "SENTINEL", "get-master-addr-by-name", self.service
        )
        return int(addr[1])

    def stop(self) -> None:
        for server in (self.sentinel, self.replica, self.master):
            server.stop()
