"""Runtime backends, chosen by name and imported lazily: a missing one costs nothing until used."""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path
from typing import Any

from ...bundle import ModelRecord
from ...errors import BackendUnavailableError
from .base import Backend, check_feeds

BACKENDS = {
    "onnxruntime": ("psp_deploy.runtime.backends.onnxruntime", "OnnxRuntimeBackend"),
    "tensorrt": ("psp_deploy.runtime.backends.tensorrt", "TensorRTBackend"),
    "openvino": ("psp_deploy.runtime.backends.openvino", "OpenVINOBackend"),
}
# What each backend really runs. OpenVINO's CPU plugin has no FP16 arithmetic on x86 (it would
# run the FP16 graphs' casts in f32 at no gain): its reduced precisions are bf16 and int8.
PRECISIONS = {
    "onnxruntime": ("fp32", "fp16", "int8"),
    "openvino": ("fp32", "bf16", "int8"),
    "tensorrt": ("fp32", "fp16", "int8"),
}


def check_precision(backend: str, precision: str) -> None:
    """Refuse a precision the backend does not run, listing what each backend runs."""
    if precision not in PRECISIONS.get(backend, (precision,)):
        each = "; ".join(f"{name}: {', '.join(precisions)}" for name, precisions in PRECISIONS.items())
        raise BackendUnavailableError(f"{backend} does not run {precision} (precisions per backend — {each})")


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
    other names unchanged.

    Chosen by measurement (benchmarks/results): at FP32, OpenVINO ran the FFHQ-encode 1024 pipeline
    faster than ONNX Runtime on the CPUs measured. Only the backend is chosen, never the precision.
    """
    if name != "auto":
        return name
    openvino = device == "cpu" and importlib.util.find_spec("openvino") is not None
    return "openvino" if openvino and precision in PRECISIONS["openvino"] else "onnxruntime"


def open_backend(name: str, path: Path, record: ModelRecord, graph: str, **options: Any) -> Backend:
    return backend_class(name)(path, record, graph, **options)


__all__ = [
    "BACKENDS",
    "PRECISIONS",
    "Backend",
    "backend_class",
    "check_feeds",
    "check_precision",
    "open_backend",
    "resolve_backend",
]
