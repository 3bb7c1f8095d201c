"""`psp-deploy build`: engines for a bundle's graphs at one precision, recorded in the manifest.

Each backend's module (runtime/backends/) builds and loads its own engines; this module only
resolves what to build (the bundle's rule) and records what was built."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path

from ..bundle import GRAPHS, Bundle, EngineRecord, Resolved
from ..errors import EngineError
from ..files import sha256_file
from ..runtime.backends import check_precision, resolve_backend
from ..runtime.backends.tensorrt import BatchProfile

BACKENDS = ("tensorrt", "onnxruntime", "openvino")
ENGINE_DIR = "engines"


def default_backend(precision: str) -> str:
    """TensorRT where it is installed (a GPU machine), else the CPU backend `run --backend auto` picks."""
    if importlib.util.find_spec("tensorrt") is not None:
        return "tensorrt"
    return resolve_backend("auto", "cpu", precision)


def _record(bundle: Bundle, backend: str, graph: str, precision: str, path: Path, details: dict) -> EngineRecord:
    engine = EngineRecord(backend, graph, precision, str(path.relative_to(bundle.root)), sha256_file(path), details)
    bundle.manifest.engines = [
        e for e in bundle.manifest.engines if (e.backend, e.graph, e.precision) != (backend, graph, precision)
    ] + [engine]
    return engine


def _check_target(backend: str, device: str, tf32: bool) -> None:
    """Refuse a combination that builds nothing meaningful, before any work."""
    if backend not in BACKENDS:
        raise EngineError(f"--backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if device not in ("cpu", "cuda"):
        raise EngineError(f"--device must be cpu or cuda, got {device!r}")
    if device == "cuda" and backend != "onnxruntime":
        raise EngineError(
            f"--device is ONNX Runtime's: {backend} builds for {'its GPU' if backend == 'tensorrt' else 'the CPU'}"
        )
    if tf32 and backend != "tensorrt" and device != "cuda":
        raise EngineError(
            f"--tf32 is a GPU build option (tensorrt, or onnxruntime --device cuda); {backend} here builds for the CPU"
        )
    if device == "cuda":
        from ..runtime.backends.onnxruntime import check_device

        check_device(device)  # onnxruntime-gpu and its CUDA provider, or a clear refusal


def build_engines(
    bundle_dir: str | Path,
    backend: str,
    precision: str = "fp32",
    *,
    device: str = "cpu",
    batch: BatchProfile | None = None,
    optimization_level: int = 3,
    version_compatible: bool = False,
    tf32: bool = False,
    force_bf16: bool = False,
    progress: Callable[[str], None] | None = None,
) -> list[EngineRecord]:
    """Build one engine per graph from the bundle's graphs at ``precision`` (from FP32 where
    calibration left a graph out, as the runtimes run it) and record each in the manifest. ONNX
    Runtime on ``device`` cuda measures each heavy graph's CUDA settings instead (engines/ort_cuda.py)."""
    say = progress or (lambda _m: None)
    _check_target(backend, device, tf32)
    check_precision(backend, precision)
    bundle = Bundle.open(bundle_dir)
    resolved = [bundle.resolve(graph, precision, backend) for graph in GRAPHS]  # the runtimes' own rule
    if all(r.precision != precision for r in resolved):
        bundle.record("encoder", precision)  # raises: says how to make that precision
    if device == "cuda":
        engines = _tune_cuda(bundle, resolved, (batch or BatchProfile()).optimum, tf32, say)
    else:
        engines = [
            _build(bundle, backend, r, batch, optimization_level, version_compatible, tf32, force_bf16, say)
            for r in resolved
        ]
    bundle.save_manifest()
    return engines


def _tune_cuda(
    bundle: Bundle, resolved: list[Resolved], batch: int, tf32: bool, say: Callable[[str], None]
) -> list[EngineRecord]:
    from ..runtime.backends.onnxruntime import CAPTURED, TUNING
    from .ort_cuda import tune_graph

    engines = []
    for r in (r for r in resolved if r.graph in CAPTURED):  # the mapping network is too small to matter
        source = bundle.model_path(r.graph, r.record.precision)
        say(f"onnxruntime cuda {r.graph} ({r.precision}): timing its settings at batch {r.record.batch or batch}")
        details = tune_graph(source, r.record, r.graph, batch, tf32, say)
        engines.append(_record(bundle, TUNING, r.graph, r.precision, source, details))
    return engines


def _build(
    bundle: Bundle,
    backend: str,
    r: Resolved,
    batch: BatchProfile | None,
    optimization_level: int,
    version_compatible: bool,
    tf32: bool,
    force_bf16: bool,
    say: Callable[[str], None],
) -> EngineRecord:
    suffix = {"tensorrt": "plan", "onnxruntime": "onnx", "openvino": "blob"}[backend]
    target = bundle.root / ENGINE_DIR / backend / f"{r.graph}.{r.precision}.{suffix}"
    source = bundle.model_path(r.graph, r.record.precision)
    say(f"{backend} {r.graph} ({r.precision})")
    if backend == "openvino":
        from ..runtime.backends.openvino import export_compiled

        details = export_compiled(bundle, r.graph, r.precision, target, force_bf16)
    elif backend == "tensorrt":
        from ..runtime.backends.tensorrt import build_plan

        details = build_plan(
            source,
            target,
            r.record,
            batch=batch or BatchProfile(),
            timing_cache=bundle.root / ENGINE_DIR / backend / "timing.cache",
            optimization_level=optimization_level,
            version_compatible=version_compatible,
            tf32=tf32,
        )
    else:
        from ..runtime.backends.onnxruntime import build_optimized

        details = build_optimized(source, target)
    return _record(bundle, backend, r.graph, r.precision, target, details)
