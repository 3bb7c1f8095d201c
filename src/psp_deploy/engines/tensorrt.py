"""TensorRT plan building with the TensorRT 10/11 Python API.

Networks are strongly typed: each tensor's precision comes from the ONNX graph (FP16
casts, INT8 Q/DQ), so a plan is built from the graph of the wanted precision and no
precision builder flag is set. Dynamic-batch graphs get one optimization profile.
The timing cache lives in the bundle and is reused across builds.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..bundle import BATCH, ModelRecord
from ..errors import EngineError
from ..runtime.backends.cuda_memory import device_properties
from ..runtime.backends.tensorrt import import_tensorrt


@dataclass(frozen=True)
class BatchProfile:
    minimum: int = 1
    optimum: int = 1
    maximum: int = 8

    def __post_init__(self) -> None:
        if not 1 <= self.minimum <= self.optimum <= self.maximum:
            raise EngineError(
                f"batch profile needs 1 ≤ min ≤ opt ≤ max, got {self.minimum}/{self.optimum}/{self.maximum}"
            )


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


def build_plan(
    onnx_path: Path,
    plan_path: Path,
    record: ModelRecord,
    *,
    batch: BatchProfile,
    timing_cache: Path,
    optimization_level: int = 3,
    version_compatible: bool = False,
    workspace_gb: float = 4.0,
) -> dict[str, Any]:
    """Build and write one plan; return the engine record's details."""
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
    plan_path.parent.mkdir(parents=True, exist_ok=True)
    plan_path.write_bytes(bytes(plan))
    timing_cache.write_bytes(bytes(config.get_timing_cache().serialize()))
    return {
        "tensorrt": trt.__version__,
        **device_properties(),
        "profiles": shapes,
        "optimization_level": optimization_level,
        "version_compatible": version_compatible,
        "source": onnx_path.name,
    }
