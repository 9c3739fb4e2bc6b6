"""Request bodies within bounds: memory committed only as bytes arrive, a deadline for
slow senders, and a daemon-wide budget of upload bytes.

A chunk put announces up to ``kv.max_blob_bytes`` in its Content-Length.
:func:`read_exactly` maps an anonymous region of that length (``mmap``: address space,
no memory until a page is written), so a declared length costs nothing until its
bytes arrive, and the body is still read with one copy into one contiguous buffer.
Buffers of finished puts are reused (:class:`~semcached.service.http.body_buffers.BodyBuffers`):
a fresh mapping's first touch costs more than the copy. :func:`read_into` hands the
pieces to any writer instead (a put writes them into the host tier's room with
``pwrite``, which maps nothing either).

Every read of a body waits at most ``server.body_timeout_s``, and the whole body must
be in within that plus its length at ``server.body_min_bytes_per_s``
(:class:`BodyDeadline`); a body that is slower gets 408 ``body_timeout`` and the
connection is closed, so a trickling sender cannot hold its buffer and its share of
the budget for ever. JSON bodies (:func:`read_all`) get the same deadlines,
and a JSON route refuses a body declared as another media type with 415 before reading
it (:func:`check_json_content_type`).

:class:`UploadBudget` caps the bytes of all chunk puts being received or stored at
once (``kv.max_inflight_upload_bytes``), reserved by declared length at admission. A
put that does not fit is refused at once with 503 ``uploads_busy`` and Retry-After
rather than queued: a queued put would hold its connection and socket buffers while
it waits, which is just what a flood of uploads wants, and the clients already retry
a 503 with backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import mmap
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from aiohttp import hdrs, web
from prometheus_client import CollectorRegistry

from semcached.errors import ApiError, BadRequestError, ServiceUnavailableError
from semcached.protocol.codes import ErrorCode
from semcached.service.config import ServerSettings
from semcached.service.http.body_buffers import BodyBuffers
from semcached.service.metrics import UploadMetrics

__all__ = [
    "BodyDeadline",
    "UploadBudget",
    "check_json_content_type",
    "read_all",
    "read_exactly",
    "read_into",
]

RETRY_AFTER_S = 1
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class BodyDeadline:
    """How long a body may take: ``idle_s`` between reads, and in all ``idle_s`` plus
    its length at ``min_bytes_per_s`` (0: no overall limit)."""

    idle_s: float
    min_bytes_per_s: int = 0

    @classmethod
    def of(cls, server: ServerSettings) -> BodyDeadline:
        return cls(server.body_timeout_s, server.body_min_bytes_per_s)

    def total_s(self, length: int) -> float:
        if not self.min_bytes_per_s:
            return math.inf
        return self.idle_s + length / self.min_bytes_per_s


def _timed_out(received: int, length: int | None) -> ApiError:
    of = "" if length is None else f" of {length}"
    return ApiError(
        ErrorCode.BODY_TIMEOUT,
        f"the request body came too slowly ({received}{of} bytes received in time)",
        status=408,
        headers={"Connection": "close"},
    )


async def _in_time(
    read: Coroutine[Any, Any, T],
    ends: float,
    deadline: BodyDeadline,
    received: int,
    length: int | None,
) -> T:
    """One read of a body, within ``idle_s`` and before the overall deadline ``ends``
    (loop time): 408 otherwise, saying how much of it came."""
    wait = min(deadline.idle_s, ends - asyncio.get_running_loop().time())
    try:
        if wait <= 0:
            raise TimeoutError
        async with asyncio.timeout(wait):
            return await read
    except TimeoutError:
        read.close()  # never started when the deadline had already passed
        raise _timed_out(received, length) from None


async def read_exactly(
    request: web.Request,
    length: int,
    deadline: BodyDeadline,
    buffers: BodyBuffers | None = None,
) -> memoryview:
    """The body, which must be ``length`` bytes, in one buffer committed as it fills
    (from ``buffers`` when given: hand the view back to it when done).

    See :func:`read_into` for the errors. The caller has checked ``length`` against
    its limits.
    """
    if length <= 0:
        return memoryview(b"")
    buffer = mmap.mmap(-1, length) if buffers is None else buffers.take(length)
    with memoryview(buffer) as whole:
        view = whole[:length]

    def fill(at: int, piece: bytes) -> None:
        view[at : at + len(piece)] = piece

    try:
        await read_into(request, length, fill, deadline)
    except BaseException:
        view.release()
        buffer.close()  # now, not when the traceback that refers to it is collected
        raise
    return view


async def read_into(
    request: web.Request,
    length: int,
    write: Callable[[int, bytes], None],
    deadline: BodyDeadline,
) -> None:
    """Hand the body, which must be ``length`` bytes, to ``write(offset, piece)`` as it
    arrives.

    408 ``body_timeout`` when it comes too slowly, 400 ``truncated_body`` when it ends
    early. Each piece the connection received is handed over as it is (``readchunk``;
    ``read`` and ``readany`` join pieces first, a copy).
    """
    ends = asyncio.get_running_loop().time() + deadline.total_s(length)
    filled = 0
    while filled < length:
        chunk, _ = await _in_time(request.content.readchunk(), ends, deadline, filled, length)
        if not chunk:
            raise BadRequestError(
                ErrorCode.TRUNCATED_BODY, f"the body ended after {filled} of {length} bytes"
            )
        if filled + len(chunk) > length:  # the parser bounds a body by its Content-Length
            raise BadRequestError(
                ErrorCode.LENGTH_MISMATCH, f"the body is longer than {length} bytes"
            )
        write(filled, chunk)
        filled += len(chunk)


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


async def read_all(request: web.Request, deadline: BodyDeadline) -> bytes:
    """The whole body, at most ``client_max_size`` bytes (413, from Content-Length before
    reading), each read within ``idle_s`` and all within the overall deadline of its
    declared length, or of the largest body accepted when it declares none."""
    length = request.content_length
    limit = request.client_max_size
    if length is not None and length > limit:
        raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=length)
    content = request.content
    if content.is_eof():  # all of it came with the head (a small body): nothing to wait for
        whole = content.read_nowait(-1)
        if len(whole) > limit:
            raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=len(whole))
        return whole
    ends = asyncio.get_running_loop().time() + deadline.total_s(limit if length is None else length)
    body = bytearray()
    while True:
        chunk = await _in_time(request.content.readany(), ends, deadline, len(body), length)
        if not chunk:
            return bytes(body)
        body += chunk
        if len(body) > limit:
            raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=len(body))


class UploadBudget:
    """The bytes of uploads in flight, at most ``capacity``; one upload is admitted
    whatever its size when none is in flight. Used on the event loop only."""

    def __init__(self, capacity: int, registry: CollectorRegistry | None = None) -> None:
        if capacity < 1:
            raise ValueError("the upload budget must be positive")
        self.capacity = capacity
        self.reserved = 0
        self._metrics = None if registry is None else UploadMetrics(registry, self._in_flight)

    def _in_flight(self) -> float:
        return self.reserved

    @contextlib.contextmanager
    def reserve(self, nbytes: int) -> Iterator[None]:
        """Hold ``nbytes`` of the budget for the block, or raise 503 ``uploads_busy``."""
        if self.reserved and self.reserved + nbytes > self.capacity:
            if self._metrics is not None:
                self._metrics.refused.inc()
            raise ServiceUnavailableError(
                ErrorCode.UPLOADS_BUSY,
                f"{self.reserved} bytes of uploads are in flight; {nbytes} more would exceed "
                f"kv.max_inflight_upload_bytes ({self.capacity}); retry later",
                headers={"Retry-After": str(RETRY_AFTER_S)},
            )
        self.reserved += nbytes
        try:
            yield
        finally:
            self.reserved -= nbytes
