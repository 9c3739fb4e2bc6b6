"""Zero-copy KV on the GPU: the daemon's CUDA IPC handles opened as torch tensors.

The daemon keeps hot chunks in slabs of GPU memory and, for a client on the same
host that names a GPU (``plan(..., device=...)``), answers with a
:class:`~semcached.protocol.kv.KvCudaHandle`: the GPU's UUID, the 64-byte CUDA IPC
handle of the slab (base64) and the chunk's offset and length in it.
:class:`CudaMapper` opens each distinct handle once per process
(:meth:`~semcached.protocol.cuda_ipc.CudaDriver.open`: the driver refuses a second
open of one handle in a process, so the mappings are shared by every mapper of the
process and counted), and wraps ``base + offset`` as a torch tensor through
``__cuda_array_interface__``: no copy, the tensor's memory *is* the daemon's.

The rules that come with that:

- a tensor is valid while the lease that handed out its handle lasts; after
  ``lease.expires_at`` (or a release) the daemon may put another chunk there, and
  after :meth:`CudaMapper.close` (the client's ``close``) the memory is unmapped, so
  reading such a tensor reads garbage or faults. Copy (``tensor.clone()``) what must
  outlive the lease. A handle is only opened while its lease is live:
  :class:`~semcached.clients.kv.LeaseExpiredError` otherwise, before any CUDA call;
- the tensor must be treated as read-only (torch has no read-only tensors): the
  daemon and other clients read the same bytes;
- the GPU is found by UUID among the GPUs this process sees (indexes differ between
  processes with ``CUDA_VISIBLE_DEVICES``); one it cannot see raises
  :class:`DeviceNotVisibleError`, and the fetch flows then read over HTTP.

torch is imported on first use only (a client without it never needs it);
without it :class:`TorchUnavailableError` says what to install. Only
:mod:`semcached.protocol` and :mod:`semcached.errors` are imported of semcached.
"""

from __future__ import annotations

import base64
import binascii
import math
import threading
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from semcached.clients.kv import ChunkMeta, LeaseInfo, check_lease
from semcached.errors import SemcachedError
from semcached.protocol.cuda_ipc import IPC_HANDLE_BYTES, CudaDriver, CudaDriverError
from semcached.protocol.kv import KvCudaHandle

if TYPE_CHECKING:
    import torch

__all__ = [
    "TORCH_HINT",
    "CudaError",
    "CudaMapper",
    "CudaUnavailableError",
    "DeviceNotVisibleError",
    "InvalidCudaHandleError",
    "KvTensor",
    "TorchUnavailableError",
    "decode_ipc_handle",
    "device_uuid",
    "host_tensor",
    "local_index",
    "normalise_uuid",
    "torch_device",
]

TORCH_HINT = (
    "install a CUDA build of torch (the `gpu` extra: pip install 'semcached[gpu]'; "
    "or the `kv` extra's adapter with torch installed)"
)

_ITEMSIZE = {"float16": 2, "bfloat16": 2, "float32": 4}
_UUID_PREFIXES = ("gpu-", "mig-")


class CudaError(SemcachedError):
    """The client's GPU path failed."""


class TorchUnavailableError(CudaError):
    """torch is not installed, or this build of torch has no CUDA."""


class CudaUnavailableError(CudaError):
    """A handle cannot be opened in this process (its GPU is not here, no CUDA driver,
    the driver refused the open): read the chunk over HTTP instead."""


class DeviceNotVisibleError(CudaUnavailableError):
    """The handle's GPU is not among the GPUs this process sees."""


class InvalidCudaHandleError(CudaError, ValueError):
    """A malformed handle: bad base64, not 64 bytes, a length that is not the shape's."""


@dataclass(slots=True, eq=False)
class KvTensor:
    """One variant's KV as a torch tensor ``[layers, 2, kv_heads, tokens, head_dim]``.

    ``transfer`` says how it came: ``cuda`` (the daemon's GPU memory itself, valid
    while ``lease`` lasts and the client is open), ``cuda-copy`` (from the daemon's
    memory on another GPU, copied device to device), ``shm`` (copied from shared memory
    to the device; with a CPU target a view of it, valid while ``lease`` lasts) or
    ``http`` (copied from the reply). Treat it as read-only."""

    meta: ChunkMeta
    tensor: torch.Tensor
    transfer: Literal["cuda", "cuda-copy", "shm", "http"]
    lease: LeaseInfo | None = None

    @property
    def zero_copy(self) -> bool:
        return self.transfer == "cuda"


# --- torch and devices --------------------------------------------------------------------


def _torch() -> Any:
    try:
        import torch
    except ImportError:
        raise TorchUnavailableError(f"torch is not installed: {TORCH_HINT}") from None
    return torch


def _torch_dtype(torch: Any, dtype: str) -> Any:
    if dtype not in _ITEMSIZE:
        raise InvalidCudaHandleError(f"unknown KV dtype {dtype!r}")
    return getattr(torch, dtype)


