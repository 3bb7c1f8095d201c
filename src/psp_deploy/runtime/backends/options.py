"""One typed options object for every backend: the CLI and the server build it once; each
backend reads the fields it needs and ignores the rest."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ...errors import EngineError, InputError

CONV_ALGO_SEARCHES = ("EXHAUSTIVE", "HEURISTIC", "DEFAULT")  # cuDNN's, as ONNX Runtime names them


@dataclass(frozen=True)
class CudaConv:
    """How ONNX Runtime's CUDA provider runs one graph's convolutions; which is fastest is a
    per-graph, per-GPU measurement (ONNX Runtime's defaults until one is made)."""

    algo_search: str = "EXHAUSTIVE"  # cuDNN algorithm choice: timed (EXHAUSTIVE), its heuristic, or its default
    prefer_nhwc: bool = False  # run convolutions in NHWC (tensor-core friendly; costs layout transposes)

    def __post_init__(self) -> None:
        if self.algo_search not in CONV_ALGO_SEARCHES:
            raise InputError(
                f"cudnn algo_search must be one of {', '.join(CONV_ALGO_SEARCHES)}, got {self.algo_search!r}"
            )


@dataclass(frozen=True, kw_only=True)
class BackendOptions:
    """How every graph of a pipeline runs, passed once to ``Pipeline.from_bundle`` / ``Backend.from_bundle``:
    build it with keywords (``BackendOptions(device="cuda", threads=4)``). Each backend reads the fields that
    concern it; a mode that needs another device (TF32, CUDA graphs) is refused here."""

    device: str = "cpu"  # onnxruntime: cpu or cuda
    threads: int | None = None  # CPU threads per graph (None: the backend's default, all cores)
    engines: bool = True  # use the engines `psp-deploy build` made (onnxruntime, openvino); False: the ONNX graphs
    force_bf16: bool = False  # openvino: bf16 on a CPU without native BF16
    hint: str = "latency"  # openvino performance hint: latency or throughput
    cache_dir: Path | None = None  # openvino: compiled-model caches (None: the user cache folder)
    tf32: bool = False  # onnxruntime on cuda: FP32 convolutions and matmuls in TF32 (else IEEE FP32)
    # onnxruntime on cuda: replay CUDA graphs of the encoder and synthesis, one per batch bucket. Off unless
    # asked or measured faster (build --device cuda): capture costs a run per bucket and pads partial batches.
    cuda_graph: bool = False
    cuda_conv: Mapping[str, CudaConv] = field(default_factory=dict)  # per graph name; unnamed graphs: CudaConv()

    def __post_init__(self) -> None:
        for flag, on in (("tf32", self.tf32), ("cuda_graph", self.cuda_graph)):
            if on and self.device != "cuda":
                raise InputError(
                    f"{flag} is a mode of ONNX Runtime's CUDA provider: it needs --device cuda, not {self.device}"
                )


@dataclass(frozen=True)
class BatchProfile:
    """The batch sizes an engine is built for: the smallest, the one it is tuned for, the largest."""

    minimum: int = 1
    optimum: int = 1
    maximum: int = 8

    def __post_init__(self) -> None:
        if not 1 <= self.minimum <= self.optimum <= self.maximum:
            raise EngineError(
                f"batch profile needs 1 ≤ min ≤ opt ≤ max, got {self.minimum}/{self.optimum}/{self.maximum}"
            )


@dataclass(frozen=True, kw_only=True)
class BuildOptions:
    """What `psp-deploy build` asks of a backend's engine builder; each builder reads the fields it needs."""

    device: str = "cpu"  # onnxruntime: cpu (saved optimized models) or cuda (timed settings); inductor: cpu or cuda
    batch: BatchProfile = field(default_factory=BatchProfile)
    optimization_level: int = 3  # tensorrt builder optimization level
    version_compatible: bool = False  # tensorrt: plans that later TensorRT versions run
    tf32: bool = False  # FP32 layers may run as TF32 (tensorrt; onnxruntime --device cuda)
    force_bf16: bool = False  # openvino: bf16 on a CPU without native BF16
    checkpoint: Path | None = None  # inductor: the checkpoint the bundle was exported from (sha256-checked)
