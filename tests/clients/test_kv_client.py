"""The KV client commands against a real daemon: both clients, zero-copy and HTTP paths,
and acknowledged puts surviving kill -9."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from semcached.clients import AsyncSemcachedClient, SemcachedClient, put_meta
from semcached.clients.shm import ShmPath
from semcached.errors import SemcachedError
from semcached.protocol.keys import chunk_key
from semcached.protocol.kv import ChunkMeta
from tests.daemon import DaemonProcess
from tests.service.kv.kit import TINY

SHAPE = (TINY.layers, 2, TINY.kv_heads, 16, TINY.head_dim)
META = put_meta(TINY.name, "float32", SHAPE)


def write_config(tmp_path: Path) -> Path:
    config = tmp_path / "semcached.toml"
    config.write_text(
        f'[kv]\nshm_dir = "{tmp_path}"\nhost_bytes = 1048576\ndisk_bytes = 16777216\n'
        f'[kv_models."{TINY.name}"]\nlayers = {TINY.layers}\nkv_heads = {TINY.kv_heads}\n'
        f"head_dim = {TINY.head_dim}\n"
    )
    return config


def start(tmp_path: Path) -> DaemonProcess:
    daemon = DaemonProcess(tmp_path / "data", ["--config", str(write_config(tmp_path))])
    daemon.wait_ready()
    return daemon


@pytest.fixture
def kv_daemon(tmp_path: Path) -> Iterator[DaemonProcess]:
    daemon = start(tmp_path)
    yield daemon
    daemon.terminate()


def key(i: int) -> bytes:
    return chunk_key(TINY.name, TINY.tokenizer, "float32", [i, i + 1, i + 2])


def tensor(i: int) -> np.ndarray:
    return np.random.default_rng(i).standard_normal(SHAPE).astype(np.float32)


def put(client: SemcachedClient, i: int, prefix: tuple[bytes, ...] = ()) -> None:
    meta = put_meta(
        TINY.name,
        "float32",
        SHAPE,
        prefix=prefix,
        prefix_tokens=[16] * len(prefix),
        rope_base=3,
        inter=[1.0] * len(prefix),
        intra=40.0,
        token_scores=np.linspace(0, 1, 16),
    )
    stored = client.put_chunk(key(i), tensor(i), meta)
    assert isinstance(stored, ChunkMeta)
    assert (stored.key, stored.rope_base, stored.prefix) == (
        key(i).hex(),
        3,
        tuple(k.hex() for k in prefix),
    )


def test_sync_client_round_trips_zero_copy_and_over_http(
    kv_daemon: DaemonProcess, tmp_path: Path
) -> None:
    url = kv_daemon.wait_listening()
    with SemcachedClient(url, shm_dir=tmp_path) as client:
        put(client, 1)
        chunk = client.get_chunk(key(1))
        assert chunk.zero_copy
        assert chunk.lease is not None
        assert chunk.lease.valid
        np.testing.assert_array_equal(chunk.array(), tensor(1))
        assert not chunk.array().flags.writeable
        assert client.release_lease(chunk.lease.id)
        over_http = client.get_chunk(key(1), transfer="http")
        assert not over_http.zero_copy
        np.testing.assert_array_equal(over_http.array(), tensor(1))
        assert over_http.meta.rope_base == 3

        put(client, 2, prefix=(key(1),))
        plan = client.plan(TINY.name, [key(1), key(9), key(2)], chunk_tokens=[16, 5, 16])
        assert [c.hit for c in plan.chunks] == [True, False, True]
        assert plan.chunks[2].exact_prefix is False  # now after [1, 9], computed after [1]
        assert plan.chunks[2].beta == 1.0
        assert plan.lease is not None
        fetched = client.fetch(plan.chunks[2], plan.lease)
        assert fetched.zero_copy
        np.testing.assert_array_equal(fetched.array(), tensor(2))
        assert client.release_lease(plan.lease.id)

        stats = client.kv_stats()
        assert stats["disk"].entries == 2
        assert stats["host"].hits >= 2
        assert client.delete_chunk(key(1)) == 1
        assert client.delete_chunk(key(1)) == 0


def test_puts_on_the_same_host_are_staged_in_shared_memory(
    kv_daemon: DaemonProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    staged: list[str] = []
    original = ShmPath.staged

    @contextlib.contextmanager
    def spy(self: ShmPath, data: bytes) -> Iterator[str]:
        with original(self, data) as name:
            staged.append(name)
            yield name

    monkeypatch.setattr(ShmPath, "staged", spy)
    with SemcachedClient(kv_daemon.wait_listening(), shm_dir=tmp_path) as client:
        put(client, 1)
        assert len(staged) == 1
        assert not (tmp_path / staged[0]).exists()  # removed once the daemon has it
        np.testing.assert_array_equal(client.get_chunk(key(1), transfer="http").array(), tensor(1))
        client.put_chunk(key(2), tensor(2), META, transfer="http")
        assert len(staged) == 1


def test_a_client_on_another_host_falls_back_to_http(
    kv_daemon: DaemonProcess, tmp_path: Path
) -> None:
    elsewhere = tmp_path / "not-the-daemons-shm"
    elsewhere.mkdir()
    with SemcachedClient(kv_daemon.wait_listening(), shm_dir=elsewhere) as client:
        put(client, 1)  # staged where the daemon cannot see it: sent as a body instead
        assert client._shm.same_host is False
        chunk = client.get_chunk(key(1))
        assert not chunk.zero_copy
        np.testing.assert_array_equal(chunk.array(), tensor(1))
        assert client.kv_stats()["host"].hits >= 1
        with pytest.raises(SemcachedError):
            client.get_chunk(key(1), transfer="shm")
        plan = client.plan(TINY.name, [key(1)])  # learned: no shm asked for any more
        assert plan.lease is None
        np.testing.assert_array_equal(client.fetch(plan.chunks[0]).array(), tensor(1))


async def test_async_client_does_the_same(kv_daemon: DaemonProcess, tmp_path: Path) -> None:
    async with AsyncSemcachedClient(kv_daemon.wait_listening(), shm_dir=tmp_path) as client:
        stored = await client.put_chunk(key(5), tensor(5), META)
        assert stored.nbytes == tensor(5).nbytes
        chunk = await client.get_chunk(key(5))
        assert chunk.zero_copy
        np.testing.assert_array_equal(chunk.array(), tensor(5))
        assert chunk.lease is not None
        assert await client.release_lease(chunk.lease.id)
        plan = await client.plan(TINY.name, [key(5)], transfer="http")
        assert plan.chunks[0].exact_prefix
        np.testing.assert_array_equal((await client.fetch(plan.chunks[0])).array(), tensor(5))
        assert (await client.kv_stats())["disk"].entries == 1
        assert await client.delete_chunk(key(5)) == 1


def test_acknowledged_puts_survive_kill_9_and_nothing_torn_is_served(tmp_path: Path) -> None:
    daemon = start(tmp_path)
    acknowledged: list[int] = []
    stop = threading.Event()

    def writer() -> None:
        with SemcachedClient(daemon.wait_listening(), shm_dir=tmp_path) as client:
            i = 0
            while not stop.is_set():
                try:
                    put(client, i)
                except SemcachedError:
                    return  # the daemon died mid-request: not acknowledged
                acknowledged.append(i)
                i += 1

    thread = threading.Thread(target=writer)
    thread.start()
    while len(acknowledged) < 20:
        threading.Event().wait(0.01)
    daemon.terminate(signal.SIGKILL)
    stop.set()
    thread.join(10)

    again = start(tmp_path)
    try:
        with SemcachedClient(again.wait_listening(), shm_dir=tmp_path) as client:
            stats = client.kv_stats()
            assert stats["host"].entries == 0  # the host tier starts cold
            assert stats["disk"].entries >= len(acknowledged)
            for i in acknowledged:
                chunk = client.get_chunk(key(i), transfer="http")
                np.testing.assert_array_equal(chunk.array(), tensor(i))
            # The one put in flight at the kill is either whole or absent.
            extra = stats["disk"].entries - len(acknowledged)
            assert extra in (0, 1)
            if extra:
                np.testing.assert_array_equal(
                    client.get_chunk(key(len(acknowledged))).array(), tensor(len(acknowledged))
                )
    finally:
        again.terminate()
