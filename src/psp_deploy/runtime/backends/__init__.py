"""Runtime backends, chosen by name and imported lazily: a missing one costs nothing until used."""

from __future__ import annotations

import importlib
import importlib.util

from ...errors import BackendUnavailableError
from .base import PRECISIONS, Backend, check_feeds, check_precision
from .options import BackendOptions

BACKENDS = {
    "onnxruntime": ("psp_deploy.runtime.backends.onnxruntime", "OnnxRuntimeBackend"),
    "tensorrt": ("psp_deploy.runtime.backends.tensorrt", "TensorRTBackend"),
    "openvino": ("psp_deploy.runtime.backends.openvino", "OpenVINOBackend"),
}


def backend_class(name: str) -> type[Backend]:
    if name not in BACKENDS:
        raise BackendUnavailableError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    module_name, class_name = BACKENDS[name]
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise BackendUnavailableError(f"the {name} backend is not available here: {err}") from err
    return getattr(module, class_name)


def resolve_backend(name: str, device: str = "cpu", precision: str = "fp32") -> str:
    """``auto`` → OpenVINO on CPU when it is installed and runs ``precision``, else ONNX Runtime;
    other names unchanged (OpenVINO refuses a GPU device itself, when it loads).

    Chosen by measurement (benchmarks/results): at FP32, OpenVINO ran the FFHQ-encode 1024 pipeline
    faster than ONNX Runtime on the CPUs measured. Only the backend is chosen, never the precision.
    """
    if name != "auto":
        return name
    openvino = device == "cpu" and importlib.util.find_spec("openvino") is not None
    return "openvino" if openvino and precision in PRECISIONS["openvino"] else "onnxruntime"


__all__ = [
    "BACKENDS",
    "PRECISIONS",
    "Backend",
    "BackendOptions",
    "backend_class",
    "check_feeds",
    "check_precision",
    "resolve_backend",
]
