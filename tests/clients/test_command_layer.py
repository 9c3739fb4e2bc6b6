"""The command layer: one declaration per method, both clients expose it with the
command's signature, flows are driven the same way by both, chunk metadata is built once."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest

from semcached.clients import AsyncSemcachedClient, SemcachedClient, put_meta
from semcached.clients.api import ClientApi
from semcached.clients.base import BlockingClient, Method, command
from semcached.clients.request import Flow, Reply, Request
from semcached.errors import NotFoundError
from semcached.protocol.kv import ChunkPutMeta, unpack_floats

METHODS = sorted(name for name, value in vars(ClientApi).items() if isinstance(value, Method))


def test_every_command_is_a_method_of_both_clients_with_its_own_signature() -> None:
    assert {"lookup", "insert", "put_chunk", "get_chunk", "plan", "fetch", "kv_stats"} <= set(
        METHODS
    )
    for name in METHODS:
        declared: Method[..., object] = vars(ClientApi)[name]
        blocking, asynchronous = getattr(SemcachedClient, name), getattr(AsyncSemcachedClient, name)
        assert blocking is declared.blocking
        assert asynchronous is declared.asynchronous
        assert not inspect.iscoroutinefunction(blocking)
        assert inspect.iscoroutinefunction(asynchronous)
        assert inspect.signature(blocking) == inspect.signature(asynchronous)
        assert blocking.__name__ == name
        assert blocking.__doc__
        assert blocking.__doc__ == declared.__wrapped__.__doc__
    put = inspect.signature(SemcachedClient("http://h").put_chunk)
    assert list(put.parameters) == ["key", "data", "meta", "transfer"]


class Scripted(SemcachedClient):
    """A client whose transport answers from a list, to drive flows without a daemon."""

    def __init__(self, replies: list[Reply]) -> None:
        super().__init__("http://127.0.0.1:1")
        self.replies = replies
        self.sent: list[Request[object]] = []

    def _send(self, request: Request[object]) -> Reply:
        self.sent.append(request)
        return self.replies.pop(0)


def test_a_flow_sees_each_result_and_each_error_as_straight_line_code() -> None:
    seen: list[object] = []

    def flow() -> Flow[str]:
        first = yield Request("GET", "/a", lambda r: r.status, idempotent=True)
        seen.append(first)
        try:
            yield Request("GET", "/b", lambda r: r.status, idempotent=True)
        except NotFoundError as exc:
            seen.append(exc.code)
        return "done"

    missing = b'{"error": {"code": "not_found", "message": "no"}}'
    client = Scripted([Reply(200, {}, b""), Reply(404, {}, missing)])
    assert client.run(flow()) == "done"
    assert seen == [200, "not_found"]
    assert [r.path for r in client.sent] == ["/a", "/b"]


async def test_the_async_client_drives_the_same_flow() -> None:
    def flow() -> Flow[int]:
        status: int = yield Request("GET", "/a", lambda r: r.status, idempotent=True)
        return status + 1

    class AsyncScripted(AsyncSemcachedClient):
        async def _send(self, request: Request[object]) -> Reply:
            return Reply(200, {}, b"")

    async with AsyncScripted("http://127.0.0.1:1") as client:
        assert await client.run(flow()) == 201


def test_put_meta_packs_arrays_and_keys_once() -> None:
    scores = np.linspace(0, 1, 4, dtype=np.float64)
    meta = put_meta(
        "m",
        "float16",
        np.zeros((2, 2, 1, 4, 8)).shape,
        prefix=[b"\x01" * 16, "ab" * 16],
        prefix_tokens=np.array([4, 5]),
        rope_base=7,
        inter=np.array([0.5, 1.5], dtype=np.float32),
        intra=3,
        token_scores=scores,
    )
    assert meta.shape == (2, 2, 1, 4, 8)
    assert meta.prefix == ["01" * 16, "ab" * 16]
    assert meta.prefix_tokens == [4, 5]
    assert meta.stats is not None
    assert isinstance(meta.stats.token_scores, str)  # base64 of float32
    np.testing.assert_array_equal(unpack_floats(meta.stats.token_scores), scores.astype("f4"))
    # What travels is what the daemon decodes.
    wire = msgspec.json.encode(meta)
    assert msgspec.json.decode(wire, type=ChunkPutMeta) == meta
    assert put_meta("m", "float32", (1, 2, 1, 1, 1)).stats is None
    with pytest.raises(ValueError, match="dtype"):
        put_meta("m", "int8", (1, 2, 1, 1, 1))
    with pytest.raises(ValueError, match="shape"):
        put_meta("m", "float32", (1, 2, 1))


def test_a_failed_staged_put_cleans_up_its_file(tmp_path: Path) -> None:
    bad_source = b'{"error": {"code": "bad_source", "message": "not here"}}'
    created = (
        b'{"key": "k", "variant": "v", "model": "m", "dtype": "float32", "shape": [1,2,1,1,1],'
    )
    created += b'"tokens": 1, "nbytes": 8, "prefix": [], "prefix_tokens": [], "rope_base": 0,'
    created += b'"rope": {}, "created_at": 1, "hits": 0, "last_access": 1, "tiers": ["host"]}'
    client = Scripted([Reply(400, {}, bad_source), Reply(201, {}, created)])
    client._shm.mapper.directory = tmp_path
    stored = client.put_chunk(b"\0" * 16, b"\0" * 8, put_meta("m", "float32", (1, 2, 1, 1, 1)))
    assert stored.nbytes == 8
    assert client._shm.same_host is False
    assert list(tmp_path.iterdir()) == []  # the staged file went with the failed try
    staged, sent = client.sent
    assert staged.data == b""
    assert sent.data == b"\0" * 8


def test_compiled_methods_bind_arguments_as_the_command_does() -> None:
    def build(a: int, /, b: int = 1, *rest: int, c: int, d: int = 2, **extra: int) -> object:
        """Echo."""
        return (a, b, rest, c, d, extra)

    class Echo(BlockingClient):
        echo = command(build)  # type: ignore[arg-type]

        def execute(self, request: Any) -> Any:
            return request

    client = Echo()
    assert client.echo(0, c=3) == (0, 1, (), 3, 2, {})
    assert client.echo(0, 5, 6, 7, c=3, d=4, e=9) == (0, 5, (6, 7), 3, 4, {"e": 9})
    with pytest.raises(TypeError):
        client.echo(a=0, c=3)  # positional-only stays so
    with pytest.raises(TypeError):
        client.echo(0)  # c is required
    assert str(inspect.signature(Echo.echo)) == (
        "(self, a: 'int', /, b: 'int' = 1, *rest: 'int', c: 'int', d: 'int' = 2, **extra: 'int')"
    )
