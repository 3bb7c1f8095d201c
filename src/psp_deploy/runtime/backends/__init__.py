"""Runtime backends, chosen by name and imported lazily: a missing one costs nothing until used.
``REGISTRY`` (registry.py) is the one table of them."""

from __future__ import annotations

from .base import Backend, check_feeds
from .options import BackendOptions
from .registry import DEVICES, PRECISIONS, REGISTRY, BackendSpec, check_device, check_precision, spec


def backend_class(name: str) -> type[Backend]:
    """The class of the named backend, its module imported now; refused, saying why, when the name is
    unknown or its library is missing."""
    return spec(name).backend_class()


def resolve_backend(name: str, device: str = "cpu", precision: str = "fp32") -> str:
    """``auto`` → OpenVINO on CPU when it is installed and runs ``precision``, else ONNX Runtime;
    other names unchanged (a backend refuses a device it does not run on itself, when it loads).

    Chosen by measurement (benchmarks/results/amd-epyc.md): at FP32, OpenVINO ran the FFHQ-encode 1024
    pipeline faster than ONNX Runtime on the CPUs measured. Only the backend is chosen, never the precision.
    """
    if name != "auto":
        return name
    openvino = REGISTRY["openvino"]
    if device in openvino.devices and openvino.installed and precision in openvino.precisions:
        return openvino.name
    return "onnxruntime"


__all__ = [
    "DEVICES",
    "PRECISIONS",
    "REGISTRY",
    "Backend",
    "BackendOptions",
    "BackendSpec",
    "backend_class",
    "check_device",
    "check_feeds",
    "check_precision",
    "resolve_backend",
    "spec",
]
