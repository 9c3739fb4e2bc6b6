"""The ``http`` embedding backend: an OpenAI-compatible ``/v1/embeddings`` service.

``POST {base}/v1/embeddings`` with ``{"model", "input": [texts]}`` answers
``{"data": [{"index", "embedding"}, ...]}`` (OpenAI, vLLM, TEI, Ollama, LiteLLM all
speak it). Every failure becomes an :class:`EmbeddingError`: 503 when the service is
unreachable, slow or shedding load (retrying may help), 502 when it answered with an
error or with something that is not a valid set of vectors. Neither is the caller's
fault, so neither is a 4xx, and none is a bare 500.
"""

from __future__ import annotations

import asyncio
import logging

import aiohttp
import numpy as np
import orjson

from semcached.service.semantic.embedding.base import (
    EmbeddingError,
    EmbeddingUnavailableError,
    Matrix,
)

__all__ = ["HttpEmbeddingBackend", "embeddings_url", "parse_embeddings_response"]

log = logging.getLogger(__name__)

# Statuses that mean "busy or down right now" rather than "you asked wrongly".
_RETRYABLE_STATUSES = frozenset({408, 429, 502, 503, 504})
_SNIPPET = 200


def embeddings_url(base_url: str) -> str:
    """``{base}/v1/embeddings``; a base that already ends in ``/v1`` is not doubled."""
    base = base_url.rstrip("/")
    if base.endswith("/v1"):
        base = base[: -len("/v1")]
    return f"{base}/v1/embeddings"


def parse_embeddings_response(body: bytes, n: int) -> Matrix:
    """The ``(n, dim)`` rows of an OpenAI-style embeddings answer, ordered by ``index``."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise EmbeddingError(f"embedding service answered with invalid JSON: {exc}") from exc
    data = doc.get("data") if isinstance(doc, dict) else None
    if not isinstance(data, list):
        raise EmbeddingError("embedding service answer has no 'data' list")
    if len(data) != n:
        raise EmbeddingError(f"embedding service returned {len(data)} vectors for {n} texts")
    rows: list[object] = [None] * n
    for position, item in enumerate(data):
        if not isinstance(item, dict) or not isinstance(item.get("embedding"), list):
            raise EmbeddingError(f"embedding service answer: data[{position}] has no 'embedding'")
        index = item.get("index", position)
        if type(index) is not int or not 0 <= index < n or rows[index] is not None:
            raise EmbeddingError(f"embedding service answer: bad or repeated index {index!r}")
        rows[index] = item["embedding"]
    try:
        array = np.array(rows, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise EmbeddingError(f"embedding service returned malformed vectors: {exc}") from exc
    if array.ndim != 2 or array.shape[1] == 0:
        raise EmbeddingError("embedding service returned vectors of differing or zero length")
    return array


class HttpEmbeddingBackend:
    """An OpenAI-compatible embedding service as a :class:`EmbeddingBackend`.

    ``dim`` is learned at :meth:`open` by embedding one probe text, unless given. The
    probe retries unreachable/busy answers for ``open_timeout_s`` (a sidecar's
    embedding service may start after the daemon); ``/readyz`` stays 503 meanwhile.
    """

    def __init__(
        self,
        base_url: str,
        *,
        model: str = "",
        api_key: str = "",
        timeout_s: float = 10.0,
        dim: int | None = None,
        max_concurrency: int = 4,
        open_timeout_s: float = 60.0,
    ) -> None:
        self.url = embeddings_url(base_url)
        self.model = model
        self.max_concurrency = max_concurrency
        self.open_timeout_s = open_timeout_s
        self._api_key = api_key
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._dim = dim
        self._session: aiohttp.ClientSession | None = None

    @property
    def name(self) -> str:
        """The model name (the URL when the service needs none): part of the cache key."""
        return self.model or self.url

    @property
    def dim(self) -> int:
        if self._dim is None:
            raise EmbeddingUnavailableError("the embedding service has not been probed yet")
        return self._dim

    async def open(self) -> None:
        headers = {"Content-Type": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        self._session = aiohttp.ClientSession(timeout=self._timeout, headers=headers)
        if self._dim is None:
            try:
                self._dim = await self._probe()
            except BaseException:
                await self.close()
                raise
            log.info("embedding service %s: model %r, %d dimensions", self.url, self.name, self.dim)

    async def _probe(self) -> int:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.open_timeout_s
        delay = 0.25
        while True:
            try:
                rows = await self._post(["dimension probe"])
                return int(rows.shape[1])
            except EmbeddingUnavailableError as exc:
                if loop.time() + delay > deadline:
                    raise
                log.warning("embedding service not ready (%s); retrying in %.2f s", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def embed_batch(self, texts: list[str]) -> Matrix:
        return await self._post(texts)

    async def _post(self, texts: list[str]) -> Matrix:
        session = self._session
        if session is None or session.closed:
            raise EmbeddingUnavailableError("the embedding service client is not open")
        payload: dict[str, object] = {"input": texts}
        if self.model:
            payload["model"] = self.model
        try:
            async with session.post(self.url, data=orjson.dumps(payload)) as response:
                body = await response.read()
                status = response.status
        except TimeoutError as exc:
            raise EmbeddingUnavailableError(
                f"embedding service at {self.url} did not answer within {self._timeout.total} s",
                code="embedding_timeout",
            ) from exc
        except aiohttp.ClientConnectionError as exc:
            raise EmbeddingUnavailableError(
                f"cannot reach the embedding service at {self.url}: {exc}"
            ) from exc
        except aiohttp.ClientError as exc:
            raise EmbeddingError(f"embedding service at {self.url} failed: {exc}") from exc
        if status >= 300:
            snippet = body[:_SNIPPET].decode("utf-8", "replace")
            message = f"embedding service at {self.url} answered {status}: {snippet}"
            if status in _RETRYABLE_STATUSES:
                raise EmbeddingUnavailableError(message)
            raise EmbeddingError(message)
        return parse_embeddings_response(body, len(texts))

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
