"""The buffers the device-resident pipeline binds to ONNX Runtime sessions by address.

One OrtValue per role, allocated at its full capacity (the largest batch the pipeline runs) on
first use and never reallocated: nothing is allocated per call, and the addresses a captured CUDA
graph recorded stay valid. A call binds the first rows of a buffer, by pointer, with its own shape
(rows of a C-ordered tensor are contiguous from its start).

Host buffers are page-locked on CUDA, so copies to and from the GPU run at full bus speed with no
staging copy of the driver's: from ONNX Runtime's CUDA provider's host-accessible memory (an
OrtEpDevice's HOST_ACCESSIBLE allocator) where it offers one, else from the CUDA runtime through
cuda-python (onnxruntime-gpu 1.31.1 registers no EP device for its CUDA provider: seen on an H200).
Without either, and on CPU, they are plain host memory.
"""

from __future__ import annotations

import ctypes
import functools
import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

import numpy as np
import onnxruntime as ort
from numpy.typing import NDArray

from ..cuda_memory import page_locked_array, pages_lock
from . import CUDA_DEVICE_ID

DType: TypeAlias = np.dtype[Any] | type[np.generic]  # what a buffer holds: a dtype, or a scalar type (np.float32)


def pinned_memory(device_id: int = CUDA_DEVICE_ID) -> Any | None:
    """The OrtMemoryInfo of the CUDA provider's page-locked host memory on ``device_id``, or None where
    this ONNX Runtime offers none: releases before EP devices and OrtValues allocated from a memory
    info, or builds that do not register the CUDA provider as an EP device."""
    allocates = "memory_info" in inspect.signature(ort.OrtValue.ortvalue_from_shape_and_type).parameters
    if not (allocates and hasattr(ort, "get_ep_devices")):
        return None
    for ep in ort.get_ep_devices():
        if ep.ep_name == "CUDAExecutionProvider" and dict(ep.ep_options).get("device_id", "0") == str(device_id):
            return ep.memory_info(ort.OrtDeviceMemoryType.HOST_ACCESSIBLE)
    return None


def _allocates(memory: Any | None) -> Any | None:
    """``memory`` if ONNX Runtime allocates from it here, else None: the API can exist while the CUDA
    provider registers no shared allocator for its host memory (then pageable host memory is used)."""
    if memory is None:
        return None
    try:
        ort.OrtValue.ortvalue_from_shape_and_type((1,), np.uint8, memory_info=memory)
    except Exception:  # noqa: BLE001 - ONNX Runtime's error types are not one hierarchy; any failure means "no"
        return None
    return memory


@dataclass
class Buffer:
    value: ort.OrtValue
    where: str  # what ONNX Runtime is told the memory is: "cuda" (device) or "cpu" (host, page-locked or not)
    dtype: np.dtype[Any]
    capacity: tuple[int, ...]

    def shape(self, rows: int) -> tuple[int, ...]:
        return (rows, *self.capacity[1:])

    def bind_input(self, binding: ort.IOBinding, name: str, rows: int) -> None:
        binding.bind_input(name, self.where, CUDA_DEVICE_ID, self.dtype, self.shape(rows), self.value.data_ptr())

    def bind_output(self, binding: ort.IOBinding, name: str, rows: int) -> None:
        binding.bind_output(name, self.where, CUDA_DEVICE_ID, self.dtype, self.shape(rows), self.value.data_ptr())

    def view(self) -> NDArray[Any]:
        """The whole buffer as a writable numpy array over its memory (host buffers only)."""
        if self.where != "cpu":
            raise ValueError("only host buffers can be viewed from Python")
        return self._host

    @functools.cached_property
    def _host(self) -> NDArray[Any]:
        nbytes = int(np.prod(self.capacity)) * self.dtype.itemsize
        raw = (ctypes.c_uint8 * nbytes).from_address(self.value.data_ptr())
        return np.frombuffer(memoryview(raw), np.uint8).view(self.dtype).reshape(self.capacity)

    @functools.cached_property
    def _staging(self) -> NDArray[Any]:
        """The buffer's image in Python's memory, allocated once: an upload copies a whole buffer."""
        return np.zeros(self.capacity, self.dtype)

    def fill(self, x: NDArray[Any]) -> None:
        """Copy ``x`` into the first rows through ONNX Runtime (one copy of the whole buffer, on the device
        or not: one code path); rows past ``x`` hold earlier rows, which no run binds."""
        self._staging[: len(x)] = x
        self.value.update_inplace(self._staging)

    def rows(self, rows: int) -> NDArray[Any]:
        """A copy of the first rows (device buffers: one download of the whole buffer, already a copy)."""
        return self.view()[:rows].copy() if self.where == "cpu" else self.value.numpy()[:rows]


class Buffers:
    """The buffers of one pipeline, by role; ``pinned`` says whether its host buffers are page-locked."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.host_memory = _allocates(pinned_memory()) if device == "cuda" else None
        self.runtime_pinned = device == "cuda" and self.host_memory is None and pages_lock()
        self.pinned = self.host_memory is not None or self.runtime_pinned
        self._buffers: dict[str, Buffer] = {}

    def on_device(self, role: str, capacity: Sequence[int], dtype: DType) -> Buffer:
        return self._get(role, capacity, dtype, on_host=False)

    def on_host(self, role: str, capacity: Sequence[int], dtype: DType) -> Buffer:
        return self._get(role, capacity, dtype, on_host=True)

    def _get(self, role: str, capacity: Sequence[int], dtype: DType, on_host: bool) -> Buffer:
        shape = tuple(int(d) for d in capacity)
        known = self._buffers.get(role)
        if known is not None and (known.capacity, known.dtype) != (shape, np.dtype(dtype)):
            raise ValueError(f"buffer {role!r} is {known.dtype} {known.capacity}, asked for {np.dtype(dtype)} {shape}")
        if role not in self._buffers:
            where = "cpu" if on_host else self.device
            if on_host and self.host_memory is not None:
                value = ort.OrtValue.ortvalue_from_shape_and_type(shape, dtype, memory_info=self.host_memory)
            elif on_host and self.runtime_pinned:  # the OrtValue wraps the array, and keeps it alive
                value = ort.OrtValue.ortvalue_from_numpy(page_locked_array(shape, dtype))
            else:
                value = ort.OrtValue.ortvalue_from_shape_and_type(shape, dtype, where, CUDA_DEVICE_ID)
            self._buffers[role] = Buffer(value, where, np.dtype(dtype), shape)
        return self._buffers[role]
