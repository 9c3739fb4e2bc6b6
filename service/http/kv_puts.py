"""What a chunk put brings: its metadata header, and its bytes from the body or a staged file.

The metadata travels as JSON of :class:`~semcached.protocol.kv.ChunkPutMeta` in the
``X-Semcached-KV-Meta`` header (a header, not a multipart part, so that the body is the
blob as it is and is read with one copy; its size limit is ``kv.max_meta_bytes``). A
same-host client may instead stage the bytes in a file of ``kv.shm_dir`` and name it
in ``X-Semcached-KV-Source``. Both readers answer a 4xx for the caller's mistakes.

Copies of a body's bytes between the socket and the disk: the event loop's receive
buffer, aiohttp's parser (each received piece as its own bytes), the host tier's
extent (or a reused buffer when the tier has no room), LMDB's dirty pages, the
kernel's page cache. The host tier's copy is the read itself.
"""

from __future__ import annotations

import asyncio
import errno
import os
import stat
from concurrent.futures import Executor
from pathlib import Path

import numpy as np
import orjson
from aiohttp import web
from numpy.typing import NDArray

from semcached.errors import ApiError, BadRequestError, SemcachedError
from semcached.index.kv_meta import VariantMeta
from semcached.protocol.codes import ErrorCode
from semcached.protocol.headers import KV_META_HEADER, KV_SOURCE_HEADER, KV_STAGED_PREFIX
from semcached.protocol.keys import KeyFormatError, parse_key, variant_key
from semcached.protocol.kv import CacheCraftStats, ChunkPutMeta, unpack_floats
from semcached.service.blocking import run_blocking
from semcached.service.http.appkeys import BODY_BUFFERS, EXECUTOR, KV, SETTINGS
from semcached.service.http.bodies import BodyDeadline, read_exactly, read_into
from semcached.service.http.decoding import Decoder
from semcached.service.kv.engine import KvCache, PutResult
from semcached.service.kv.types import UNSCOPED, KvTenant, PutBuffer

__all__ = [
    "PUT_META",
    "UnsafeStagedFileError",
    "check_body_length",
    "parse_put_meta",
    "put_from_body",
    "put_from_staged_file",
    "read_staged_file",
]

PUT_META = Decoder(
    ChunkPutMeta,
    what=KV_META_HEADER,
    invalid=ErrorCode.INVALID_META,
    codes={
        "model": ErrorCode.INVALID_FIELD,
        "shape": ErrorCode.BAD_SHAPE,
        "shape[]": ErrorCode.BAD_SHAPE,
        "prefix[]": ErrorCode.BAD_KEY,
    },
)


def key_or_400(text: str, field: str) -> bytes:
    """The bytes of a hex key, or ``bad_key`` naming ``field``."""
    try:
        return parse_key(text)
    except KeyFormatError as exc:
        raise BadRequestError(ErrorCode.BAD_KEY, str(exc), field=field) from None


def parse_put_meta(raw: str | None, chunk: bytes, engine: KvCache) -> VariantMeta:
    """The metadata header of a put, validated into a :class:`VariantMeta`.

    The declared shape is checked arithmetically against the model and the size
    limits (:meth:`KvCache.check_shape`) before anything of its size is allocated:
    a header of a hundred bytes may declare 2**62 tokens.
    """
    if raw is None:
        raise BadRequestError(ErrorCode.MISSING_META, f"the {KV_META_HEADER} header is required")
    put = PUT_META.decode(raw)
    engine.check_shape(put.model, put.dtype, put.shape)
    _check_storable(put.rope, "rope")
    prefix = tuple(key_or_400(k, "prefix") for k in put.prefix)
    stats = put.stats or CacheCraftStats()
    prefix_tokens = put.prefix_tokens
    if prefix_tokens is None:
        if prefix:
            raise _invalid_meta("prefix_tokens", "give one token count per prefix chunk")
        prefix_tokens = []
    tokens = put.shape[3]
    inter = _floats(stats.inter, len(prefix), "stats.inter")
    scores = _floats(stats.token_scores, tokens, "stats.token_scores")
    try:
        return VariantMeta(
            chunk=chunk,
            variant=variant_key(prefix),
            model=put.model,
            dtype=put.dtype,
            shape=put.shape,
            prefix=prefix,
            prefix_tokens=tuple(prefix_tokens),
            rope_base=put.rope_base,
            rope=put.rope,
            inter=inter,
            intra=stats.intra,
            token_scores=scores,
            created_at=engine.now(),
        )
    except (ValueError, TypeError) as exc:  # inconsistent: lengths, shape[1], values
        raise BadRequestError(ErrorCode.INVALID_META, str(exc)) from None


