"""An adversarial client against the daemon, beside an honest one: what a hostile or
careless client can do to everybody else's requests, the daemon's memory and its files.

    python bench/adversary.py --quick                       # every scenario, briefly
    python bench/adversary.py --scenarios slowloris all     # some of them
    python bench/adversary.py --daemon-python ../other/.venv/bin/python --cwd ../other
    python bench/adversary.py --url http://127.0.0.1:8080 --pid 1234

By default the script starts ``semcached serve`` itself (``--daemon-python``, in
``--cwd``: so an older checkout can be measured too) on 127.0.0.1 with an OS-chosen
port, a fresh data directory, the embedding backend ``none``, and the soft open-file
limit a default container or systemd unit gives (``--nofile``, 1024). ``--daemon-arg
key=value`` adds settings (e.g. ``--daemon-arg server.probe_port=0``: the probes then
go to the probe listener the daemon logs). ``--tenants`` writes a tokens file with two
tenants, the honest client's and the adversary's, each with its own token, namespace
and KV scope (for a daemon that has ``auth.tokens_file``); without it every request
is of the one open tenant.

Scenarios, one at a time for ``--duration-s`` each, then ``all`` of them together:

- ``baseline`` — no attack;
- ``slowloris`` — thousands of connections that trickle a request's headers, a line
  every few seconds, reconnecting when cut;
- ``big_headers`` — requests with headers of most of a megabyte (the KV metadata
  header's limit) and with hundreds of header lines;
- ``huge_shape`` — chunk puts whose 104-byte metadata header declares the shape
  [30, 2, 3, 10**9, 64];
- ``slow_uploads`` — chunk puts declaring a 242 MB blob (a valid shape) that send
  a kilobyte a second;
- ``leases`` — ``transfer=shm`` reads with ``lease_s=300`` and no release, until the
  lease table is full (skipped when the daemon has no shared memory).

Meanwhile an honest client in another process inserts and looks up semantic entries,
puts and reads chunks (and takes and releases a lease when shared memory is on), each
request with a 5 s timeout on a keep-alive connection, and opens a fresh connection
for ``/livez`` every 100 ms (the probe). Per scenario the table shows the honest
client's success rate and p99 latency, the probe's success rate, and the daemon's
largest RSS and open descriptor count (sampled from /proc every 100 ms). Goal:
honest >= 99 % success, RSS within the configured bounds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import multiprocessing
import os
import re
import resource
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import orjson

MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"  # known to every daemon without configuration
LAYERS, KV_HEADS, HEAD_DIM = 30, 3, 64
DIM = 16
HONEST_TIMEOUT_S = 5.0
SCENARIOS = ("baseline", "slowloris", "big_headers", "huge_shape", "slow_uploads", "leases")
JSON_TYPE = {"Content-Type": "application/json"}


def kv_meta(tokens: int) -> bytes:
    shape = [LAYERS, 2, KV_HEADS, tokens, HEAD_DIM]
    return orjson.dumps({"model": MODEL, "dtype": "float16", "shape": shape})


def kv_nbytes(tokens: int) -> int:
    return LAYERS * 2 * KV_HEADS * tokens * HEAD_DIM * 2


# -- the daemon -----------------------------------------------------------------------------


class Daemon:
    """``semcached serve`` as a child with a low soft open-file limit, or a running one."""

    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.proc: subprocess.Popen[str] | None = None
        self.lines: list[str] = []
        self.url: str = args.url or ""
        self.probe_url: str | None = None
        self.pid: int = args.pid or 0
        self.shm_dir = workdir
        self.honest_auth: dict[str, str] = {}
        self.adversary_auth: dict[str, str] = {}
        if args.url:
            return
        argv = [
            args.daemon_python, "-m", "semcached.service.cli", "serve",
            "--server.port", "0", "--storage.data_dir", str(workdir / "data"),
            "--embedding.backend", "none", "--embedding.dim", str(DIM),
            "--kv.shm_dir", str(workdir), "--kv.host_bytes", str(256 << 20),
            "--kv.disk_bytes", str(2 << 30), "--server.access_log", "false",
        ]  # fmt: skip
        if args.tenants:
            argv += ["--auth.tokens_file", str(self._write_tokens(workdir))]
        for item in args.daemon_arg:
            key, _, value = item.partition("=")
            argv += [f"--{key}", value]
        env = {k: v for k, v in os.environ.items() if not k.startswith("SEMCACHED_")}
        # The child inherits the soft open-file limit in force when it is started.
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(args.nofile, hard), hard))
        try:
            self.proc = subprocess.Popen(
                argv,
                cwd=args.cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        self.pid = self.proc.pid
        threading.Thread(target=self._read, daemon=True).start()
        deadline = time.monotonic() + 60
        while not self.url:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise SystemExit("the daemon did not start:\n" + "\n".join(self.lines[-30:]))
            time.sleep(0.05)

    def _write_tokens(self, workdir: Path) -> Path:
        scopes = '["semantic:read", "semantic:write", "kv:read", "kv:write"]'
        lines = []
        for tenant in ("honest", "mallory"):
            token = secrets.token_urlsafe(32)
            auth = {"Authorization": f"Bearer {token}"}
            if tenant == "honest":
                self.honest_auth = auth
            else:
                self.adversary_auth = auth
            digest = hashlib.sha256(token.encode()).hexdigest()
            lines += [
                f'[tenants.{tenant}]\nnamespaces = ["{tenant}"]\n',
                f'[[tokens]]\nsha256 = "{digest}"\ntenant = "{tenant}"\nscopes = {scopes}\n',
            ]
        path = workdir / "tokens.toml"
        path.write_text("\n".join(lines))
        return path

    def _read(self) -> None:
        assert self.proc is not None
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))
            probes = re.search(r"probes .* served on (http://[\d.]+:\d+)", line)
            if probes:
                self.probe_url = probes.group(1)
            listening = re.search(r"listening on (http://[\d.]+:\d+)", line)
            if listening and not self.url:
                self.url = listening.group(1)

    @property
    def alive(self) -> bool:
        return self.proc is None or self.proc.poll() is None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Sampler:
    """The daemon's RSS and open descriptors from /proc, every 100 ms, maxima per window."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.rss_max = 0
        self.fds_max = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def reset(self) -> None:
        self.rss_max = self.fds_max = 0

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            with contextlib.suppress(OSError, ValueError):
                status = Path(f"/proc/{self.pid}/status").read_text()
                rss_kb = int(re.search(r"VmRSS:\s+(\d+)", status).group(1))  # type: ignore[union-attr]
                self.rss_max = max(self.rss_max, rss_kb * 1024)
                self.fds_max = max(self.fds_max, len(os.listdir(f"/proc/{self.pid}/fd")))

    def stop(self) -> None:
        self._stop.set()


