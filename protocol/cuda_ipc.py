"""The CUDA IPC hand-off: the driver calls that export a device allocation and open it.

The daemon's device tier hands a same-host engine a 64-byte CUDA IPC memory handle of
the slab holding a chunk, plus an offset and a length (``KvCudaHandle`` on the wire);
the engine opens the handle once per slab and reads the chunk in place, without a
copy. Both sides need only a handful of driver calls, made here through ctypes on
``libcuda.so.1`` (which every CUDA driver installs), so neither side depends on a
CUDA toolkit or on how the other allocates: a handle from torch's allocator opens in
a CuPy process and the reverse.

Every call runs with the device's primary context current (the one the CUDA runtime,
torch and CuPy use), pushed and popped around it, so it works from any thread.
Errors are :class:`CudaDriverError` with the driver's own name for the code.

The calls follow the CUDA driver API reference (``cuIpcGetMemHandle``,
``cuIpcOpenMemHandle_v2``, ``cuMemGetAddressRange_v2``...). A handle names the whole
allocation: the exporter sends the offset of the chunk from the allocation's base.
"""

from __future__ import annotations

import contextlib
import ctypes
import threading
from collections.abc import Iterator
from typing import Final

from semcached.errors import SemcachedError

__all__ = ["IPC_HANDLE_BYTES", "CudaDriver", "CudaDriverError"]

IPC_HANDLE_BYTES: Final[int] = 64
_LAZY_ENABLE_PEER_ACCESS: Final[int] = 1  # CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS
_NAME_BYTES: Final[int] = 256


class CudaDriverError(SemcachedError):
    """The CUDA driver is missing or refused a call."""


class _IpcHandle(ctypes.Structure):
    _fields_ = [("reserved", ctypes.c_char * IPC_HANDLE_BYTES)]


class _Uuid(ctypes.Structure):
    _fields_ = [("bytes", ctypes.c_ubyte * 16)]


class CudaDriver:
    """The driver calls of the hand-off. :meth:`load` once per process (cached)."""

    _loaded: CudaDriver | None = None
    _loading = threading.Lock()

    def __init__(self, lib: ctypes.CDLL) -> None:
        self._lib = lib
        self._contexts: dict[int, ctypes.c_void_p] = {}
        self._lock = threading.Lock()
        self._call("cuInit", ctypes.c_uint(0))

    @classmethod
    def load(cls) -> CudaDriver:
        """The process's driver; CudaDriverError when there is no CUDA driver."""
        with cls._loading:
            if cls._loaded is None:
                try:
                    lib = ctypes.CDLL("libcuda.so.1")
                except OSError as exc:
                    raise CudaDriverError(f"no CUDA driver (libcuda.so.1): {exc}") from None
                cls._loaded = cls(lib)
            return cls._loaded

    def _call(self, name: str, *args: object) -> None:
        result = getattr(self._lib, name)(*args)
        if result != 0:
            raise CudaDriverError(f"{name} failed: {self._error_name(result)}")

    def _error_name(self, code: int) -> str:
        text = ctypes.c_char_p()
        if self._lib.cuGetErrorName(code, ctypes.byref(text)) == 0 and text.value:
            return f"{text.value.decode()} ({code})"
        return f"CUDA error {code}"

    # -- devices -------------------------------------------------------------------------

    def device_count(self) -> int:
        count = ctypes.c_int()
        self._call("cuDeviceGetCount", ctypes.byref(count))
        return count.value

    def _device(self, ordinal: int) -> ctypes.c_int:
        device = ctypes.c_int()
        self._call("cuDeviceGet", ctypes.byref(device), ctypes.c_int(ordinal))
        return device

    def uuid(self, ordinal: int) -> str:
        """The GPU's UUID as nvidia-smi prints it (``GPU-xxxxxxxx-xxxx-...``)."""
        raw = _Uuid()
        self._call("cuDeviceGetUuid_v2", ctypes.byref(raw), self._device(ordinal))
        h = bytes(raw.bytes).hex()
        return f"GPU-{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"

    def name(self, ordinal: int) -> str:
        buffer = ctypes.create_string_buffer(_NAME_BYTES)
        self._call("cuDeviceGetName", buffer, ctypes.c_int(_NAME_BYTES), self._device(ordinal))
        return buffer.value.decode(errors="replace")

    def total_bytes(self, ordinal: int) -> int:
        total = ctypes.c_size_t()
        self._call("cuDeviceTotalMem_v2", ctypes.byref(total), self._device(ordinal))
        return total.value

    @contextlib.contextmanager
    def context(self, ordinal: int) -> Iterator[None]:
        """The device's primary context, current on this thread for the block."""
        with self._lock:
            ctx = self._contexts.get(ordinal)
            if ctx is None:
                ctx = ctypes.c_void_p()
                self._call("cuDevicePrimaryCtxRetain", ctypes.byref(ctx), self._device(ordinal))
                self._contexts[ordinal] = ctx
        self._call("cuCtxPushCurrent_v2", ctx)
        try:
            yield
        finally:
            popped = ctypes.c_void_p()
            self._call("cuCtxPopCurrent_v2", ctypes.byref(popped))

    # -- the hand-off ----------------------------------------------------------------------

    def export(self, ordinal: int, pointer: int) -> tuple[bytes, int]:
        """The IPC handle of the allocation holding ``pointer`` and the pointer's offset
        from that allocation's base."""
        with self.context(ordinal):
            base, size = ctypes.c_uint64(), ctypes.c_size_t()
            self._call(
                "cuMemGetAddressRange_v2",
                ctypes.byref(base),
                ctypes.byref(size),
                ctypes.c_uint64(pointer),
            )
            handle = _IpcHandle()
            self._call("cuIpcGetMemHandle", ctypes.byref(handle), base)
        return bytes(handle.reserved), pointer - base.value

    def open(self, ordinal: int, handle: bytes) -> int:
        """Map another process's allocation on device ``ordinal``; its base pointer.

        Opening the same handle twice in one process fails in the driver: callers
        cache the mapping per handle and :meth:`close` it once.
        """
        if len(handle) != IPC_HANDLE_BYTES:
            raise CudaDriverError(
                f"a CUDA IPC handle has {IPC_HANDLE_BYTES} bytes, got {len(handle)}"
            )
        raw = _IpcHandle()
        ctypes.memmove(raw.reserved, handle, IPC_HANDLE_BYTES)
        pointer = ctypes.c_uint64()
        with self.context(ordinal):
            self._call(
                "cuIpcOpenMemHandle_v2",
                ctypes.byref(pointer),
                raw,
                ctypes.c_uint(_LAZY_ENABLE_PEER_ACCESS),
            )
        return pointer.value

    def close(self, ordinal: int, pointer: int) -> None:
        """Unmap what :meth:`open` mapped."""
        with self.context(ordinal):
            self._call("cuIpcCloseMemHandle", ctypes.c_uint64(pointer))
