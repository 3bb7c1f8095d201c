"""The one table of backends: what each is known to be before its library is imported.

The CLI's choices, `auto`, build, calibration and the benchmarks all derive from ``REGISTRY``; what a
backend does (load, build its engine, profile, chain its graphs) is its class's, found here by name.
A new backend is one module (or folder) under runtime/backends (outside runtime/ if it needs torch, as
inductor/ does: runtime/ stays torch-free) and one line below.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ...errors import BackendUnavailableError

if TYPE_CHECKING:
    from .base import Backend


@dataclass(frozen=True)
class BackendSpec:
    name: str
    module: str  # imported when the backend is first used
    class_name: str
    library: str  # the import whose presence means the backend is installed
    devices: tuple[str, ...]  # the first is where it runs unless told otherwise
    precisions: tuple[str, ...]  # what it really runs
    profiles: bool  # whether `bench --profile` can read its per-operator times
    calibrates: tuple[str, ...]  # the reduced precisions `calibrate --backend` measures on it
    # "module:function" that builds one graph's engine for `psp-deploy build` (engines/build.py calls it as
    # builder(bundle, resolved, target, options: BuildOptions) -> the engine record's details), and the suffix
    # of the file it writes; None: the backend builds nothing
    builder: str | None = None
    engine_suffix: str = ""
    # "module:function" that, on CUDA, measures each graph's run-time settings instead of building files:
    # tuner(bundle, resolved list, options: BuildOptions, say) -> the engine records
    tuner: str | None = None

    @property
    def installed(self) -> bool:
        return importlib.util.find_spec(self.library) is not None

    def backend_class(self) -> type[Backend]:
        try:
            module = importlib.import_module(self.module)
        except ImportError as err:
            raise BackendUnavailableError(f"the {self.name} backend is not available here: {err}") from err
        cls: type[Backend] = getattr(module, self.class_name)
        return cls


# OpenVINO's CPU plugin has no FP16 arithmetic on x86 (it would run the FP16 graphs' casts in f32 at no
# gain): its reduced precisions are bf16 and int8. TensorRT runs only on its GPU. Inductor runs only the packages
# build compiles from the bundle's checkpoint (engines/inductor.py), fp16 on CUDA only.
REGISTRY: dict[str, BackendSpec] = {
    spec.name: spec
    for spec in (
        BackendSpec(
            "onnxruntime",
            "psp_deploy.runtime.backends.onnxruntime",
            "OnnxRuntimeBackend",
            "onnxruntime",
            devices=("cpu", "cuda"),
            precisions=("fp32", "fp16", "int8"),
            profiles=True,
            calibrates=("fp16", "int8"),
            builder="psp_deploy.runtime.backends.onnxruntime:build_engine",
            tuner="psp_deploy.engines.ort_cuda:tune_engines",
            engine_suffix="onnx",
        ),
        BackendSpec(
            "openvino",
            "psp_deploy.runtime.backends.openvino",
            "OpenVINOBackend",
            "openvino",
            devices=("cpu",),
            precisions=("fp32", "bf16", "int8"),
            profiles=True,
            calibrates=("bf16", "int8"),
            builder="psp_deploy.runtime.backends.openvino:build_engine",
            engine_suffix="blob",
        ),
        BackendSpec(
            "tensorrt",
            "psp_deploy.runtime.backends.tensorrt",
            "TensorRTBackend",
            "tensorrt",
            devices=("cuda",),
            precisions=("fp32", "fp16", "int8"),
            profiles=False,
            calibrates=(),
            builder="psp_deploy.runtime.backends.tensorrt:build_engine",
            engine_suffix="plan",
        ),
        BackendSpec(
            "inductor",
            "psp_deploy.inductor.backend",
            "InductorBackend",
            "torch",
            devices=("cpu", "cuda"),
            precisions=("fp32", "bf16", "fp16"),
            profiles=False,
            calibrates=(),
            builder="psp_deploy.engines.inductor:build_package",
            engine_suffix="pt2",
        ),
    )
}
DEVICE_NAMES = {"cpu": "CPU", "cuda": "GPU (CUDA)"}
DEVICES = tuple(dict.fromkeys(device for spec in REGISTRY.values() for device in spec.devices))
PRECISIONS = tuple(dict.fromkeys(precision for spec in REGISTRY.values() for precision in spec.precisions))


def spec(name: str) -> BackendSpec:
    """The named backend's facts; an unknown name is refused, listing the known ones."""
    if name not in REGISTRY:
        raise BackendUnavailableError(f"unknown backend {name!r}; choose one of {', '.join(REGISTRY)}")
    return REGISTRY[name]


def check_precision(backend: str, precision: str) -> None:
    """Refuse a precision the backend does not run, listing what each backend runs."""
    if precision not in spec(backend).precisions:
        each = "; ".join(f"{s.name}: {', '.join(s.precisions)}" for s in REGISTRY.values())
        raise BackendUnavailableError(f"{backend} does not run {precision} (precisions per backend — {each})")


def check_device(backend: str, device: str) -> None:
    """Refuse a device the backend does not run on, naming the backends that do."""
    if device not in spec(backend).devices:
        where = " or ".join(DEVICE_NAMES[d] for d in spec(backend).devices)
        others = " or ".join(s.name for s in REGISTRY.values() if device in s.devices)
        raise BackendUnavailableError(f"{backend} runs on the {where}, not {device}: use --backend {others}")
