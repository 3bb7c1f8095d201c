"""TensorRT backend: a deserialized plan recorded in the manifest, run with execute_async_v3.

The plan must match this machine: TensorRT version and GPU as recorded when it was
built (plans are not portable). Buffers come from CudaMemory (pinned host, device,
one stream); an optional CUDA graph is captured per input shape and replayed.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np

from ...bundle import Bundle, EngineRecord, ModelRecord
from ...errors import BackendUnavailableError, BundleError, EngineError
from .base import Backend, graph_precision
from .cuda_memory import CudaMemory, check, device_properties


def import_tensorrt() -> Any:
    try:
        import tensorrt
    except ImportError as err:
        raise BackendUnavailableError(
            "TensorRT is not installed here (pip install 'psp-deploy[trt]' on a machine with an NVIDIA GPU "
            "and driver); use --backend onnxruntime or openvino instead"
        ) from err
    return tensorrt


def find_engine(bundle: Bundle, backend: str, graph: str, precision: str) -> EngineRecord:
    for engine in bundle.manifest.engines:
        if (engine.backend, engine.graph, engine.precision) == (backend, graph, precision):
            return engine
    raise BundleError(
        f"{bundle.root}: no {backend} {precision} engine for the {graph} graph; build it with "
        f"`psp-deploy build {bundle.root} --backend {backend} --precision {precision}`"
    )


def check_engine_matches_machine(engine: EngineRecord, trt_version: str, device: dict[str, str]) -> None:
    """Refuse a plan built by another TensorRT or for another GPU (it would fail or misbehave)."""
    details = engine.details
    if details.get("tensorrt") != trt_version and not details.get("version_compatible"):
        raise EngineError(
            f"{engine.file} was built with TensorRT {details.get('tensorrt')}, this is {trt_version}; "
            "rebuild it with `psp-deploy build`"
        )
    if details.get("compute_capability") != device["compute_capability"] or details.get("gpu") != device["gpu"]:
        raise EngineError(
            f"{engine.file} was built for {details.get('gpu')} (sm {details.get('compute_capability')}), "
            f"this GPU is {device['gpu']} (sm {device['compute_capability']}); rebuild it here"
        )


class TensorRTBackend(Backend):
    """Calls are serialized by a lock: one execution context and one set of buffers."""

    name = "tensorrt"
    thread_safe = True

    @classmethod
    def from_bundle(cls, bundle: Bundle, graph: str, precision: str, **options: Any) -> TensorRTBackend:
        trt = import_tensorrt()
        precision = graph_precision(bundle, graph, precision)
        engine = find_engine(bundle, "tensorrt", graph, precision)
        check_engine_matches_machine(engine, trt.__version__, device_properties())
        path = bundle.verified_path(engine.file, engine.sha256)
        backend = cls(path, bundle.record(graph, "fp32"), graph, **options)
        backend.precision = precision
        return backend

    def __init__(self, path: Path, record: ModelRecord, graph: str, *, cuda_graph: bool = False) -> None:
        super().__init__(path, record, graph)
        trt = import_tensorrt()
        self.trt, self.use_cuda_graph = trt, cuda_graph
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.engine = trt.Runtime(self.logger).deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise EngineError(f"{path}: TensorRT could not deserialize the plan (corrupt, or another TensorRT)")
        self.context = self.engine.create_execution_context()
        self.memory = CudaMemory()
        self.lock = threading.Lock()
        self.graphs: dict[tuple, Any] = {}  # input shapes → instantiated CUDA graph
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        mode = trt.TensorIOMode.INPUT
        self.input_names = [n for n in names if self.engine.get_tensor_mode(n) == mode]
        self.output_names = [n for n in names if self.engine.get_tensor_mode(n) != mode]
        self._check_io({"inputs": self.input_names, "outputs": self.output_names}, "inputs")
        self._check_io({"inputs": self.input_names, "outputs": self.output_names}, "outputs")

    def _bind(self, feeds: dict[str, np.ndarray]) -> tuple[list, bool]:
        """Set shapes and addresses; True when a buffer moved (any captured graph is then stale)."""
        moved = False
        for name, value in feeds.items():
            if not self.context.set_input_shape(name, value.shape):
                raise EngineError(
                    f"{self.graph}: input '{name}' shape {list(value.shape)} is outside the engine's profile"
                )
            before = self.memory.buffers.get(name)
            buf = self.memory.upload(name, value)
            moved |= before is None or before.device != buf.device
            self.context.set_tensor_address(name, buf.device)
        outputs = []
        for name in self.output_names:
            shape = tuple(self.context.get_tensor_shape(name))
            dtype = np.dtype(self.trt.nptype(self.engine.get_tensor_dtype(name)))
            before = self.memory.buffers.get(name)
            buf = self.memory.buffer(name, shape, dtype)
            moved |= before is None or before.device != buf.device
            self.context.set_tensor_address(name, buf.device)
            outputs.append((name, buf))
        return outputs, moved

    def _execute(self, shapes: tuple) -> None:
        stream = self.memory.stream
        if not self.use_cuda_graph:
            if not self.context.execute_async_v3(stream):
                raise EngineError(f"{self.graph}: TensorRT execution failed")
            return
        rt = self.memory.rt
        if shapes not in self.graphs:
            self.context.execute_async_v3(stream)  # first run does TensorRT's deferred set-up
            check(rt.cudaStreamBeginCapture(stream, rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal))
            self.context.execute_async_v3(stream)
            graph = check(rt.cudaStreamEndCapture(stream))
            self.graphs[shapes] = check(rt.cudaGraphInstantiate(graph, 0))
        check(rt.cudaGraphLaunch(self.graphs[shapes], stream))

    def _infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with self.lock:
            outputs, moved = self._bind(feeds)
            if moved:
                self.graphs.clear()
            self._execute(tuple(v.shape for v in feeds.values()))
            for _, buf in outputs:
                self.memory.enqueue_download(buf)
            self.memory.synchronize()
            return {name: buf.host.copy() for name, buf in outputs}

    def close(self) -> None:
        with self.lock:
            for graph_exec in self.graphs.values():
                check(self.memory.rt.cudaGraphExecDestroy(graph_exec))
            self.graphs.clear()
            self.memory.close()
