"""`psp-deploy build`: engines for a bundle's graphs at one precision, recorded in the manifest."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ..bundle import GRAPHS, Bundle, EngineRecord, sha256_file
from ..errors import EngineError
from .openvino import compile_cached
from .tensorrt import BatchProfile

BACKENDS = ("tensorrt", "onnxruntime", "openvino")
ENGINE_DIR = "engines"


def _record(bundle: Bundle, backend: str, graph: str, precision: str, path: Path, details: dict) -> EngineRecord:
    engine = EngineRecord(backend, graph, precision, str(path.relative_to(bundle.root)), sha256_file(path), details)
    bundle.manifest.engines = [
        e for e in bundle.manifest.engines if (e.backend, e.graph, e.precision) != (backend, graph, precision)
    ] + [engine]
    return engine


def build_engines(
    bundle_dir: str | Path,
    backend: str,
    precision: str = "fp32",
    *,
    batch: BatchProfile | None = None,
    optimization_level: int = 3,
    version_compatible: bool = False,
    force_bf16: bool = False,
    progress: Callable[[str], None] | None = None,
) -> list[EngineRecord]:
    """Build one engine per graph from the bundle's graphs at ``precision`` (the mapping graph
    from FP32 where it was not calibrated) and record each in the manifest."""
    say = progress or (lambda _m: None)
    if backend not in BACKENDS:
        raise EngineError(f"--backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    bundle = Bundle.open(bundle_dir)
    engines = []
    for graph in GRAPHS:
        if backend == "openvino":
            say(f"openvino {graph} ({precision})")
            file, details = compile_cached(bundle, graph, precision, force_bf16)
            engines.append(_record(bundle, backend, graph, precision, bundle.root / file, details))
            continue
        graph_precision = precision if precision in bundle.manifest.models.get(graph, {}) else "fp32"
        if graph_precision != precision and graph != "mapping":
            bundle.record(graph, precision)  # raises: says how to make that precision
        source = bundle.model_path(graph, graph_precision)
        target = (
            bundle.root / ENGINE_DIR / backend / f"{graph}.{precision}.{'plan' if backend == 'tensorrt' else 'onnx'}"
        )
        say(f"{backend} {graph} ({graph_precision})")
        if backend == "tensorrt":
            from .tensorrt import build_plan

            details = build_plan(
                source,
                target,
                bundle.record(graph, graph_precision),
                batch=batch or BatchProfile(),
                timing_cache=bundle.root / ENGINE_DIR / backend / "timing.cache",
                optimization_level=optimization_level,
                version_compatible=version_compatible,
            )
        else:
            from .onnxruntime import build_optimized

            details = build_optimized(source, target)
        engines.append(_record(bundle, backend, graph, precision, target, details))
    bundle.save_manifest()
    return engines