def _check_storable(value: object, field: str) -> None:
    """400 for free-form JSON that the metadata record cannot hold (orjson refuses
    nesting deeper than 254 levels and integers beyond 64 bits)."""
    try:
        orjson.dumps(value)
    except orjson.JSONEncodeError as exc:
        raise _invalid_meta(field, f"cannot be stored: {exc}") from None


def _invalid_meta(field: str, message: str) -> BadRequestError:
    return BadRequestError(ErrorCode.INVALID_META, f"{field}: {message}", field=field)


def _floats(value: list[float] | str | None, zeros: int, field: str) -> NDArray[np.float32]:
    """Statistics as sent, or ``zeros`` zeros when absent (checked against the shape
    later; ``zeros`` is a token count that the shape check has bounded)."""
    if value is None:
        return np.zeros(zeros, dtype=np.float32)
    try:
        return unpack_floats(value)
    except ValueError as exc:
        raise _invalid_meta(field, str(exc)) from None


def check_body_length(request: web.Request, nbytes: int) -> None:
    """411 or 400 unless the Content-Length says ``nbytes`` (before a byte is read)."""
    length = request.content_length
    if length is None:
        raise ApiError(ErrorCode.LENGTH_REQUIRED, "a put needs a Content-Length", status=411)
    if length != nbytes:
        raise BadRequestError(
            ErrorCode.LENGTH_MISMATCH,
            f"the metadata's shape and dtype make {nbytes} bytes; Content-Length is {length}",
        )


async def put_from_body(
    request: web.Request, engine: KvCache, meta: VariantMeta, tenant: KvTenant
) -> PutResult:
    """A put whose bytes are the request body, stored on a worker thread.

    The body is read straight into room in the host tier when it has some
    (:meth:`KvCache.put_buffer`: the tier then needs no copy of its own, and LMDB copies
    from there), else into a reused buffer (:mod:`~semcached.service.http.body_buffers`).
    411/400 from the Content-Length before anything is reserved; see :func:`read_into`
    for the rest.
    """
    check_body_length(request, meta.nbytes)
    app = request.app
    executor = app[EXECUTOR]
    deadline = BodyDeadline.of(app[SETTINGS].server)
    into = None
    if engine.host is not None and meta.nbytes > 0:
        into = await _put_buffer(executor, engine, meta.nbytes)
    if into is None:
        buffers = app[BODY_BUFFERS]
        blob = await read_exactly(request, meta.nbytes, deadline, buffers)
        try:
            result = await run_blocking(executor, lambda: engine.put(meta, blob, tenant=tenant))
        except asyncio.CancelledError:
            raise  # the worker may still be reading the buffer: never reuse it
        except BaseException:
            buffers.give_back(blob)
            raise
        buffers.give_back(blob)
        return result
    try:
        await read_into(request, meta.nbytes, into.write, deadline)
    except BaseException:
        # Not awaited: this may be a cancellation; the worker gives the room back.
        executor.submit(engine.drop_put_buffer, into)
        raise
    reserved = into
    return await run_blocking(
        executor, lambda: engine.put(meta, reserved.view, tenant=tenant, into=reserved)
    )