# -- the honest client (its own process) ----------------------------------------------------


class Honest:
    """Four workers on keep-alive connections and a prober on fresh ones, for a while."""

    def __init__(self, url: str, probe_url: str, duration_s: float, auth: dict[str, str]) -> None:
        self.url = url
        self.auth = auth
        self.probe_url = probe_url
        self.end = time.monotonic() + duration_s
        self.rng = np.random.default_rng(os.getpid())
        self.timeout = aiohttp.ClientTimeout(total=HONEST_TIMEOUT_S)
        self.latencies: list[float] = []
        self.failures: dict[str, int] = {}
        self.probes_ok = self.probes = 0
        self.shm = True
        self.blob = self.rng.bytes(kv_nbytes(16))
        self.kv_headers = {
            "X-Semcached-KV-Meta": kv_meta(16).decode(),
            "Content-Type": "application/octet-stream",
        }

    def _failed(self, what: str) -> None:
        self.failures[what] = self.failures.get(what, 0) + 1

    async def call(
        self, session: aiohttp.ClientSession, what: str, method: str, path: str,
        ok: tuple[int, ...], **kwargs: Any,
    ) -> bytes | None:  # fmt: skip
        started = time.perf_counter()
        try:
            headers = {**self.auth, **kwargs.pop("headers", {})}
            async with session.request(
                method, self.url + path, timeout=self.timeout, headers=headers, **kwargs
            ) as reply:
                body = await reply.read()
                status = reply.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            self._failed(f"{what}: {type(exc).__name__}")
            self.latencies.append(HONEST_TIMEOUT_S)
            return None
        self.latencies.append(time.perf_counter() - started)
        if status not in ok:
            self._failed(f"{what}: {status}")
            return None
        return body

    async def semantic(self, session: aiohttp.ClientSession) -> None:
        vector = self.rng.standard_normal(DIM).tolist()
        entry = {"namespace": "honest", "prompt": "p", "response": {"a": 1}, "vector": vector}
        lookup = {"namespace": "honest", "vector": vector}
        post = ("POST", JSON_TYPE)
        await self.call(session, "insert", post[0], "/v1/semantic/entries", (201,),
                        headers=post[1], data=orjson.dumps(entry))  # fmt: skip
        await self.call(session, "lookup", post[0], "/v1/semantic/lookup", (200,),
                        headers=post[1], data=orjson.dumps(lookup))  # fmt: skip

    async def kv(self, session: aiohttp.ClientSession) -> None:
        path = f"/v1/kv/chunks/{secrets.token_hex(16)}"
        put = await self.call(session, "kv put", "PUT", path, (200, 201), data=self.blob,
                              headers=self.kv_headers)  # fmt: skip
        if put is None:
            return
        await self.call(session, "kv get", "GET", path, (200,))
        if not self.shm:
            return
        leased = await self.call(session, "kv lease", "GET", path, (200, 400),
                                 params={"transfer": "shm"})  # fmt: skip
        if leased is None:
            return
        doc = orjson.loads(leased)
        if "error" in doc:  # shm_disabled: this daemon has no shared memory
            self.shm = False
            return
        lease = f"/v1/kv/leases/{doc['lease']['id']}"
        await self.call(session, "kv release", "DELETE", lease, (204,))

    async def worker(self, session: aiohttp.ClientSession) -> None:
        while time.monotonic() < self.end:
            await self.semantic(session)
            await self.kv(session)

    async def prober(self) -> None:
        connector = aiohttp.TCPConnector(force_close=True)
        async with aiohttp.ClientSession(connector=connector) as fresh:
            while time.monotonic() < self.end:
                self.probes += 1
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    url = self.probe_url + "/livez"
                    async with fresh.get(url, timeout=self.timeout) as reply:
                        self.probes_ok += reply.status == 200
                await asyncio.sleep(0.1)

    async def run(self) -> dict[str, Any]:
        connector = aiohttp.TCPConnector(limit=4)
        async with aiohttp.ClientSession(connector=connector) as session:
            await asyncio.gather(*(self.worker(session) for _ in range(4)), self.prober())
        values = np.asarray(self.latencies) * 1e3
        return {
            "requests": len(self.latencies),
            "failed": sum(self.failures.values()),
            "failures": self.failures,
            "p99_ms": float(np.percentile(values, 99)) if values.size else float("nan"),
            "probes_ok": self.probes_ok,
            "probes": self.probes,
        }


