"""The client's GPU path without a GPU: handle decoding, device names, the lease rule
checked before any CUDA call, and the fetch order cuda -> shm -> http against a real
daemon (whose GPU tier is off here). tests/clients/test_cuda_gpu.py opens real
handles on a CUDA machine."""

from __future__ import annotations

import base64
import dataclasses
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from semcached.clients import AsyncSemcachedClient, SemcachedClient, put_meta
from semcached.clients.cuda import (
    CudaMapper,
    CudaUnavailableError,
    DeviceNotVisibleError,
    InvalidCudaHandleError,
    TorchUnavailableError,
    decode_ipc_handle,
    device_uuid,
    local_index,
    normalise_uuid,
)
from semcached.clients.kv import LeaseExpiredError, LeaseInfo, PlannedChunk
from semcached.errors import BadRequestError, SemcachedError
from semcached.protocol.cuda_ipc import CudaDriver
from semcached.protocol.keys import chunk_key
from semcached.protocol.kv import KvCudaHandle
from tests.daemon import DaemonProcess
from tests.service.kv.kit import TINY

torch = pytest.importorskip("torch")

SHAPE = (TINY.layers, 2, TINY.kv_heads, 16, TINY.head_dim)
NBYTES = int(np.prod(SHAPE)) * 4
FOREIGN = "GPU-00000000-1111-2222-3333-444444444444"
HANDLE = base64.b64encode(bytes(range(64))).decode()


def lease(ttl_s: float, *, wall_offset: float = 0.0) -> LeaseInfo:
    now = time.time() + wall_offset
    return LeaseInfo("l1", now + ttl_s, ttl_s, time.monotonic() + ttl_s)


def cuda_handle(device: str = FOREIGN, length: int = NBYTES) -> KvCudaHandle:
    return KvCudaHandle(device=device, device_index=0, ipc_handle=HANDLE, offset=0, length=length)


def no_driver() -> CudaDriver:
    raise AssertionError("the CUDA driver was loaded")


# --- names and handles -------------------------------------------------------------------


def test_uuids_are_normalised_from_torch_and_nvidia_smi_forms() -> None:
    bare = "A1B2C3D4-0000-1111-2222-333344445555"
    want = "GPU-a1b2c3d4-0000-1111-2222-333344445555"
    assert normalise_uuid(bare) == want  # torch prints it without the prefix
    assert normalise_uuid(want.upper()) == want
    assert normalise_uuid(" gpu-" + bare.lower() + " ") == want
    assert device_uuid(want.upper()) == want  # a UUID needs no torch and no device
    with pytest.raises(InvalidCudaHandleError, match="not a GPU UUID"):
        normalise_uuid("GPU-1234")


def test_ipc_handles_decode_to_exactly_64_bytes() -> None:
    assert decode_ipc_handle(HANDLE) == bytes(range(64))
    with pytest.raises(InvalidCudaHandleError, match="base64"):
        decode_ipc_handle("not base64!")
    with pytest.raises(InvalidCudaHandleError, match="64 bytes, this one 63"):
        decode_ipc_handle(base64.b64encode(bytes(63)).decode())
    assert issubclass(InvalidCudaHandleError, SemcachedError)


# --- the lease rule, before any CUDA call ----------------------------------------------------


def test_an_expired_lease_is_refused_before_any_cuda_call() -> None:
    mapper = CudaMapper(driver=no_driver)
    with pytest.raises(LeaseExpiredError, match="plan again"):
        mapper.tensor(cuda_handle(), "float32", SHAPE, lease(-0.5))
    # The daemon's unix time is the authority: past expires_at is expired even where
    # the monotonic deadline computed on receipt has not passed yet.
    with pytest.raises(LeaseExpiredError):
        mapper.tensor(cuda_handle(), "float32", SHAPE, lease(5.0, wall_offset=-10.0))
    assert mapper.mappings == 0
    mapper.close()  # nothing opened: loads no driver


def test_a_handle_whose_length_is_not_the_shape_is_refused() -> None:
    mapper = CudaMapper(driver=no_driver)
    with pytest.raises(InvalidCudaHandleError, match="do not hold float16"):
        mapper.tensor(cuda_handle(length=NBYTES), "float16", SHAPE, lease(5.0))
    with pytest.raises(InvalidCudaHandleError, match="unknown KV dtype"):
        mapper.tensor(cuda_handle(), "int8", SHAPE, lease(5.0))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the answers without CUDA")
def test_a_gpu_this_process_cannot_see_is_a_clear_error() -> None:
    with pytest.raises(DeviceNotVisibleError, match=rf"{FOREIGN} is not visible.*sees: none"):
        local_index(FOREIGN)
    mapper = CudaMapper(driver=no_driver)
    with pytest.raises(CudaUnavailableError, match="not visible"):
        mapper.tensor(cuda_handle(), "float32", SHAPE, lease(5.0))
    with pytest.raises(TorchUnavailableError, match="no CUDA device"):
        device_uuid("cuda:0")
    with pytest.raises(ValueError, match="CUDA devices, not cpu"):
        device_uuid("cpu")


def test_without_torch_the_error_names_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch raises ImportError
    mapper = CudaMapper(driver=no_driver)
    with pytest.raises(TorchUnavailableError, match=r"semcached\[gpu\]"):
        mapper.tensor(cuda_handle(), "float32", SHAPE, lease(5.0))
    with pytest.raises(TorchUnavailableError, match="torch is not installed"):
        device_uuid("cuda:0")


# --- against a real daemon, GPU tier off ----------------------------------------------------


