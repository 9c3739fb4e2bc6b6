"""The configured OpenAI-compatible upstream: one aiohttp session to its base URL.

Failures to get an answer become the errors an OpenAI client understands: a timeout
is a 504 ``upstream_timeout``, a refused or broken connection a 502
``upstream_unreachable``. An answer the upstream did give, error or not, is the
caller's to see as it is (the route passes it through, never stores it).
"""

from __future__ import annotations

from collections.abc import Mapping

import aiohttp

from semcached.errors import ServerError
from semcached.protocol.headers import JSON

__all__ = ["PASSED_ON_HEADERS", "Upstream", "passed_back", "upstream_error"]

PASSED_ON_HEADERS = ("OpenAI-Organization", "OpenAI-Project", "OpenAI-Beta")
"""Caller headers forwarded to the upstream besides Authorization."""
PASSED_BACK_PREFIXES = ("openai-", "x-ratelimit-")
"""Upstream response headers given back to the caller (rate limits, request ids)."""


def upstream_error(exc: BaseException) -> ServerError:
    """The error the caller gets when no answer came: 504 for a timeout, else 502."""
    if isinstance(exc, TimeoutError):
        return ServerError("upstream_timeout", "the upstream did not answer in time", status=504)
    return ServerError(
        "upstream_unreachable",
        f"the upstream could not be reached: {type(exc).__name__}",
        status=502,
    )


def passed_back(headers: Mapping[str, str]) -> dict[str, str]:
    """The upstream's response headers that the caller sees."""
    out: dict[str, str] = {}
    for name, value in headers.items():
        lower = name.lower()
        if lower in ("retry-after", "x-request-id") or lower.startswith(PASSED_BACK_PREFIXES):
            out[name] = value
    return out


class Upstream:
    """Open on the loop (:meth:`open`); :meth:`send` posts and returns the unread answer."""

    def __init__(self, base_url: str, *, api_key: str, timeout_s: float) -> None:
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.timeout_s = timeout_s
        self._session: aiohttp.ClientSession | None = None

    async def open(self) -> None:
        # No total bound: a long stream is fine while bytes keep coming; a pause past
        # timeout_s between them (or before the answer) is not.
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=self.timeout_s, sock_read=self.timeout_s
        )
        self._session = aiohttp.ClientSession(timeout=timeout, raise_for_status=False)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def headers(self, caller: Mapping[str, str], authorization: str | None) -> dict[str, str]:
        """What to send: the configured key, else the caller's Authorization if passed on."""
        out = {"Content-Type": JSON}
        if self.api_key:
            out["Authorization"] = f"Bearer {self.api_key}"
        elif authorization:
            out["Authorization"] = authorization
        for name in PASSED_ON_HEADERS:
            if name in caller:
                out[name] = caller[name]
        return out

    async def send(
        self, path: str, body: bytes, headers: Mapping[str, str]
    ) -> aiohttp.ClientResponse:
        """POST ``body`` to ``<base URL><path>``; the answer's status and headers are in,
        its body is not read yet (the caller releases it). Raises :func:`upstream_error`'s."""
        if self._session is None:
            raise ServerError("not_ready", "the proxy's upstream session is not open", status=503)
        try:
            return await self._session.post(self.base_url + path, data=body, headers=headers)
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise upstream_error(exc) from None

    @staticmethod
    async def read(response: aiohttp.ClientResponse, limit: int) -> tuple[bytes, bool]:
        """The body, whole (True), or its first bytes past ``limit`` (False: the rest is
        still to be read from ``response.content``)."""
        try:
            chunks: list[bytes] = []
            size = 0
            async for chunk in response.content.iter_any():
                chunks.append(chunk)
                size += len(chunk)
                if size > limit:
                    return b"".join(chunks), False
            return b"".join(chunks), True
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise upstream_error(exc) from None