def _honest_process(
    url: str, probe_url: str, duration_s: float, auth: dict[str, str], out: Any
) -> None:
    out.put(asyncio.run(Honest(url, probe_url, duration_s, auth).run()))


# -- the adversaries ------------------------------------------------------------------------


@dataclass
class Attack:
    url: str
    shm_dir: Path
    scale: float
    end: float
    auth: dict[str, str] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def auth_line(self) -> bytes:
        return b"".join(f"{k}: {v}\r\n".encode() for k, v in self.auth.items())

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.url.removeprefix("http://").rsplit(":", 1)
        return host, int(port)

    def count(self, what: str) -> None:
        self.counts[what] = self.counts.get(what, 0) + 1

    async def _raw(self, request: bytes, *, read: bool = True) -> bytes:
        reader, writer = await asyncio.open_connection(*self.address)
        try:
            writer.write(request)
            await writer.drain()
            return await asyncio.wait_for(reader.read(4096), 10) if read else b""
        finally:
            writer.close()

    async def slowloris(self) -> None:
        async def one(i: int) -> None:
            while time.monotonic() < self.end:
                try:
                    reader, writer = await asyncio.open_connection(*self.address)
                except OSError:
                    self.count("slowloris connect failed")
                    await asyncio.sleep(0.5)
                    continue
                self.count("slowloris connections")
                try:
                    writer.write(b"GET /livez HTTP/1.1\r\nHost: x\r\n")
                    while time.monotonic() < self.end:
                        await asyncio.sleep(3)
                        writer.write(b"X-Slow-%d: 1\r\n" % i)
                        await writer.drain()
                        if reader.at_eof():
                            break
                except OSError:
                    pass
                finally:
                    writer.close()

        count = int(3000 * self.scale)
        tasks = []
        for i in range(count):  # opened over about two seconds
            tasks.append(asyncio.create_task(one(i)))
            if i % 100 == 99:
                await asyncio.sleep(0.05)
        await asyncio.gather(*tasks, return_exceptions=True)

    async def big_headers(self) -> None:
        big = b"X-Big: " + b"a" * 900_000 + b"\r\n"
        many = b"".join(b"X-Many-%d: %s\r\n" % (i, b"b" * 60) for i in range(500))

        async def one(headers: bytes) -> None:
            while time.monotonic() < self.end:
                with contextlib.suppress(OSError, TimeoutError):
                    await self._raw(
                        b"GET /v1/semantic/stats HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n"
                    )
                self.count("big header requests")

        await asyncio.gather(*(one(big if i % 2 else many) for i in range(int(32 * self.scale))))

    async def huge_shape(self) -> None:
        meta = orjson.dumps({"model": MODEL, "dtype": "float16", "shape": [30, 2, 3, 10**9, 64]})

        async def one() -> None:
            while time.monotonic() < self.end:
                request = (
                    b"PUT /v1/kv/chunks/%s HTTP/1.1\r\nHost: x\r\nX-Semcached-KV-Meta: %s\r\n%s"
                    b"Content-Type: application/octet-stream\r\nContent-Length: 0\r\n\r\n"
                ) % (secrets.token_hex(16).encode(), meta, self.auth_line)
                with contextlib.suppress(OSError, TimeoutError):
                    await self._raw(request)
                self.count("huge shape puts")

        await asyncio.gather(*(one() for _ in range(max(1, int(4 * self.scale)))))

    async def slow_uploads(self) -> None:
        tokens = 11_000  # 242 MB of float16: under kv.max_blob_bytes (256 MiB)

        async def one() -> None:
            while time.monotonic() < self.end:
                try:
                    reader, writer = await asyncio.open_connection(*self.address)
                except OSError:
                    await asyncio.sleep(0.5)
                    continue
                self.count("slow uploads")
                try:
                    writer.write(
                        b"PUT /v1/kv/chunks/%s HTTP/1.1\r\nHost: x\r\nX-Semcached-KV-Meta: %s\r\n%s"
                        b"Content-Type: application/octet-stream\r\nContent-Length: %d\r\n\r\n"
                        % (
                            secrets.token_hex(16).encode(),
                            kv_meta(tokens),
                            self.auth_line,
                            kv_nbytes(tokens),
                        )
                    )
                    while time.monotonic() < self.end and not reader.at_eof():
                        writer.write(b"\0" * 1024)
                        await writer.drain()
                        await asyncio.sleep(1)
                except OSError:
                    pass
                finally:
                    writer.close()

        await asyncio.gather(*(one() for _ in range(max(1, int(8 * self.scale)))))

    async def leases(self) -> None:
        async with aiohttp.ClientSession(headers=self.auth) as session:
            key = secrets.token_hex(16)
            try:  # a daemon already stalled by another attack may not answer at all
                async with session.put(
                    f"{self.url}/v1/kv/chunks/{key}",
                    data=b"\0" * kv_nbytes(16),
                    headers={"X-Semcached-KV-Meta": kv_meta(16).decode()},
                ) as reply:
                    if reply.status not in (200, 201):
                        self.count(f"leases: setup put {reply.status}")
                        return
            except (aiohttp.ClientError, TimeoutError) as exc:
                self.count(f"leases: setup put failed ({type(exc).__name__})")
                return

            async def one() -> None:
                while time.monotonic() < self.end:
                    with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                        async with session.get(
                            f"{self.url}/v1/kv/chunks/{key}",
                            params={"transfer": "shm", "lease_s": "300"},
                        ) as reply:
                            await reply.read()
                            self.count(f"lease gets {reply.status}")
                            if reply.status == 400:  # no shared memory here
                                return

            await asyncio.gather(*(one() for _ in range(16)))