async def _put_buffer(executor: Executor, engine: KvCache, nbytes: int) -> PutBuffer | None:
    """:meth:`KvCache.put_buffer` on a worker thread; a handler cancelled meanwhile (its
    client gone) gives the room back once the worker has taken it."""
    taking = asyncio.ensure_future(run_blocking(executor, engine.put_buffer, nbytes))
    try:
        return await asyncio.shield(taking)
    except asyncio.CancelledError:

        def give_back(done: asyncio.Future[PutBuffer | None]) -> None:
            if not done.cancelled() and done.exception() is None:
                taken = done.result()
                if taken is not None:
                    executor.submit(engine.drop_put_buffer, taken)

        taking.add_done_callback(give_back)
        raise


def put_from_staged_file(
    app: web.Application, meta: VariantMeta, source: str, tenant: KvTenant = UNSCOPED
) -> PutResult:
    """A put whose bytes a same-host client staged in a file of ``kv.shm_dir``.

    The daemon reads the file (one copy, no socket) and stores it. Only regular files
    with a single link named ``semcached-put-*`` are read: never a symbolic or hard
    link to another file (the daemon's own arena, another tenant's staged put), never
    a path outside the directory. It reads rather than maps the file: a client
    truncating a mapped file would kill the daemon with SIGBUS. Blocks: run it on a
    worker thread.
    """
    settings = app[SETTINGS].kv
    segment = source.removeprefix("shm:")
    if (
        not settings.shm
        or source == segment
        or not segment.startswith(KV_STAGED_PREFIX)
        or "/" in segment
    ):
        raise BadRequestError(
            ErrorCode.BAD_SOURCE,
            f"{KV_SOURCE_HEADER} must be shm:{KV_STAGED_PREFIX}<name> with kv.shm enabled",
        )
    try:
        blob = read_staged_file(settings.shm_dir / segment, meta.nbytes)
    except UnsafeStagedFileError as exc:
        raise BadRequestError(ErrorCode.BAD_SOURCE, f"staged blob {segment!r}: {exc}") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # O_NOFOLLOW met a symbolic link
            raise BadRequestError(
                ErrorCode.BAD_SOURCE, f"staged blob {segment!r}: a symbolic link is not read"
            ) from None
        raise BadRequestError(
            ErrorCode.SHM_SOURCE_UNAVAILABLE, f"cannot read the staged blob {segment!r}: {exc}"
        ) from None
    if blob is None:
        raise BadRequestError(
            ErrorCode.LENGTH_MISMATCH,
            f"shape {list(meta.shape)} of {meta.dtype} is {meta.nbytes} bytes; the staged "
            "file has another length",
        )
    return app[KV].get().put(meta, blob, tenant=tenant)


class UnsafeStagedFileError(SemcachedError):
    """The staged name is not a plain file of its own: not regular, or hard-linked."""


def read_staged_file(path: Path, nbytes: int) -> bytearray | None:
    """The bytes of a regular, singly linked file of exactly ``nbytes`` bytes; None when
    its length differs. OSError (ELOOP for a symbolic link) when it cannot be opened,
    :class:`UnsafeStagedFileError` when it is not a regular file or has another link."""
    # O_NONBLOCK: a FIFO planted under the name must not hang the worker thread.
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    try:
        info = os.fstat(fd)  # of the file opened, whatever the name points to by now
        if not stat.S_ISREG(info.st_mode):
            raise UnsafeStagedFileError("not a regular file")
        if info.st_nlink != 1:
            raise UnsafeStagedFileError(f"a file with {info.st_nlink} links is not read")
        if info.st_size != nbytes:
            return None
        blob = bytearray(nbytes)
        view = memoryview(blob)
        filled = 0
        while filled < nbytes:
            n = os.preadv(fd, [view[filled:]], filled)
            if n == 0:  # truncated meanwhile
                return None
            filled += n
        return blob
    finally:
        os.close(fd)
