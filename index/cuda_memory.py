"""GPU memory for the device tier: slabs from torch's CUDA allocator, shared by CUDA IPC.

Why torch: every engine that uses the transformers adapter has it already, and the
daemon installs it with its ``embed`` extra, so the device tier adds no dependency;
its caching allocator is the one pool the embedder (if placed on the GPU) and the
tier share in the daemon, and its copies handle pageable host memory and streams.
The tier asks it for a few large slabs (``kv.gpu.slab_bytes``), never per chunk.
What torch does not expose publicly, exporting an allocation through CUDA IPC, is two
driver calls (:class:`~semcached.protocol.cuda_ipc.CudaDriver`).

torch's expandable segments (``PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True``)
map memory through the virtual memory API, which legacy CUDA IPC handles cannot
export: :func:`probe_devices` turns the tier off with that reason.

:func:`probe_devices` reads the devices through the driver alone (no torch import,
so a daemon without a GPU starts as fast as before); torch is imported when the first
slab is allocated.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from typing import Any

from semcached.index.device_arena import DeviceInfo, DeviceMemoryError, IpcExport
from semcached.protocol.cuda_ipc import CudaDriver, CudaDriverError

__all__ = ["DeviceProbe", "TorchCudaMemory", "probe_devices"]


@dataclass(frozen=True, slots=True)
class DeviceProbe:
    """The GPUs the device tier may use, or why it is off (``devices`` empty)."""

    devices: tuple[DeviceInfo, ...]
    reason: str | None = None


def probe_devices(selection: str) -> DeviceProbe:
    """The devices named by ``kv.gpu.devices`` (``auto``, ``none`` or indexes).

    ValueError for a malformed selection or an index that is not a visible device
    (a configuration error: the daemon refuses to start).
    """
    wanted = selection.strip().lower()
    if wanted == "none":
        return DeviceProbe((), "kv.gpu.devices is none")
    indexes: list[int] | None = None
    if wanted != "auto":
        try:
            indexes = [int(part) for part in wanted.split(",") if part.strip()]
        except ValueError:
            raise ValueError(
                f"kv.gpu.devices must be auto, none or CUDA device indexes, not {selection!r}"
            ) from None
        if not indexes or min(indexes) < 0 or len(set(indexes)) != len(indexes):
            raise ValueError(f"kv.gpu.devices: bad device list {selection!r}")
    alloc_conf = os.environ.get("PYTORCH_CUDA_ALLOC_CONF", "") + os.environ.get(
        "PYTORCH_ALLOC_CONF", ""
    )
    if "expandable_segments:true" in alloc_conf.replace(" ", "").lower():
        return DeviceProbe(
            (),
            "torch's expandable_segments allocator cannot export CUDA IPC handles "
            "(unset it in PYTORCH_CUDA_ALLOC_CONF)",
        )
    try:
        driver = CudaDriver.load()
        count = driver.device_count()
    except CudaDriverError as exc:
        return DeviceProbe((), str(exc))
    if count == 0:
        return DeviceProbe((), "no CUDA device is visible")
    if indexes is None:
        indexes = list(range(count))
    missing = [i for i in indexes if i >= count]
    if missing:
        raise ValueError(
            f"kv.gpu.devices names device {missing[0]}, but {count} CUDA device(s) are visible"
        )
    try:
        import torch
    except ImportError:
        return DeviceProbe((), "torch is not installed (pip install 'semcached[embed]')")
    if not torch.cuda.is_available():
        return DeviceProbe(
            (), f"torch {torch.__version__} cannot use CUDA here (a CPU-only build?)"
        )
    devices = tuple(
        DeviceInfo(i, driver.uuid(i), driver.name(i), driver.total_bytes(i)) for i in indexes
    )
    return DeviceProbe(devices)


class TorchCudaMemory:
    """Slabs of one CUDA device from torch (see the module docstring)."""

    def __init__(self, info: DeviceInfo) -> None:
        self._info = info

    @property
    def info(self) -> DeviceInfo:
        return self._info

    def allocate_slab(self, nbytes: int) -> _TorchSlab:
        import torch

        try:
            tensor = torch.empty(nbytes, dtype=torch.uint8, device=f"cuda:{self._info.index}")
        except torch.cuda.OutOfMemoryError as exc:
            raise DeviceMemoryError(
                f"GPU {self._info.index} has no room for a {nbytes}-byte slab: {exc}"
            ) from None
        return _TorchSlab(tensor, self._info.index)


class _TorchSlab:
    def __init__(self, tensor: Any, ordinal: int) -> None:
        self._tensor = tensor
        self._ordinal = ordinal
        self._export: IpcExport | None = None

    @property
    def nbytes(self) -> int:
        return int(self._tensor.numel())

    def write(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        import torch

        source = memoryview(data).cast("B")
        with warnings.catch_warnings():
            # torch warns that a read-only buffer is not writable; it is only read here.
            warnings.simplefilter("ignore", UserWarning)
            host = torch.frombuffer(source, dtype=torch.uint8)
        target = self._tensor[offset : offset + len(source)]
        target.copy_(host)
        # Complete before the chunk is published: another process reads it through IPC
        # without synchronising with our stream.
        torch.cuda.synchronize(self._tensor.device)

    def read(self, offset: int, nbytes: int) -> bytes:
        import torch

        out = bytearray(nbytes)
        host = torch.frombuffer(out, dtype=torch.uint8)
        host.copy_(self._tensor[offset : offset + nbytes])
        return bytes(out)

    def export(self) -> IpcExport:
        if self._export is None:
            try:
                handle, offset = CudaDriver.load().export(self._ordinal, self._tensor.data_ptr())
            except CudaDriverError as exc:
                raise DeviceMemoryError(f"cannot export a slab through CUDA IPC: {exc}") from None
            self._export = IpcExport(handle, offset)
        return self._export

    def release(self) -> None:
        self._tensor = None
