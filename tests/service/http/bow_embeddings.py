"""A local OpenAI-compatible ``/v1/embeddings`` server for tests: bag-of-words vectors.

Each word hashes to one of ``DIM`` signed buckets, so texts that share most of their
words are close (a paraphrase with the same words is a hit at 0.8) and texts that
share none are far. Deterministic; it runs on its own event loop in a thread so that
synchronous callers (``litellm.completion``) can reach it from the test's thread.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import threading

import numpy as np
from aiohttp import web

__all__ = ["DIM", "EmbeddingServer", "embed"]

DIM = 256
_WORD = re.compile(r"\w+")


def embed(text: str) -> list[float]:
    vector = np.zeros(DIM)
    for word in _WORD.findall(text.lower()):
        digest = hashlib.blake2b(word.encode(), digest_size=8).digest()
        vector[int.from_bytes(digest[:4], "little") % DIM] += 1.0 if digest[4] & 1 else -1.0
    norm = float(np.linalg.norm(vector))
    values: list[float] = (vector / norm if norm else vector).tolist()
    return values


async def _embeddings(request: web.Request) -> web.Response:
    body = await request.json()
    texts = body["input"] if isinstance(body["input"], list) else [body["input"]]
    data = [{"object": "embedding", "index": i, "embedding": embed(t)} for i, t in enumerate(texts)]
    usage = {"prompt_tokens": len(texts), "total_tokens": len(texts)}
    return web.json_response(
        {"object": "list", "data": data, "model": body["model"], "usage": usage}
    )


class EmbeddingServer:
    """Serves on 127.0.0.1, an OS-chosen port; ``base_url`` ends in ``/v1``."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        app = web.Application()
        app.router.add_post("/v1/embeddings", _embeddings)
        self._runner = web.AppRunner(app)
        self.base_url = asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)

    async def _start(self) -> str:
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        return f"http://{host}:{port}/v1"

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()
