"""A scripted OpenAI-compatible upstream for the proxy's tests, run on 127.0.0.1.

It answers ``/v1/chat/completions`` and ``/v1/completions`` (streamed or not) with
"Answer to: <prompt>", and ``/v1/embeddings`` with the kit's bag-of-words vectors (the
daemon's embedder points here too). The prompt's first word picks an edge case:
``error400``/``error500`` answer with that status, ``slow`` waits past any timeout,
``gated`` waits for :attr:`gate`, ``broken`` drops the connection mid-stream, ``cut``
ends the stream before its finish and ``[DONE]``, ``huge`` answers with
:data:`HUGE_CHARS` characters, ``tool`` calls a tool.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import orjson
from aiohttp import web

from tests.service.semantic.kit import bow

DIM = 256
HUGE_CHARS = 300_000
USAGE = {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}


def answer_text(prompt: str) -> str:
    if prompt.startswith("huge"):
        return ("lorem ipsum dolor sit amet " * (HUGE_CHARS // 27 + 1))[:HUGE_CHARS]
    return f"Answer to: {prompt}"


class ScriptedUpstream:
    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()  # prompt -> completion calls
        self.authorizations: list[str | None] = []
        self.gate = asyncio.Event()

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/embeddings", self.embeddings)
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_post("/v1/completions", self.completions)
        return app

    async def embeddings(self, request: web.Request) -> web.Response:
        texts = (await request.json())["input"]
        data = [{"index": i, "embedding": bow(t, DIM).tolist()} for i, t in enumerate(texts)]
        return web.json_response({"object": "list", "data": data})

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        user = [m for m in body["messages"] if m["role"] == "user"]
        prompt = user[-1]["content"] if user else ""
        return await self._answer(request, body, prompt, chat=True)

    async def completions(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        return await self._answer(request, body, body["prompt"], chat=False)

    async def _answer(
        self, request: web.Request, body: dict[str, Any], prompt: str, *, chat: bool
    ) -> web.StreamResponse:
        self.calls[prompt] += 1
        self.authorizations.append(request.headers.get("Authorization"))
        word = prompt.split(" ", 1)[0]
        if word in ("error400", "error500"):
            status = int(word[-3:])
            error = {"message": f"scripted {status}", "type": "invalid_request_error"}
            return web.json_response({"error": error}, status=status)
        if word == "slow":
            await asyncio.sleep(30)
        if word == "gated":
            await self.gate.wait()
        text = answer_text(prompt)
        tool = word == "tool"
        if not body.get("stream"):
            return web.json_response(_document(body, text, chat=chat, tool=tool))
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        chunks = _chunks(body, text, chat=chat, tool=tool)
        if word == "cut":
            chunks = chunks[: len(chunks) // 2]
        for i, chunk in enumerate(chunks):
            await response.write(b"data: " + orjson.dumps(chunk) + b"\n\n")
            if word == "broken" and i == 2:
                assert request.transport is not None
                request.transport.abort()  # mid-stream: no terminating chunk
                return response
        if word != "cut":
            await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response


def _document(body: dict[str, Any], text: str, *, chat: bool, tool: bool) -> dict[str, Any]:
    if not chat:
        return {
            "id": "cmpl-up",
            "object": "text_completion",
            "created": 1,
            "model": body["model"],
            "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": "stop"}],
            "usage": USAGE,
        }
    message: dict[str, Any] = {"role": "assistant", "content": None if tool else text}
    if tool:
        message["tool_calls"] = [
            {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
        ]
    return {
        "id": "chatcmpl-up",
        "object": "chat.completion",
        "created": 1,
        "model": body["model"],
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": "tool_calls" if tool else "stop",
            }
        ],
        "usage": USAGE,
    }


def _chunks(body: dict[str, Any], text: str, *, chat: bool, tool: bool) -> list[dict[str, Any]]:
    head = {"id": "up", "created": 1, "model": body["model"]}
    words = [w + " " for w in text.split(" ")]
    words[-1] = words[-1][:-1]
    if len(words) > 50:  # the huge answer: bigger pieces
        words = [text[i : i + 4096] for i in range(0, len(text), 4096)]
    out: list[dict[str, Any]] = []
    if chat:
        obj = {**head, "object": "chat.completion.chunk"}
        out.append({**obj, "choices": [{"index": 0, "delta": {"role": "assistant"}}]})
        if tool:
            call = {"index": 0, "id": "call_1", "type": "function"}
            out.append(
                {
                    **obj,
                    "choices": [
                        {"index": 0, "delta": {"tool_calls": [{**call, "function": {"name": "f"}}]}}
                    ],
                }
            )
        else:
            out.extend({**obj, "choices": [{"index": 0, "delta": {"content": w}}]} for w in words)
        finish = "tool_calls" if tool else "stop"
        out.append({**obj, "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]})
    else:
        obj = {**head, "object": "text_completion"}
        out.extend({**obj, "choices": [{"index": 0, "text": w}]} for w in words)
        out.append({**obj, "choices": [{"index": 0, "text": "", "finish_reason": "stop"}]})
    if (body.get("stream_options") or {}).get("include_usage"):
        out.append({**obj, "choices": [], "usage": USAGE})
    return out
