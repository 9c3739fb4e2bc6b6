"""Reading a request body within the server's bounds: its type, its size, its pace.

A JSON route reads its body with :func:`read_json_body`: a body declared as another
media type is a 415 before a byte is read, a body over the route's limit a 413 (from
its Content-Length before reading, else as soon as it grows past it), and a body
whose next bytes take longer than ``server.body_timeout_s`` to arrive a 408 (a client
trickling its body must not hold a handler and its buffer forever).
"""

from __future__ import annotations

import asyncio

from aiohttp import hdrs, web

from semcached.errors import BadRequestError, PayloadTooLargeError
from semcached.protocol.codes import ErrorCode
from semcached.service.http.appkeys import SETTINGS

__all__ = ["check_json_content_type", "read_body", "read_json_body"]


def check_json_content_type(request: web.Request) -> None:
    """415 unless the body is declared as JSON (``application/json`` or ``*/*+json``).

    A body without a Content-Type is taken as JSON: scripts (and ``curl --data-binary``
    with ``-H``) often omit it, and nothing else is plausible on these routes.
    """
    if hdrs.CONTENT_TYPE not in request.headers:
        return
    media = request.content_type  # lower-cased, without parameters
    if media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    ):
        return
    raise BadRequestError(
        ErrorCode.UNSUPPORTED_MEDIA_TYPE,
        f"Content-Type {media!r} is not accepted here; send application/json",
        status=415,
    )


async def read_body(request: web.Request, *, limit: int, timeout_s: float) -> bytearray:
    """The body, at most ``limit`` bytes, each read waiting at most ``timeout_s``."""
    declared = request.content_length
    if declared is not None and declared > limit:
        raise _too_large(limit)
    body = bytearray()
    content = request.content
    while True:
        try:
            async with asyncio.timeout(timeout_s):
                chunk = await content.readany()
        except TimeoutError:
            raise BadRequestError(
                ErrorCode.BODY_TIMEOUT,
                f"no body bytes for {timeout_s:g} s after {len(body)} bytes "
                "(server.body_timeout_s)",
                status=408,
            ) from None
        if not chunk:
            return body
        body += chunk
        if len(body) > limit:
            raise _too_large(limit)


async def read_json_body(request: web.Request) -> bytearray:
    """A JSON route's body, within ``server.max_body_bytes`` and ``server.body_timeout_s``."""
    check_json_content_type(request)
    timeout_s = request.app[SETTINGS].server.body_timeout_s
    return await read_body(request, limit=request.client_max_size, timeout_s=timeout_s)


def _too_large(limit: int) -> PayloadTooLargeError:
    return PayloadTooLargeError(
        ErrorCode.PAYLOAD_TOO_LARGE, f"request body exceeds the limit of {limit} bytes"
    )
