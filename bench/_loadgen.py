"""Closed-loop HTTP load generator for bench/semantic_http.py, in its own process.

``--concurrency`` workers share one aiohttp session (keep-alive, one connection each);
each posts the next request body of ``BODIES`` (one JSON document per line, taken in
turn) as soon as its previous answer arrived, for ``--duration-s`` seconds after a
``--warmup-s`` that is not counted. Prints one JSON line: requests, seconds, errors
(non-200 answers or failures), p50_us, p99_us (client-side latency).

    python bench/_loadgen.py URL BODIES --concurrency 16 --duration-s 10

bench/semantic_http.py uses wrk instead when it is installed (less CPU per request).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import sys
import time

import aiohttp
import numpy as np
import orjson


async def run(
    url: str, bodies: list[bytes], concurrency: int, duration_s: float, warmup_s: float
) -> dict[str, float]:
    latencies: list[float] = []
    errors = 0
    turn = itertools.cycle(bodies)
    start = time.perf_counter()
    counting_from = start + warmup_s
    end = counting_from + duration_s
    headers = {"Content-Type": "application/json"}
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            nonlocal errors
            while (now := time.perf_counter()) < end:
                try:
                    async with session.post(url, data=next(turn), headers=headers) as response:
                        await response.read()
                        ok = response.status == 200
                except aiohttp.ClientError:
                    ok = False
                done = time.perf_counter()
                if now >= counting_from:
                    latencies.append(done - now)
                    errors += not ok

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    values = np.asarray(latencies) * 1e6
    p50, p99 = np.percentile(values, [50, 99]) if values.size else (np.nan, np.nan)
    return {
        "requests": float(values.size), "seconds": duration_s, "errors": float(errors),
        "p50_us": float(p50), "p99_us": float(p99),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("bodies")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--duration-s", type=float, default=10.0)
    parser.add_argument("--warmup-s", type=float, default=1.0)
    args = parser.parse_args()
    with open(args.bodies, "rb") as f:
        bodies = [line.rstrip(b"\n") for line in f if line.strip()]
    result = asyncio.run(run(args.url, bodies, args.concurrency, args.duration_s, args.warmup_s))
    sys.stdout.write(orjson.dumps(result).decode() + "\n")


if __name__ == "__main__":
    main()
