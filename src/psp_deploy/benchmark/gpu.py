"""The GPU a benchmark runs on and the CUDA stack under it, from whatever is installed.

nvidia-smi, ONNX Runtime's build information, torch and cuda-python each know part of it
(driver, the CUDA each was built with, compute capability); none is required, each adds
what it knows. ``cuda_problem`` says in words why ONNX Runtime cannot run on a GPU here.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import BackendUnavailableError, EngineError
from ..machine import nvidia_smi

NVIDIA_PROC = Path("/proc/driver/nvidia/gpus")  # one folder per GPU while the NVIDIA kernel driver is loaded
CUDA_EP = "CUDAExecutionProvider"


def torch_facts() -> dict[str, Any]:
    """torch's version, the CUDA and cuDNN it was built with, and the GPU it sees."""
    try:
        import torch
    except ImportError:
        return {}
    facts = {"version": torch.__version__, "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version()}
    if torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability(0)
        facts.update(device=torch.cuda.get_device_name(0), compute_capability=f"{major}.{minor}")
    return facts


def onnxruntime_facts() -> dict[str, Any]:
    """ONNX Runtime's version and package, the CUDA and cuDNN a GPU build was made with, its providers."""
    import onnxruntime as ort
    from onnxruntime.capi import build_and_package_info as build

    return {
        "version": ort.__version__,
        "package": build.package_name,
        "cuda": getattr(build, "cuda_version", None),  # only GPU packages carry these two
        "cudnn": getattr(build, "cudnn_version", None),
        "providers": ort.get_available_providers(),
    }


def _cuda_version(number: int) -> str:
    return f"{number // 1000}.{number % 1000 // 10}"  # CUDA encodes 12.4 as 12040


def cuda_python_facts() -> dict[str, Any]:
    """The CUDA runtime and driver versions as cuda-python (the TensorRT extra) reports them."""
    from ..runtime.backends.cuda_memory import check, cudart

    try:
        rt = cudart()
        return {
            "runtime": _cuda_version(check(rt.cudaRuntimeGetVersion())),
            "driver": _cuda_version(check(rt.cudaDriverGetVersion())),
        }
    except (BackendUnavailableError, EngineError):
        return {}


def gpu_info() -> dict[str, Any]:
    """Everything known about the GPU and its software: recorded beside every GPU figure."""
    facts = {**nvidia_smi(), "torch": torch_facts(), "cuda_python": cuda_python_facts()}
    facts["onnxruntime"] = onnxruntime_facts()
    facts.setdefault("name", facts["torch"].get("device", "unknown GPU"))
    return facts


def gpu_slug(name: str) -> str:
    """A file-name-safe name for a GPU, e.g. 'nvidia-h100-80gb-hbm3'."""
    return "-".join(re.findall(r"[a-z0-9]+", name.lower())) or "unknown-gpu"


def cuda_synchronizer() -> tuple[str, Callable[[], object]] | None:
    """A device-wide synchronise, from torch or cuda-python; either waits for ONNX Runtime's work too,
    since every CUDA runtime user in a process shares the device's primary context."""
    try:
        import torch

        if torch.cuda.is_available():
            return "torch.cuda.synchronize", torch.cuda.synchronize
    except ImportError:
        pass
    from ..runtime.backends.cuda_memory import check, cudart

    try:
        rt = cudart()
    except BackendUnavailableError:
        return None
    return "cudaDeviceSynchronize (cuda-python)", lambda: check(rt.cudaDeviceSynchronize())


def nvidia_gpu_present() -> bool:
    return bool(nvidia_smi()) or (NVIDIA_PROC.is_dir() and any(NVIDIA_PROC.iterdir()))


def _cuda_session_starts() -> bool:
    """A one-node graph opened as the runtime opens its sessions, on CUDA: onnxruntime-gpu without the CUDA
    libraries it was built for lists the provider, then falls back to the CPU when a session starts."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from ..runtime.backends import BackendOptions
    from ..runtime.backends.onnxruntime import open_session

    value = lambda name: helper.make_tensor_value_info(name, TensorProto.FLOAT, [1])  # noqa: E731
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "probe", [value("x")], [value("y")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)
    try:
        open_session(model.SerializeToString(), "probe", BackendOptions(device="cuda"))
    except (RuntimeError, ort.capi.onnxruntime_pybind11_state.Fail, BackendUnavailableError):
        return False
    return True


@functools.cache
def cuda_problem() -> str | None:
    """Why ONNX Runtime cannot run on an NVIDIA GPU here, or None when it can."""
    if not nvidia_gpu_present():
        return f"no NVIDIA GPU here (nvidia-smi lists none and {NVIDIA_PROC} is empty or absent)"
    from ..runtime.backends.onnxruntime import check_device

    try:
        check_device("cuda")
    except BackendUnavailableError as err:
        return str(err)
    if not _cuda_session_starts():
        return (
            f"onnxruntime-gpu lists {CUDA_EP} but it did not start: the CUDA and cuDNN libraries it was built for "
            "are missing or do not match the driver (ONNX Runtime's log above names what failed)"
        )
    return None
