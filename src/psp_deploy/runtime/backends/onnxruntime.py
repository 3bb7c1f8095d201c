"""ONNX Runtime backend: CPU, or CUDA with I/O binding when onnxruntime-gpu is installed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from ...bundle import BATCH, ModelRecord
from ...errors import BackendUnavailableError, BundleError
from .base import Backend

DEVICES = ("cpu", "cuda")


def session_options(threads: int | None, optimized_path: Path | None = None) -> ort.SessionOptions:
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    if optimized_path is not None:
        options.optimized_model_filepath = str(optimized_path)
    return options


def providers_for(device: str) -> list[str]:
    if device not in DEVICES:
        raise BackendUnavailableError(f"onnxruntime device must be one of {DEVICES}, got {device!r}")
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        raise BackendUnavailableError(
            "onnxruntime has no CUDA provider here; install onnxruntime-gpu (pip install 'psp-deploy[gpu]') "
            "on a machine with an NVIDIA GPU, or use --device cpu"
        )
    return ["CUDAExecutionProvider", "CPUExecutionProvider"]


class OnnxRuntimeBackend(Backend):
    """``InferenceSession.run`` is thread-safe, and so is this backend."""

    name = "onnxruntime"
    thread_safe = True

    def __init__(self, path: Path, record: ModelRecord, graph: str, *, device: str = "cpu", threads: int | None = None):
        super().__init__(path, record, graph)
        self.device = device
        try:
            self.session = ort.InferenceSession(str(path), session_options(threads), providers=providers_for(device))
        except (ort.capi.onnxruntime_pybind11_state.Fail, ort.capi.onnxruntime_pybind11_state.InvalidGraph) as err:
            raise BundleError(f"{path}: ONNX Runtime cannot load it: {err}") from err
        actual = {
            "inputs": [i.name for i in self.session.get_inputs()],
            "outputs": [o.name for o in self.session.get_outputs()],
        }
        self._check_io(actual, "inputs")
        self._check_io(actual, "outputs")
        self._check_batch()

    def _check_batch(self) -> None:
        """A fixed batch in the manifest must be the file's batch (and a dynamic one dynamic)."""
        declared = self.record.inputs[0].shape[0]
        actual = self.session.get_inputs()[0].shape[0]
        if (declared == BATCH) != (not isinstance(actual, int)) or (declared != BATCH and declared != actual):
            raise BundleError(
                f"{self.path.name}: the model's batch dimension is {actual!r} but the manifest says {declared!r}"
            )

    def _infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        names = [o.name for o in self.outputs]
        if self.device == "cpu":
            return dict(zip(names, self.session.run(names, feeds), strict=True))
        binding = self.session.io_binding()
        for name, value in feeds.items():
            binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(value, "cuda", 0))
        for name in names:
            binding.bind_output(name, "cuda", 0)
        self.session.run_with_iobinding(binding)
        return dict(zip(names, binding.copy_outputs_to_cpu(), strict=True))
