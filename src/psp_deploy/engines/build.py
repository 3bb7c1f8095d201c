"""`psp-deploy build`: engines for a bundle's graphs at one precision, recorded in the manifest.

Each backend builds and loads its own engines (the registry, runtime/backends/registry.py, names its
builder); this module only resolves what to build (the bundle's rule), calls the builder and records
what was built."""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..bundle import GRAPHS, Bundle, EngineRecord, Resolved
from ..errors import EngineError
from ..files import sha256_file
from ..runtime.backends import (
    REGISTRY,
    BackendSpec,
    backend_class,
    check_device,
    check_precision,
    resolve_backend,
    spec,
)
from ..runtime.backends.options import BuildOptions

BACKENDS = tuple(name for name, facts in REGISTRY.items() if facts.builder or facts.tuner)
ENGINE_DIR = "engines"


def build_notes(engines: list[EngineRecord]) -> list[str]:
    """What the engines just built mean for the bundle, said once per backend (``Backend.build_note``)."""
    notes = {e.backend: backend_class(e.backend).build_note(e.details) for e in engines if e.backend in REGISTRY}
    return [note for note in notes.values() if note]


def default_backend(precision: str) -> str:
    """TensorRT where it is installed (a GPU machine), else the CPU backend `run --backend auto` picks."""
    if REGISTRY["tensorrt"].installed:
        return "tensorrt"
    return resolve_backend("auto", "cpu", precision)


def record_engine(bundle: Bundle, backend: str, graph: str, precision: str, path: Path, details: dict) -> EngineRecord:
    """``path`` (hash-recorded) as ``backend``'s engine for graph × precision in the manifest, replacing any before."""
    engine = EngineRecord(backend, graph, precision, str(path.relative_to(bundle.root)), sha256_file(path), details)
    bundle.manifest.engines = [
        e for e in bundle.manifest.engines if (e.backend, e.graph, e.precision) != (backend, graph, precision)
    ] + [engine]
    return engine


def _target_device(backend: BackendSpec, options: BuildOptions) -> str:
    """The device to build for: the one asked if the backend runs there; a backend that runs on one device only
    builds for it (TensorRT: its GPU). Refused, before any work, when nothing meaningful would be built."""
    device = backend.devices[0] if len(backend.devices) == 1 else options.device
    if options.device not in backend.devices and options.device != "cpu":
        check_device(backend.name, options.device)  # raises, naming the backends that run there
    if options.tf32 and device != "cuda":
        raise EngineError(f"--tf32 is a GPU build option; {backend.name} here builds for the CPU")
    if device == "cuda" and backend.tuner is None and backend.builder is None:
        raise EngineError(f"{backend.name} builds nothing for a GPU")
    return device


def _call(target: str) -> Callable[..., Any]:
    module, _, function = target.partition(":")
    return getattr(importlib.import_module(module), function)  # type: ignore[no-any-return]


def build_engines(
    bundle_dir: str | Path,
    backend: str,
    precision: str = "fp32",
    *,
    options: BuildOptions | None = None,
    progress: Callable[[str], None] | None = None,
) -> list[EngineRecord]:
    """Build one engine per graph from the bundle's graphs at ``precision`` (from FP32 where calibration left a
    graph out, as the runtimes run it) with the backend's builder (the registry names it), and record each in
    the manifest. A backend with a tuner (ONNX Runtime on CUDA) measures each heavy graph's settings instead."""
    say = progress or (lambda _m: None)
    options = options or BuildOptions()
    facts = spec(backend)
    check_precision(backend, precision)
    device = _target_device(facts, options)
    options = replace(options, device=device)
    if device != "cpu":
        backend_class(backend).check_available(device)  # e.g. onnxruntime-gpu's CUDA provider, before any work
    bundle = Bundle.open(bundle_dir)
    resolved = [bundle.resolve(graph, precision, backend) for graph in GRAPHS]  # the runtimes' own rule
    if device == "cuda" and facts.tuner is not None:
        engines = _call(facts.tuner)(bundle, resolved, options, say)
    elif facts.builder is None:
        raise EngineError(f"{backend} builds no engines: it runs the bundle's graphs as they are")
    else:
        engines = [_build(bundle, facts, r, options, say) for r in resolved]
    bundle.save_manifest()
    return engines


def _build(
    bundle: Bundle, backend: BackendSpec, r: Resolved, options: BuildOptions, say: Callable[[str], None]
) -> EngineRecord:
    assert backend.builder is not None  # build_engines checked
    target = bundle.root / ENGINE_DIR / backend.name / f"{r.graph}.{r.precision}.{backend.engine_suffix}"
    say(f"{backend.name} {r.graph} ({r.precision})")
    details = _call(backend.builder)(bundle, r, target, options)
    return record_engine(bundle, backend.name, r.graph, r.precision, target, details)
