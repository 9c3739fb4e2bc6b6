"""Boot a built semcached image twice on one data directory and check it from the host.

Run by scripts/image-check (see there); standard library only, so the host's python3
runs it. Two ways to start the image's entrypoint:

- ``--mode run``: ``podman run`` (or ``docker run``) with the port and the data
  directory mapped, where the runtime can start containers;
- ``--mode chroot``: in the image's mounted root filesystem (``--rootfs``), as the
  image's user, in a mount namespace of its own (unshare) holding /proc, /dev, a
  tmpfs /tmp and /dev/shm and the data directory bind-mounted at the volume; the
  environment and the entrypoint are the image's own (``podman image inspect``).

Checks: /readyz turns 200; a semantic insert and a paraphrase lookup hit (MiniLM in
the image); SIGTERM exits 0 within the grace period; after a second boot on the same
data the paraphrase still hits. Prints one line per fact; exits 1 on a failed check.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

NAMESPACE = "image-check"
PROMPT = "How do I reverse a list in Python?"
PARAPHRASE = "What is the way to reverse a Python list?"
ANSWER = {"answer": "Use reversed(xs) or xs[::-1]."}
VOLUME = "/var/lib/semcached"
UID = "10001:10001"
GID = "10001"
# Small budgets: the check needs no 1 GiB arena.
CHECK_ENV = {"SEMCACHED_KV_HOST_BYTES": str(64 << 20), "SEMCACHED_SERVER_DRAIN_DELAY_S": "0.5"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http(method: str, url: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            return reply.status, json.loads(reply.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def image_config(engine: str, image: str) -> dict[str, Any]:
    out = subprocess.run(
        [engine, "image", "inspect", "--format", "{{json .Config}}", image],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    config: dict[str, Any] = json.loads(out)
    return config


class Boot:
    """One start of the image; ``stop()`` sends SIGTERM and returns the exit status."""

    def __init__(self, args: argparse.Namespace, port: int, log: Path) -> None:
        self.args = args
        self.port = port
        self.log = log.open("ab")
        config = image_config(args.engine, args.image)
        env = dict(CHECK_ENV)
        if args.mode == "run":
            self.name = f"semcached-image-check-{os.getpid()}-{port}"
            command = [args.engine, "run", "--rm", "--name", self.name, "--shm-size", "256m"]
            command += ["-p", f"127.0.0.1:{port}:8080", "-v", f"{args.data}:{VOLUME}"]
            command += [x for k, v in env.items() for x in ("-e", f"{k}={v}")]
            self.proc = subprocess.Popen([*command, args.image], stdout=self.log, stderr=self.log)
            return
        # chroot: the host's network, so the daemon listens on loopback at `port`.
        env.update(SEMCACHED_SERVER_HOST="127.0.0.1", SEMCACHED_SERVER_PORT=str(port))
        image_env = [e for e in config.get("Env") or [] if e.split("=", 1)[0] not in env]
        env_args = [*image_env, *(f"{k}={v}" for k, v in env.items())]
        root = args.rootfs
        # Mounts live in the namespace of unshare's child and go with it; the shell
        # execs chroot, which execs the entrypoint: the daemon keeps this pid.
        script = (
            "set -e; mount --make-rprivate /; "
            # The root read-only, as readOnlyRootFilesystem makes it in Kubernetes.
            f"mount --bind {root} {root}; mount -o remount,bind,ro {root}; "
            f"mount -t proc proc {root}/proc; mount --rbind /dev {root}/dev; "
            f"mount -t tmpfs -o size=256m,mode=1777 shm {root}/dev/shm; "
            f"mount -t tmpfs -o size=64m,mode=1777 tmp {root}/tmp; "
            f"mount --bind {args.data} {root}{VOLUME}; "
            f'cd /; exec chroot --userspec={UID} --groups={GID} {root} /usr/bin/env -i "$@"'
        )
        entry = config.get("Entrypoint") or []
        workdir = config.get("WorkingDir") or "/"
        command = ["unshare", "--mount", "sh", "-c", script, "sh", *env_args]
        command += ["sh", "-c", f'cd {workdir} && exec "$@"', "sh", *entry]
        self.proc = subprocess.Popen(command, stdout=self.log, stderr=self.log)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def wait_ready(self, timeout_s: float) -> float:
        started = time.monotonic()
        while time.monotonic() - started < timeout_s:
            if self.proc.poll() is not None:
                raise SystemExit(f"FAIL the daemon exited with {self.proc.returncode}")
            try:
                status, _ = http("GET", self.url("/readyz"))
                if status == 200:
                    return time.monotonic() - started
            except (OSError, ValueError):
                pass
            time.sleep(0.25)
        raise SystemExit(f"FAIL /readyz not 200 within {timeout_s:.0f} s")

    def stop(self, grace_s: float) -> tuple[int | None, float]:
        started = time.monotonic()
        if self.args.mode == "run":
            subprocess.run(
                [self.args.engine, "kill", "--signal", "TERM", self.name],
                check=False,
                capture_output=True,
            )
        else:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code: int | None = self.proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            code = None
        self.log.close()
        return code, time.monotonic() - started


def lookup(boot: Boot) -> dict[str, Any]:
    status, reply = http(
        "POST", boot.url("/v1/semantic/lookup"), {"namespace": NAMESPACE, "text": PARAPHRASE}
    )
    if status != 200:
        raise SystemExit(f"FAIL lookup answered {status}: {reply}")
    result: dict[str, Any] = reply
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", required=True)
    parser.add_argument("--engine", default="podman")
    parser.add_argument("--mode", choices=("run", "chroot"), required=True)
    parser.add_argument("--rootfs", help="the mounted image (chroot mode)")
    parser.add_argument("--data", type=Path, required=True, help="host data directory")
    parser.add_argument("--log", type=Path, required=True)
    parser.add_argument("--ready-timeout-s", type=float, default=300.0)
    parser.add_argument("--grace-s", type=float, default=30.0)
    args = parser.parse_args()
    failed = False

    boot = Boot(args, free_port(), args.log)
    try:
        ready_s = boot.wait_ready(args.ready_timeout_s)
        print(f"BOOT first boot ready in {ready_s:.1f} s (/readyz 200, mode {args.mode})")
        status, reply = http(
            "POST",
            boot.url("/v1/semantic/entries"),
            {"namespace": NAMESPACE, "prompt": PROMPT, "response": ANSWER},
        )
        print(f"INSERT {status} entry_id={reply.get('entry_id') if reply else None}")
        found = lookup(boot)
        print(
            f"LOOKUP paraphrase hit={found.get('hit')} similarity={found.get('similarity')} "
            f"category={found.get('category')} response={json.dumps(found.get('response'))}"
        )
        failed |= status not in (200, 201) or found.get("hit") is not True
    finally:
        code, took = boot.stop(args.grace_s)
    print(f"DRAIN SIGTERM -> exit {code} in {took:.1f} s (grace {args.grace_s:.0f} s)")
    failed |= code != 0

    boot = Boot(args, free_port(), args.log)
    try:
        ready_s = boot.wait_ready(args.ready_timeout_s)
        found = lookup(boot)
        print(
            f"RESTART second boot ready in {ready_s:.1f} s; paraphrase hit={found.get('hit')} "
            f"age_s={found.get('age_s')} (the data survived)"
        )
        failed |= found.get("hit") is not True
    finally:
        code, took = boot.stop(args.grace_s)
    print(f"DRAIN SIGTERM -> exit {code} in {took:.1f} s")
    failed |= code != 0
    print("RESULT " + ("FAIL" if failed else "PASS"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
