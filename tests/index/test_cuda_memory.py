"""The CUDA side of the device tier: probing, torch slabs, IPC export opened in another
process. Marked ``gpu``: skipped with a reason where no CUDA device is present; the
probe's answers without CUDA are checked everywhere."""

from __future__ import annotations

import base64
import subprocess
import sys

import pytest

from semcached.index.cuda_memory import TorchCudaMemory, probe_devices
from semcached.index.device_arena import DeviceArena
from semcached.protocol.cuda_ipc import CudaDriver, CudaDriverError


def cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


needs_cuda = pytest.mark.skipif(
    not cuda_available(), reason="needs a CUDA device (torch.cuda.is_available() is False)"
)


def test_the_probe_says_why_the_tier_is_off_or_names_devices() -> None:
    probe = probe_devices("auto")
    if cuda_available():
        assert probe.devices
        assert all(d.uuid.startswith("GPU-") for d in probe.devices)
    else:
        assert not probe.devices
        assert probe.reason


def test_the_probe_honours_none_and_expandable_segments(monkeypatch: pytest.MonkeyPatch) -> None:
    assert probe_devices("none").reason == "kv.gpu.devices is none"
    monkeypatch.setenv("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    probe = probe_devices("auto")
    assert not probe.devices
    assert "expandable_segments" in (probe.reason or "")


def test_without_a_driver_the_driver_error_is_clear() -> None:
    if cuda_available():
        pytest.skip("a CUDA driver is present")
    with pytest.raises(CudaDriverError, match=r"no CUDA driver|cuInit"):
        CudaDriver.load()


_OPEN_IN_CHILD = """
import base64, sys, torch
from semcached.protocol.cuda_ipc import CudaDriver
index, handle = int(sys.argv[1]), base64.b64decode(sys.argv[2])
offset, length = int(sys.argv[3]), int(sys.argv[4])
torch.cuda.init()
driver = CudaDriver.load()
base = driver.open(index, handle)
class View:
    __cuda_array_interface__ = {
        "shape": (length,), "typestr": "|u1", "data": (base + offset, True), "version": 3
    }
data = torch.as_tensor(View(), device=f"cuda:{index}").cpu().numpy().tobytes()
sys.stdout.write(data.hex())
driver.close(index, base)
"""


@pytest.mark.gpu
@needs_cuda
def test_a_torch_slab_round_trips_and_opens_in_another_process() -> None:
    (info, *_) = probe_devices("auto").devices
    arena = DeviceArena(TorchCudaMemory(info), 8 << 20, 4 << 20)
    try:
        arena.allocate(4096)
        offset = arena.allocate(1000)
        assert offset is not None
        data = bytes(range(250)) * 4
        arena.write(offset, data)
        assert arena.read(offset, len(data)) == data
        handle = arena.handle(offset, len(data))
        assert handle.device == info.uuid
        child = subprocess.run(
            [
                sys.executable,
                "-c",
                _OPEN_IN_CHILD,
                str(info.index),
                base64.b64encode(handle.ipc_handle).decode(),
                str(handle.offset),
                str(handle.length),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert child.returncode == 0, child.stderr
        assert bytes.fromhex(child.stdout) == data
    finally:
        arena.close()
