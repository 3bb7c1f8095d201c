"""AOTInductor backend: the packages `psp-deploy build --backend inductor` compiles from the bundle's checkpoint
(engines/inductor.py), run with PyTorch's package loader on the CPU or on CUDA.

The only backend that needs torch, and it imports torch only when it is chosen: the module as a whole is
imported lazily by the registry. It runs packages only (there is no ONNX graph it could fall back to), each
refused where it was not made for: another torch, device, GPU or CPU instruction set, or another checkpoint.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from ..bundle import Bundle, EngineRecord, GraphDeclaration, ModelRecord, Resolved
from ..config import PspConfig
from ..errors import BackendUnavailableError, EngineError
from ..machine import cpu_info
from ..runtime.backends.base import Backend
from ..runtime.backends.options import BackendOptions
from ..runtime.backends.registry import check_device
from ..runtime.chunks import padded, plan

try:
    import torch
except ImportError as err:
    raise BackendUnavailableError(
        "the inductor backend runs PyTorch's AOTInductor packages and needs torch: "
        "pip install 'psp-deploy[inductor]' (or use --backend onnxruntime or openvino)"
    ) from err

if TYPE_CHECKING:
    from ..runtime.chain import Chain

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
CAPTURED = ("encoder", "synthesis")  # the graphs the resident chain runs at fixed shapes: CUDA graphs pay there
IO_METADATA = "psp_deploy.io"  # the package metadata key of its inputs' and outputs' names and shapes


def check_target(device: str, precision: str) -> None:
    """Refuse a device the backend does not run on or this machine lacks, and FP16 anywhere but CUDA (the
    CPU's FP16 arithmetic is emulated: slower than FP32)."""
    check_device("inductor", device)
    if precision == "fp16" and device != "cuda":
        raise BackendUnavailableError("inductor runs fp16 on CUDA only (--device cuda); on the CPU use bf16 or fp32")
    InductorBackend.check_available(device)


def package_key(device: str) -> dict[str, Any]:
    """What a package depends on: torch (its runtime ABI and generated code), the device, and the GPU (Triton
    kernels are compiled for one compute capability) or the CPU's instruction sets (kernels are vectorised
    for the building CPU's)."""
    key: dict[str, Any] = {"torch": torch.__version__, "device": device}
    if device == "cuda":
        major, minor = torch.cuda.get_device_capability()  # torch's current device, where packages build and load
        return {**key, "gpu": torch.cuda.get_device_name(), "compute_capability": f"{major}.{minor}"}
    return {**key, "cpu_flags": cpu_info()["flags"]}


def set_tf32(allowed: bool) -> None:
    """TF32 for cuDNN convolutions and cuBLAS matmuls. Process-wide in torch; packages call these libraries
    at run time, so FP32 is IEEE FP32 unless asked (torch's own default lets cuDNN use TF32)."""
    torch.backends.cudnn.allow_tf32 = allowed
    torch.backends.cuda.matmul.allow_tf32 = allowed


class InductorBackend(Backend):
    """One AOTInductor package. Several threads may call ``infer`` at once; the calls take turns: on the CPU in
    the loader's own model container, on CUDA under a lock (the package is loaded single-threaded there, as
    CUDA graph capture needs)."""

    name = "inductor"
    runs_graphs = False

    @classmethod
    def check_available(cls, device: str) -> None:
        if device == "cuda" and not torch.cuda.is_available():
            raise BackendUnavailableError(f"torch {torch.__version__} sees no CUDA device here; use --device cpu")

    @classmethod
    def build_note(cls, details: dict[str, Any]) -> str | None:
        where = f"the {details.get('gpu')}" if details.get("device") == "cuda" else "this CPU's instruction sets"
        return (
            f"the inductor packages are compiled code tied to torch {details.get('torch')}, to {where} and to the "
            "checkpoint: run, serve and bench use them only where all match and elsewhere refuse them, naming the "
            "difference (build again there)"
        )

    @classmethod
    def load(cls, bundle: Bundle, resolved: Resolved, options: BackendOptions) -> InductorBackend:
        """The package `build` made for this graph and precision, once it fits this machine and the bundle's
        checkpoint; without one, the command that builds it."""
        check_target(options.device, resolved.precision)
        if not options.engines:
            raise EngineError("the inductor backend runs only its packages: --no-engines leaves it nothing to run")
        here = {**package_key(options.device), "checkpoint_sha256": bundle.manifest.source.get("sha256")}
        path = cls.fitting_engine(bundle, resolved, here)
        if path is None or resolved.engine is None:
            raise EngineError(
                f"{bundle.root} has no inductor {resolved.precision} package of its {resolved.graph} graph, and the "
                f"inductor backend runs only packages: build them with `psp-deploy build {bundle.root} --backend "
                f"inductor --device {options.device} --precision {resolved.precision} --checkpoint CHECKPOINT` "
                "(the checkpoint the bundle was exported from)"
            )
        return cls(path, resolved.record, resolved.graph, resolved.engine, options)

    def __init__(
        self, path: Path, record: ModelRecord, graph: str, engine: EngineRecord, options: BackendOptions
    ) -> None:
        super().__init__(path, record, graph)
        self.precision = engine.precision
        self.options = options
        self.torch_device = torch.device(options.device)
        lowest, highest = engine.details["batch"]
        self.batches = (int(lowest), int(highest))
        measured = bool(engine.details.get("cuda_graph"))  # build timed it on this GPU
        self.captures = options.device == "cuda" and graph in CAPTURED and (options.cuda_graph or measured)
        # a package loaded for CUDA graph capture runs one call at a time
        self._serial: AbstractContextManager[Any] = threading.Lock() if options.device == "cuda" else nullcontext()
        if options.device == "cuda":
            set_tf32(options.tf32)
        elif options.threads:
            torch.set_num_threads(options.threads)  # torch's pool is per process: the last setting holds
        try:
            single = options.device == "cuda"
            self.model = torch._inductor.aoti_load_package(str(path), run_single_threaded=single)
        except RuntimeError as err:
            raise EngineError(f"{path}: torch cannot load the package: {err}") from err
        self.metadata: dict[str, str] = self.model.get_metadata()
        declared = json.loads(self.metadata.get(IO_METADATA, '{"inputs": [], "outputs": []}'))
        self.io: dict[str, list[tuple[str, list[Any]]]] = {
            side: [(name, shape) for name, shape in declared[side]] for side in ("inputs", "outputs")
        }
        self._check_io(*([name for name, _ in self.io[side]] for side in ("inputs", "outputs")))

    def declaration(self) -> GraphDeclaration:
        """The I/O and the ONNX graph's metadata, as `build` wrote them into the package when it checked the
        package against that graph."""
        return GraphDeclaration(self.path.name, self.io["inputs"], self.io["outputs"], self.metadata)

    @classmethod
    def chain(cls, encoder: Backend, synthesis: Backend, config: PspConfig, max_batch: int) -> Chain:
        """On CUDA, the device-resident chain (resident.py) when both graphs run there; else the host chain."""
        if (
            isinstance(encoder, InductorBackend)
            and isinstance(synthesis, InductorBackend)
            and encoder.device == synthesis.device == "cuda"
            and encoder.record.batch is None
        ):
            from .resident import ResidentChain

            return ResidentChain(encoder, synthesis, config.input_kind, max_batch)
        return super().chain(encoder, synthesis, config, max_batch)

    @property
    def device(self) -> str:
        return self.options.device

    @property
    def tf32(self) -> bool:
        return self.device == "cuda" and self.options.tf32

    def settings(self) -> dict[str, Any]:
        """The package's own metadata (AOTInductor's platform, ISA, device) and torch's thread count."""
        aoti = {k: v for k, v in self.metadata.items() if k.startswith("AOTI_")}
        return {"torch": torch.__version__, "threads": torch.get_num_threads(), "package": aoti}

    def run(self, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Device tensors in, device tensors out, for one batch inside the package's batch range."""
        with self._serial, torch.inference_mode():
            outputs = self.model(*inputs)
        return list(outputs) if isinstance(outputs, (tuple, list)) else [outputs]

    def _infer(self, feeds: dict[str, NDArray[Any]]) -> dict[str, NDArray[Any]]:
        """Batches above the package's range run in chunks of its largest; below it, padded with the last row."""
        values = [feeds[spec.name] for spec in self.inputs]
        lowest, highest = self.batches
        pieces = []
        for chunk in plan(len(values[0]), highest):
            rows = [padded(v[chunk.start : chunk.start + chunk.rows], lowest) for v in values]
            outputs = self.run([torch.from_numpy(r).to(self.torch_device) for r in rows])
            pieces.append([out[: chunk.rows].cpu().numpy() for out in outputs])
        joined = [np.concatenate(parts) for parts in zip(*pieces, strict=True)]
        return {spec.name: out for spec, out in zip(self.outputs, joined, strict=True)}