def normalise_uuid(uuid: str) -> str:
    """A GPU UUID as nvidia-smi and the daemon print it (``GPU-xxxxxxxx-...``, lower
    case) from that form or torch's (``xxxxxxxx-...``, no prefix)."""
    text = uuid.strip().lower()
    for prefix in _UUID_PREFIXES:
        if text.startswith(prefix):
            text = text[len(prefix) :]
            break
    if len(text.replace("-", "")) != 32:
        raise InvalidCudaHandleError(f"not a GPU UUID: {uuid!r}")
    return "GPU-" + text


def _visible_uuids(torch: Any) -> list[str]:
    if not torch.cuda.is_available():
        return []
    return [
        normalise_uuid(str(torch.cuda.get_device_properties(i).uuid))
        for i in range(torch.cuda.device_count())
    ]


def local_index(uuid: str) -> int:
    """This process's torch CUDA index of the GPU ``uuid``; DeviceNotVisibleError when
    it sees no such GPU (another host, or hidden by ``CUDA_VISIBLE_DEVICES``)."""
    wanted = normalise_uuid(uuid)
    torch = _torch()
    visible = _visible_uuids(torch)
    if wanted in visible:
        return visible.index(wanted)
    seen = ", ".join(visible) if visible else "none"
    raise DeviceNotVisibleError(f"GPU {wanted} is not visible in this process (it sees: {seen})")


def torch_device(device: str | int | torch.device) -> torch.device:
    """``device`` as a torch device: ``GPU-<uuid>`` is looked up by UUID, an int is a
    local CUDA index, anything else goes to ``torch.device``."""
    torch = _torch()
    if isinstance(device, str) and device.strip().lower().startswith(_UUID_PREFIXES):
        return torch.device("cuda", local_index(device))  # type: ignore[no-any-return]
    if isinstance(device, int) and not isinstance(device, bool):
        return torch.device("cuda", device)  # type: ignore[no-any-return]
    return torch.device(device)  # type: ignore[no-any-return]


def device_uuid(device: str | int | torch.device) -> str:
    """The UUID (``GPU-...``) of a local CUDA device, as the daemon names GPUs: what
    ``plan(device=...)`` sends. A UUID is only normalised (no torch needed)."""
    if isinstance(device, str) and device.strip().lower().startswith(_UUID_PREFIXES):
        return normalise_uuid(device)
    torch = _torch()
    target = torch_device(device)
    if target.type != "cuda":
        raise ValueError(f"device handles are for CUDA devices, not {target}")
    if not torch.cuda.is_available():
        raise TorchUnavailableError(
            f"torch {torch.__version__} sees no CUDA device here: {TORCH_HINT}"
        )
    index = torch.cuda.current_device() if target.index is None else target.index
    if index >= torch.cuda.device_count():
        raise DeviceNotVisibleError(f"{target}: only {torch.cuda.device_count()} CUDA device(s)")
    return normalise_uuid(str(torch.cuda.get_device_properties(index).uuid))


def host_tensor(data: memoryview | bytes, dtype: str, shape: Sequence[int]) -> torch.Tensor:
    """A host tensor over ``data`` (no copy; torch cannot mark it read-only, so treat it so)."""
    torch = _torch()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*not writable.*")
        flat = torch.frombuffer(data, dtype=_torch_dtype(torch, dtype))
    return flat.view(tuple(shape))  # type: ignore[no-any-return]


def decode_ipc_handle(text: str) -> bytes:
    """The 64 raw bytes of a handle's base64 ``ipc_handle``; InvalidCudaHandleError else."""
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidCudaHandleError("ipc_handle is not valid base64") from None
    if len(raw) != IPC_HANDLE_BYTES:
        raise InvalidCudaHandleError(
            f"a CUDA IPC handle has {IPC_HANDLE_BYTES} bytes, this one {len(raw)}"
        )
    return raw


# --- the mappings ---------------------------------------------------------------------------


class _DeviceBytes:
    """``length`` bytes of device memory at ``pointer``, as ``__cuda_array_interface__``
    (v3) describes them to torch. Tensors made from it keep it alive."""

    __slots__ = ("_length", "_pointer")

    def __init__(self, pointer: int, length: int) -> None:
        self._pointer = pointer
        self._length = length

    @property
    def __cuda_array_interface__(self) -> dict[str, Any]:
        return {
            "shape": (self._length,),
            "typestr": "|u1",
            "data": (self._pointer, True),
            "strides": None,
            "version": 3,
        }