async def _attack(attack: Attack, names: list[str]) -> None:
    await asyncio.gather(*(getattr(attack, name)() for name in names if name != "baseline"))


# -- one run ---------------------------------------------------------------------------------


def run_scenario(
    name: str, daemon: Daemon, sampler: Sampler, args: argparse.Namespace
) -> dict[str, Any]:
    names = list(SCENARIOS) if name == "all" else [name]
    probe_url = daemon.probe_url or daemon.url
    out: Any = multiprocessing.get_context("spawn").Queue()
    honest = multiprocessing.get_context("spawn").Process(
        target=_honest_process,
        args=(daemon.url, probe_url, args.duration_s, daemon.honest_auth, out),
    )
    sampler.reset()
    attack = Attack(
        daemon.url,
        daemon.shm_dir,
        args.scale,
        time.monotonic() + args.duration_s + 1,
        auth=daemon.adversary_auth,
    )
    honest.start()
    asyncio.run(_attack(attack, names))
    result = out.get(timeout=args.duration_s + 120)
    honest.join()
    row = {
        "scenario": name,
        **result,
        "rss_max_mb": sampler.rss_max / 2**20,
        "fds_max": sampler.fds_max,
        "alive": daemon.alive,
        "attack": attack.counts,
    }
    time.sleep(args.settle_s)  # let cut connections and expired work drain
    return row