def write_config(tmp_path: Path) -> Path:
    config = tmp_path / "semcached.toml"
    config.write_text(
        f'[kv]\nshm_dir = "{tmp_path}"\nhost_bytes = 1048576\ndisk_bytes = 16777216\n'
        f'[kv_models."{TINY.name}"]\nlayers = {TINY.layers}\nkv_heads = {TINY.kv_heads}\n'
        f"head_dim = {TINY.head_dim}\n"
    )
    return config


@pytest.fixture
def kv_daemon(tmp_path: Path) -> Iterator[DaemonProcess]:
    daemon = DaemonProcess(tmp_path / "data", ["--config", str(write_config(tmp_path))])
    daemon.wait_ready()
    yield daemon
    daemon.terminate()


def key(i: int) -> bytes:
    return chunk_key(TINY.name, TINY.tokenizer, "float32", [i, 7, i])


def blob(i: int) -> np.ndarray:
    return np.random.default_rng(i).standard_normal(SHAPE).astype(np.float32)


@pytest.fixture
def client(kv_daemon: DaemonProcess, tmp_path: Path) -> Iterator[SemcachedClient]:
    with SemcachedClient(kv_daemon.wait_listening(), shm_dir=tmp_path) as c:
        for i in range(2):
            c.put_chunk(key(i), blob(i), put_meta(TINY.name, "float32", SHAPE))
        yield c


def test_a_device_plan_from_a_daemon_without_gpu_tier_is_a_clear_400(
    client: SemcachedClient,
) -> None:
    with pytest.raises(BadRequestError) as caught:
        client.plan(TINY.name, [key(0)], device=FOREIGN)
    assert caught.value.code == "gpu_tier_off"
    assert caught.value.field == "device"
    assert "GPU tier" in caught.value.message
    # Without a device nothing changed: shared-memory handles under a lease.
    plan = client.plan(TINY.name, [key(0), key(1)])
    assert plan.hits == 2
    assert all(c.fetch is not None and c.fetch.shm and c.fetch.cuda is None for c in plan.chunks)
    assert plan.lease is not None
    client.release_lease(plan.lease.id)


def test_fetch_tensor_reads_shared_memory_then_http(client: SemcachedClient) -> None:
    plan = client.plan(TINY.name, [key(0), key(1)])
    assert plan.lease is not None
    got = client.fetch_tensor(plan.chunks[0], plan.lease, device="cpu")
    assert got.transfer == "shm"
    assert not got.zero_copy
    assert got.tensor.dtype == torch.float32
    assert tuple(got.tensor.shape) == SHAPE
    np.testing.assert_array_equal(got.tensor.numpy(), blob(0))
    # A plan over HTTP only (no handles): the bytes come in the reply.
    bare = client.plan(TINY.name, [key(1)], transfer="http")
    assert bare.lease is None
    over_http = client.fetch_tensor(bare.chunks[0], device="cpu")
    assert over_http.transfer == "http"
    np.testing.assert_array_equal(over_http.tensor.numpy(), blob(1))
    client.release_lease(plan.lease.id)


def test_a_cuda_handle_for_an_unseen_gpu_falls_back_to_shm_then_http(
    client: SemcachedClient,
) -> None:
    plan = client.plan(TINY.name, [key(0)])
    assert plan.lease is not None
    planned = plan.chunks[0]
    assert planned.fetch is not None
    foreign = cuda_handle(length=planned.fetch.nbytes)
    # As a daemon on another host would hand it out: beside a shm handle, and alone.
    both = dataclasses.replace(planned, fetch=dataclasses.replace(planned.fetch, cuda=foreign))
    alone = dataclasses.replace(both, fetch=dataclasses.replace(both.fetch, shm=None))
    assert client.fetch_tensor(both, plan.lease, device="cpu").transfer == "shm"
    got = client.fetch_tensor(alone, plan.lease, device="cpu")
    assert got.transfer == "http"
    np.testing.assert_array_equal(got.tensor.numpy(), blob(0))
    client.release_lease(plan.lease.id)


def test_a_handle_under_an_expired_lease_is_a_client_error(client: SemcachedClient) -> None:
    plan = client.plan(TINY.name, [key(0)], lease_s=0.05)
    assert plan.lease is not None
    time.sleep(0.1)
    with pytest.raises(LeaseExpiredError, match=f"lease {plan.lease.id} ended"):
        client.fetch_tensor(plan.chunks[0], plan.lease, device="cpu")
    planned = plan.chunks[0]
    assert planned.fetch is not None
    with_cuda = dataclasses.replace(
        planned,
        fetch=dataclasses.replace(planned.fetch, cuda=cuda_handle(length=planned.fetch.nbytes)),
    )
    with pytest.raises(LeaseExpiredError):
        client.fetch_tensor(with_cuda, plan.lease, device="cpu")
    assert client.ready().ready  # the daemon did not mind


def test_a_miss_has_nothing_to_fetch(client: SemcachedClient) -> None:
    plan = client.plan(TINY.name, [key(9)], transfer="http")
    missed: PlannedChunk = plan.chunks[0]
    with pytest.raises(ValueError, match="miss"):
        client.fetch_tensor(missed, device="cpu")


async def test_the_async_client_fetches_tensors_too(
    kv_daemon: DaemonProcess, tmp_path: Path
) -> None:
    async with AsyncSemcachedClient(kv_daemon.wait_listening(), shm_dir=tmp_path) as client:
        await client.put_chunk(key(3), blob(3), put_meta(TINY.name, "float32", SHAPE))
        with pytest.raises(BadRequestError, match="gpu_tier_off"):
            await client.plan(TINY.name, [key(3)], device=FOREIGN)
        plan = await client.plan(TINY.name, [key(3)])
        got = await client.fetch_tensor(plan.chunks[0], plan.lease, device="cpu")
        assert got.transfer == "shm"
        np.testing.assert_array_equal(got.tensor.numpy(), blob(3))
        assert plan.lease is not None
        await client.release_lease(plan.lease.id)
