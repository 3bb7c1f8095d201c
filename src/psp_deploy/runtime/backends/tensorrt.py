"""TensorRT backend: plans built (with the TensorRT 10/11 Python API) and run here.

Building: networks are strongly typed, so each tensor's precision comes from the ONNX graph
(FP16 casts, INT8 Q/DQ): a plan is built from the graph of the wanted precision and no
precision builder flag is set. Dynamic-batch graphs get one optimization profile; the
timing cache lives in the bundle and is reused across builds.

Running: a deserialized plan recorded in the manifest, run with execute_async_v3.

The plan must match this machine: TensorRT version and GPU as recorded when it was
built (plans are not portable). Buffers come from CudaMemory (pinned host, device,
one stream).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ...bundle import BATCH, Bundle, EngineRecord, GraphDeclaration, ModelRecord, Resolved
from ...errors import BackendUnavailableError, BundleError, EngineError
from ...files import atomic_file
from ...onnx_metadata import read_metadata
from .base import Backend
from .cuda_memory import CudaMemory, PinnedBuffer, device_properties
from .options import BackendOptions, BatchProfile, BuildOptions


def import_tensorrt() -> Any:
    try:
        import tensorrt
    except ImportError as err:
        raise BackendUnavailableError(
            "TensorRT is not installed here (pip install 'psp-deploy[trt]' on a machine with an NVIDIA GPU "
            "and driver); use --backend onnxruntime or openvino instead"
        ) from err
    return tensorrt


def plan_record(bundle: Bundle, resolved: Resolved) -> EngineRecord:
    """The plan `build` made for the resolved graph; a missing one says how to build it."""
    if resolved.engine is None:
        raise BundleError(
            f"{bundle.root}: no tensorrt {resolved.precision} engine for the {resolved.graph} graph; build it with "
            f"`psp-deploy build {bundle.root} --backend tensorrt --precision {resolved.precision}`"
        )
    return resolved.engine


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
    source: Path  # the ONNX graph the plan was built from (set by ``load``), read for its metadata
    built_tf32: bool = False  # whether the plan lets FP32 layers run TF32 (set by ``load`` from its record)

    @classmethod
    def load(cls, bundle: Bundle, resolved: Resolved, options: BackendOptions) -> TensorRTBackend:
        trt = import_tensorrt()
        engine = plan_record(bundle, resolved)
        check_engine_matches_machine(engine, trt.__version__, device_properties())
        backend = cls(bundle.verified_path(engine.file, engine.sha256), resolved.record, resolved.graph)
        backend.source = bundle.root / resolved.record.file
        backend.built_tf32 = bool(engine.details.get("tf32"))
        return backend

    @property
    def tf32(self) -> bool:
        """As the plan was built (build --tf32, recorded with it): TensorRT bakes the choice into the plan."""
        return self.built_tf32

    def declaration(self) -> GraphDeclaration:
        """The plan's I/O (dynamic dimensions are -1 in TensorRT); metadata from its source ONNX graph."""

        def dims(name: str) -> list[int | None]:
            return [d if d >= 0 else None for d in self.engine.get_tensor_shape(name)]

        inputs = [(n, dims(n)) for n in self.input_names]
        outputs = [(n, dims(n)) for n in self.output_names]
        return GraphDeclaration(self.path.name, inputs, outputs, read_metadata(self.source))

    def __init__(self, path: Path, record: ModelRecord, graph: str) -> None:
        super().__init__(path, record, graph)
        trt = import_tensorrt()
        self.trt = trt
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.engine = trt.Runtime(self.logger).deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise EngineError(f"{path}: TensorRT could not deserialize the plan (corrupt, or another TensorRT)")
        self.context = self.engine.create_execution_context()
        self.memory = CudaMemory()
        self.lock = threading.Lock()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        mode = trt.TensorIOMode.INPUT
        self.input_names = [n for n in names if self.engine.get_tensor_mode(n) == mode]
        self.output_names = [n for n in names if self.engine.get_tensor_mode(n) != mode]
        self._check_io(self.input_names, self.output_names)

    def _bind(self, feeds: dict[str, NDArray[Any]]) -> list[tuple[str, PinnedBuffer]]:
        """Set shapes and addresses; the (name, buffer) of each output."""
        for name, value in feeds.items():
            if not self.context.set_input_shape(name, value.shape):
                raise EngineError(
                    f"{self.graph}: input '{name}' shape {list(value.shape)} is outside the engine's profile"
                )
            buf = self.memory.upload(name, value)
            self.context.set_tensor_address(name, buf.device)
        outputs = []
        for name in self.output_names:
            shape = tuple(self.context.get_tensor_shape(name))
            dtype = np.dtype(self.trt.nptype(self.engine.get_tensor_dtype(name)))
            buf = self.memory.buffer(name, shape, dtype)
            self.context.set_tensor_address(name, buf.device)
            outputs.append((name, buf))
        return outputs

    def _infer(self, feeds: dict[str, NDArray[Any]]) -> dict[str, NDArray[Any]]:
        with self.lock:
            outputs = self._bind(feeds)
            if not self.context.execute_async_v3(self.memory.stream):
                raise EngineError(f"{self.graph}: TensorRT execution failed")
            for _, buf in outputs:
                self.memory.enqueue_download(buf)
            self.memory.synchronize()
            return {name: buf.host.copy() for name, buf in outputs}

    def close(self) -> None:
        with self.lock:
            self.memory.close()