class _ProcessMappings:
    """The IPC mappings of this process, by (driver ordinal, handle), with a count of
    the mappers using each: the driver allows one open of a handle per process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: dict[tuple[int, bytes], tuple[int, int]] = {}  # -> (base, users)

    def acquire(self, driver: CudaDriver, ordinal: int, handle: bytes) -> int:
        with self._lock:
            found = self._open.get((ordinal, handle))
            if found is not None:
                self._open[(ordinal, handle)] = (found[0], found[1] + 1)
                return found[0]
            try:
                base = driver.open(ordinal, handle)
            except CudaDriverError as exc:
                raise CudaUnavailableError(f"cannot open the CUDA IPC handle: {exc}") from None
            self._open[(ordinal, handle)] = (base, 1)
            return base

    def release(self, driver: CudaDriver, ordinal: int, handle: bytes) -> None:
        with self._lock:
            base, users = self._open[(ordinal, handle)]
            if users > 1:
                self._open[(ordinal, handle)] = (base, users - 1)
                return
            del self._open[(ordinal, handle)]
        driver.close(ordinal, base)


_MAPPINGS = _ProcessMappings()


class CudaMapper:
    """Opens the daemon's CUDA IPC handles as tensors; a client holds one (its
    ``close`` closes it). Thread-safe; one open per distinct handle, reused.

    ``driver`` loads the CUDA driver (the default: ``libcuda.so.1``); it is called on
    the first open, never before."""

    def __init__(self, driver: Callable[[], CudaDriver] = CudaDriver.load) -> None:
        self._load_driver = driver
        self._lock = threading.Lock()
        self._held: dict[tuple[int, bytes], int] = {}  # (ordinal, handle) -> base
        self._ordinals: dict[str, int] = {}  # normalised UUID -> driver ordinal

    @property
    def mappings(self) -> int:
        """How many handles this mapper holds open."""
        with self._lock:
            return len(self._held)

    def tensor(
        self,
        handle: KvCudaHandle,
        dtype: str,
        shape: Sequence[int],
        lease: LeaseInfo | None,
    ) -> torch.Tensor:
        """The chunk as a tensor ``shape`` of ``dtype`` on its GPU, in the daemon's memory
        (no copy). Checks, in this order and before any CUDA call: the lease
        (:class:`~semcached.clients.kv.LeaseExpiredError` once it has ended), the handle
        (:class:`InvalidCudaHandleError`), torch (:class:`TorchUnavailableError`), the
        GPU (:class:`DeviceNotVisibleError`); then opens the handle unless this
        process has it open (:class:`CudaUnavailableError` if the driver refuses)."""
        check_lease(lease)
        raw = decode_ipc_handle(handle.ipc_handle)
        itemsize = _ITEMSIZE.get(dtype)
        if itemsize is None:
            raise InvalidCudaHandleError(f"unknown KV dtype {dtype!r}")
        dims = tuple(int(n) for n in shape)
        if handle.offset < 0 or handle.length <= 0:
            raise InvalidCudaHandleError(f"bad range: offset {handle.offset}, {handle.length} B")
        if math.prod(dims) * itemsize != handle.length:
            raise InvalidCudaHandleError(
                f"{handle.length} bytes do not hold {dtype} {list(dims)} "
                f"({math.prod(dims) * itemsize} bytes)"
            )
        torch = _torch()
        index = local_index(handle.device)
        ordinal = self._ordinal(handle.device)
        base = self._open(ordinal, raw)
        pointer = base + handle.offset
        if pointer % itemsize:
            raise InvalidCudaHandleError(f"offset {handle.offset} is not {dtype}-aligned")
        with torch.cuda.device(index):
            flat = torch.as_tensor(_DeviceBytes(pointer, handle.length), device=f"cuda:{index}")
        return flat.view(_torch_dtype(torch, dtype)).view(dims)  # type: ignore[no-any-return]

    def _driver(self) -> CudaDriver:
        try:
            return self._load_driver()
        except CudaDriverError as exc:
            raise CudaUnavailableError(str(exc)) from None

    def _ordinal(self, uuid: str) -> int:
        """The driver's ordinal of the GPU (found by UUID, as torch's index was: the two
        agree unless ``CUDA_DEVICE_ORDER`` differs between them)."""
        wanted = normalise_uuid(uuid)
        with self._lock:
            found = self._ordinals.get(wanted)
        if found is not None:
            return found
        driver = self._driver()
        try:
            for ordinal in range(driver.device_count()):
                if normalise_uuid(driver.uuid(ordinal)) == wanted:
                    with self._lock:
                        self._ordinals[wanted] = ordinal
                    return ordinal
        except CudaDriverError as exc:
            raise CudaUnavailableError(str(exc)) from None
        raise DeviceNotVisibleError(f"GPU {wanted} is not visible to the CUDA driver here")

    def _open(self, ordinal: int, raw: bytes) -> int:
        with self._lock:
            base = self._held.get((ordinal, raw))
            if base is None:
                base = _MAPPINGS.acquire(self._driver(), ordinal, raw)
                self._held[(ordinal, raw)] = base
            return base

    def close(self) -> None:
        """Unmap every handle this mapper opened (each once no other mapper of the
        process uses it). Tensors made from them must not be used afterwards. The
        mapper stays usable."""
        with self._lock:
            held, self._held = self._held, {}
        if not held:
            return
        driver = self._driver()
        for ordinal, raw in held:
            _MAPPINGS.release(driver, ordinal, raw)
