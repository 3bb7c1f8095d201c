"""Page-locked host buffers, device buffers, one stream and async copies, with cuda-python only.

Kept apart from TensorRT so it can be tested on any machine with an NVIDIA GPU. Buffers
are allocated once per (name, size) and reused, so device addresses stay stable across
calls (which CUDA graphs rely on).
"""

from __future__ import annotations

import ctypes
import weakref
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
from numpy.typing import NDArray

from ...errors import BackendUnavailableError, EngineError

Scalar = TypeVar("Scalar", bound=np.generic)


def cudart() -> Any:
    """cuda-python's runtime API module (cuda.bindings.runtime; older releases: cuda.cudart)."""
    try:
        from cuda.bindings import runtime
    except ImportError:
        try:
            from cuda import cudart as runtime
        except ImportError as err:
            raise BackendUnavailableError("CUDA memory needs cuda-python: pip install 'psp-deploy[trt]'") from err
    return runtime


def check(result: tuple[Any, ...]) -> Any:
    """cuda-python returns (status, *values): raise on a bad status, else return the value(s)."""
    rt = cudart()
    status, values = result[0], result[1:]
    if status != rt.cudaError_t.cudaSuccess:
        _, name = rt.cudaGetErrorName(status)
        raise EngineError(f"CUDA call failed: {name.decode() if isinstance(name, bytes) else name}")
    return values[0] if len(values) == 1 else values


def device_properties(device: int = 0) -> dict[str, Any]:
    """GPU name and compute capability, as engine records store them."""
    rt = cudart()
    count = check(rt.cudaGetDeviceCount())
    if count < 1:
        raise BackendUnavailableError("no CUDA device is visible")
    props = check(rt.cudaGetDeviceProperties(device))
    name = props.name.decode(errors="replace") if isinstance(props.name, bytes) else str(props.name)
    return {"gpu": name.rstrip("\x00"), "compute_capability": f"{props.major}.{props.minor}"}


def pages_lock() -> bool:
    """Whether the CUDA runtime allocates page-locked host memory here: cuda-python installed is not
    enough (bindings newer than the driver fail at their first call)."""
    try:
        rt = cudart()
        check(rt.cudaFreeHost(check(rt.cudaMallocHost(1))))
    except (BackendUnavailableError, EngineError):
        return False
    return True


def page_locked_array(shape: tuple[int, ...], dtype: np.dtype[Scalar] | type[Scalar]) -> NDArray[Scalar]:
    """A numpy array over page-locked host memory, freed with its last view (for buffers another library
    binds by address, as ONNX Runtime's I/O binding does)."""
    rt, nbytes = cudart(), int(np.prod(shape)) * np.dtype(dtype).itemsize
    pointer = check(rt.cudaMallocHost(max(nbytes, 1)))
    raw = (ctypes.c_uint8 * max(nbytes, 1)).from_address(int(pointer))
    # raw is every view's base (under the memoryview, which numpy's stubs accept as a buffer), so it lives as
    # long as any of them; at exit the process's memory goes back anyway, and a pipeline still serving from
    # another thread must not lose its buffers first
    weakref.finalize(raw, rt.cudaFreeHost, pointer).atexit = False
    return np.frombuffer(memoryview(raw), np.uint8, count=nbytes).view(dtype).reshape(shape)


@dataclass
class PinnedBuffer:
    host: NDArray[Any]  # a numpy view over page-locked memory
    device: int  # device pointer
    nbytes: int


class CudaMemory:
    """Named host/device buffer pairs on one stream. Not thread-safe: one user at a time."""

    def __init__(self) -> None:
        self.rt = cudart()
        self.stream = check(self.rt.cudaStreamCreate())
        self.buffers: dict[str, PinnedBuffer] = {}

    def buffer(self, name: str, shape: tuple[int, ...], dtype: np.dtype[Any]) -> PinnedBuffer:
        """The buffer for ``name``, reallocated only when it must grow; host view shaped as asked."""
        dtype = np.dtype(dtype)
        nbytes = int(np.prod(shape)) * dtype.itemsize
        current = self.buffers.get(name)
        if current is None or current.nbytes < nbytes:
            if current is not None:
                self._free(current)
            current = self.buffers[name] = self._allocate(max(nbytes, 1))
        host = np.frombuffer(current.host, dtype=np.uint8, count=nbytes).view(dtype).reshape(shape)
        return PinnedBuffer(host, current.device, nbytes)

    def _allocate(self, nbytes: int) -> PinnedBuffer:
        host_ptr = check(self.rt.cudaMallocHost(nbytes))
        host = np.ctypeslib.as_array(ctypes.cast(host_ptr, ctypes.POINTER(ctypes.c_uint8)), (nbytes,))
        return PinnedBuffer(host, int(check(self.rt.cudaMalloc(nbytes))), nbytes)

    def _free(self, buf: PinnedBuffer) -> None:
        check(self.rt.cudaFree(buf.device))
        check(self.rt.cudaFreeHost(buf.host.ctypes.data))

    def upload(self, name: str, array: NDArray[Any]) -> PinnedBuffer:
        """Copy into the pinned buffer, then enqueue the host→device copy on the stream."""
        buf = self.buffer(name, array.shape, array.dtype)
        np.copyto(buf.host, array)
        kind = self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        check(self.rt.cudaMemcpyAsync(buf.device, buf.host.ctypes.data, buf.nbytes, kind, self.stream))
        return buf

    def enqueue_download(self, buf: PinnedBuffer) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        check(self.rt.cudaMemcpyAsync(buf.host.ctypes.data, buf.device, buf.nbytes, kind, self.stream))

    def synchronize(self) -> None:
        check(self.rt.cudaStreamSynchronize(self.stream))

    def close(self) -> None:
        for buf in self.buffers.values():
            self._free(buf)
        self.buffers.clear()
        if self.stream is not None:
            check(self.rt.cudaStreamDestroy(self.stream))
            self.stream = None