def print_table(rows: list[dict[str, Any]], title: str) -> None:
    print(f"\n{title}")
    header = (
        "scenario",
        "honest ok",
        "honest p99 ms",
        "probe ok",
        "RSS max MB",
        "fds max",
        "daemon",
    )
    lines = [header]
    for r in rows:
        ok = 100 * (1 - r["failed"] / r["requests"]) if r["requests"] else 0.0
        probe = 100 * r["probes_ok"] / r["probes"] if r["probes"] else 0.0
        lines.append((
            r["scenario"], f"{ok:.1f}% of {r['requests']}", f"{r['p99_ms']:.0f}",
            f"{probe:.1f}% of {r['probes']}", f"{r['rss_max_mb']:.0f}", str(r["fds_max"]),
            "alive" if r["alive"] else "DEAD",
        ))  # fmt: skip
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    for i, line in enumerate(lines):
        print("| " + " | ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) + " |")
        if i == 0:
            print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        if r["failures"]:
            top = sorted(r["failures"].items(), key=lambda kv: -kv[1])[:4]
            print(f"  {r['scenario']}: honest failures {dict(top)}")
        print(f"  {r['scenario']}: attack {r['attack']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short scenarios, half the attackers")
    parser.add_argument("--scenarios", nargs="+", default=[*SCENARIOS, "all"],
                        choices=[*SCENARIOS, "all"])  # fmt: skip
    parser.add_argument("--duration-s", type=float, default=20.0)
    parser.add_argument("--settle-s", type=float, default=3.0)
    parser.add_argument("--scale", type=float, default=1.0, help="attackers, relative")
    parser.add_argument("--daemon-python", default=sys.executable)
    parser.add_argument("--cwd", default=None, help="where the daemon runs (its checkout)")
    parser.add_argument("--daemon-arg", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--nofile", type=int, default=1024, help="the daemon's soft file limit")
    parser.add_argument("--url", help="attack a running daemon instead (with --pid)")
    parser.add_argument("--pid", type=int, help="the running daemon's pid, for RSS and fds")
    parser.add_argument("--title", default="adversary")
    parser.add_argument(
        "--tenants", action="store_true", help="honest client and adversary as two tenants"
    )
    args = parser.parse_args()
    if args.url and not args.pid:
        parser.error("--url needs --pid")
    if args.quick:
        args.duration_s = min(args.duration_s, 8.0)
        args.settle_s = min(args.settle_s, 2.0)
        args.scale = min(args.scale, 0.5)
    with tempfile.TemporaryDirectory(prefix="semcached-adversary-") as tmp:
        daemon = Daemon(args, Path(tmp))
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]  # ours: thousands of sockets
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        sampler = Sampler(daemon.pid)
        rows = []
        try:
            for name in args.scenarios:
                rows.append(run_scenario(name, daemon, sampler, args))
                print(f"{name}: done", file=sys.stderr, flush=True)
                if not daemon.alive:
                    break
        finally:
            sampler.stop()
            daemon.stop()
    limits = f"daemon soft open-file limit {args.nofile}; {args.duration_s:g} s per scenario"
    print_table(rows, f"{args.title} ({limits})")


if __name__ == "__main__":
    main()