def profile_shapes(record: ModelRecord, batch: BatchProfile) -> list[dict[str, Any]]:
    """min/opt/max shapes per input: the batch axis from ``batch`` when dynamic, fixed otherwise."""

    def dims(shape: tuple[int | str, ...], b: int) -> list[int]:
        return [b if d == BATCH else int(d) for d in shape]

    return [
        {
            "input": spec.name,
            "min": dims(spec.shape, batch.minimum),
            "opt": dims(spec.shape, batch.optimum),
            "max": dims(spec.shape, batch.maximum),
        }
        for spec in record.inputs
    ]


def build_engine(bundle: Bundle, resolved: Resolved, target: Path, options: BuildOptions) -> dict[str, Any]:
    """`psp-deploy build`'s builder (the registry names it): one plan, its timing cache shared beside it."""
    return build_plan(
        bundle.model_path(resolved.graph, resolved.record.precision),
        target,
        resolved.record,
        batch=options.batch,
        timing_cache=target.parent / "timing.cache",
        optimization_level=options.optimization_level,
        version_compatible=options.version_compatible,
        tf32=options.tf32,
    )


def build_plan(
    onnx_path: Path,
    plan_path: Path,
    record: ModelRecord,
    *,
    batch: BatchProfile,
    timing_cache: Path,
    optimization_level: int = 3,
    version_compatible: bool = False,
    tf32: bool = False,
    workspace_gb: float = 4.0,
) -> dict[str, Any]:
    """Build and write one plan; return the engine record's details.

    TensorRT lets FP32 layers run in TF32 unless told not to; ``fp32`` here means IEEE FP32
    unless ``tf32`` asks for it (the choice is baked into the plan and recorded with it)."""
    trt = import_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineError(f"TensorRT could not parse {onnx_path.name}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    config.builder_optimization_level = optimization_level
    if version_compatible:
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
    if tf32:
        config.set_flag(trt.BuilderFlag.TF32)
    else:
        config.clear_flag(trt.BuilderFlag.TF32)
    shapes = profile_shapes(record, batch)
    profile = builder.create_optimization_profile()
    for s in shapes:
        profile.set_shape(s["input"], s["min"], s["opt"], s["max"])
    config.add_optimization_profile(profile)
    cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.exists() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise EngineError(f"TensorRT failed to build a plan from {onnx_path.name} (see the log above)")
    with atomic_file(plan_path) as f:
        f.write(bytes(plan))
    with atomic_file(timing_cache) as f:
        f.write(bytes(config.get_timing_cache().serialize()))
    return {
        "tensorrt": trt.__version__,
        **device_properties(),
        "profiles": shapes,
        "optimization_level": optimization_level,
        "version_compatible": version_compatible,
        "tf32": tf32,
        "source": onnx_path.name,
    }
