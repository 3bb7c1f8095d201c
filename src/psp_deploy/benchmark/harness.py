"""`psp-deploy bench`: per-stage and end-to-end latency and throughput of a bundle."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..bundle import Bundle
from ..errors import InputError
from ..machine import cpu_info, library_versions
from ..runtime import Pipeline
from ..runtime.backends import BackendOptions, resolve_backend
from .flops import flops_per_image
from .timing import Latency, measure

STAGES = ("align", "encode", "synthesize", "e2e")
PROFILED = ("onnxruntime", "openvino")  # backends with a per-op profiler wired in
SPREAD_LIMIT = 1.5  # max/min latency of one measurement's runs; a quiet machine stays well below
Progress = Callable[[str], None]


@dataclass
class BenchSettings:
    backends: list[str] = field(default_factory=lambda: ["onnxruntime"])
    precisions: list[str] = field(default_factory=lambda: ["fp32"])
    batches: list[int] = field(default_factory=lambda: [1, 4])
    stages: list[str] = field(default_factory=lambda: list(STAGES))
    warmup: int = 1
    runs: int = 5
    threads: int | None = None
    profile: bool = False

    def __post_init__(self) -> None:
        unknown = set(self.stages) - set(STAGES)
        if unknown:
            raise InputError(f"unknown stages {sorted(unknown)}; choose from {', '.join(STAGES)}")
        if min(self.batches) < 1 or self.runs < 1 or self.warmup < 0:
            raise InputError("batches and --runs must be at least 1, --warmup at least 0")


def benchmark_photo() -> np.ndarray:
    """A 1024² photo with one face: scikit-image's astronaut, upscaled."""
    import cv2
    from skimage import data

    return cv2.resize(data.astronaut(), (1024, 1024), interpolation=cv2.INTER_CUBIC)


def _stage_calls(pipeline: Pipeline, photo: np.ndarray, batch: int) -> dict[str, Callable[[], Any]]:
    x = np.repeat(pipeline.prepare(photo)[0][None], batch, axis=0)
    codes = pipeline.encode(x)
    photos = [photo] * batch
    return {
        "align": lambda: [pipeline.aligner.align(p) for p in photos],
        "encode": lambda: pipeline.encode(x),
        "synthesize": lambda: pipeline.synthesize(codes),
        "e2e": lambda: pipeline.run(photos),
    }


def result_row(label: dict[str, Any], batch: int, stage: str, latency: Latency, flops: dict[str, float]) -> dict:
    """One measurement: latency statistics, images/s and the achieved GFLOP/s of the stage's graphs."""
    per_image = {
        "encode": flops["encoder"],
        "synthesize": flops["synthesis"],
        "e2e": flops["encoder"] + flops["synthesis"],
    }.get(stage, 0.0)
    return {
        **label,
        "batch": batch,
        "stage": stage,
        "latency_s": latency.as_dict(),
        "images_per_s": batch / latency.mean,
        "gflops_per_s": per_image * batch / latency.mean / 1e9 if per_image else None,
    }


def bench_pipeline(
    pipeline: Pipeline,
    settings: BenchSettings,
    flops: dict[str, float],
    photo: np.ndarray,
    label: dict[str, Any],
    say: Progress,
) -> list[dict[str, Any]]:
    rows = []
    for batch in settings.batches:
        calls = _stage_calls(pipeline, photo, batch)
        for stage in settings.stages:
            say(f"{label['backend']} {label['precision']} batch {batch}: {stage}")
            rows.append(result_row(label, batch, stage, measure(calls[stage], settings.warmup, settings.runs), flops))
    return rows


def graph_flops(bundle: Bundle) -> dict[str, float]:
    return {g: flops_per_image(bundle.model_path(g), bundle.record(g)) for g in ("encoder", "synthesis")}


def _profile(
    bundle: Bundle, pipeline: Pipeline, photo: np.ndarray, backend: str, precision: str, threads: int | None
) -> dict[str, dict[str, float]]:
    """Per-op seconds of each graph at the bundle's own batch (1 where it is dynamic)."""
    from .op_profile import profile_bundle

    fixed = bundle.record("encoder").inputs[0].shape[0]
    x = np.repeat(pipeline.prepare(photo)[0][None], fixed if isinstance(fixed, int) else 1, axis=0)
    return profile_bundle(bundle, backend, precision, x, pipeline.encode(x), threads)


def run_benchmark(
    bundle_dir: str | Path,
    settings: BenchSettings,
    *,
    baseline: Path | None = None,
    limits: bool = True,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Time every backend × precision × batch × stage; optionally the official torch path and the
    machine's single-conv limits in the same run."""
    say = progress or (lambda _m: None)
    measured = _numbered(say, _measurements(settings, baseline))
    bundle = Bundle.open(bundle_dir)
    photo = benchmark_photo()
    flops = graph_flops(bundle)
    rows, profiles = [], {}
    for name in settings.backends:
        for precision in settings.precisions:
            backend = resolve_backend(name, "cpu", precision)
            options = BackendOptions(threads=settings.threads)
            say(f"loading {backend} {precision}")
            with Pipeline.from_bundle(bundle.root, backend, precision, options=options) as pipeline:
                label = {
                    "backend": backend,
                    "precision": precision,
                    "modconv": bundle.manifest.modconv["form"],
                    "graphs": pipeline.precisions,
                }
                rows += bench_pipeline(pipeline, settings, flops, photo, label, measured)
                if settings.profile and backend in PROFILED:
                    say(f"profiling {backend} {precision}")
                    profiles[f"{backend} {precision}"] = _profile(
                        bundle, pipeline, photo, backend, precision, settings.threads
                    )
    if baseline is not None:
        rows += official_rows(baseline, photo, settings, flops, measured)
    results: dict[str, Any] = {
        "machine": cpu_info(),
        "versions": library_versions(),
        "settings": {**settings.__dict__},
        "bundle": {"path": str(bundle.root), "config": bundle.config.to_dict(), "modconv": bundle.manifest.modconv},
        "gflop_per_image": {g: f / 1e9 for g, f in flops.items()},
        "results": rows,
        "warnings": busy_rows(rows),
    }
    if profiles:
        results["profiles"] = profiles
    if limits:
        from .roofline import machine_limits

        say("measuring the machine's single-conv rate")
        results["conv_gflops_per_s"] = machine_limits(
            {row["backend"] for row in rows} - {"torch-official"},
            set(settings.precisions),
            settings.threads,
            torch_too=baseline is not None,
        )
    return results


def _measurements(settings: BenchSettings, baseline: Path | None) -> int:
    per_config = len(settings.batches) * len(settings.stages)
    return len(settings.backends) * len(settings.precisions) * per_config + (len(settings.batches) if baseline else 0)


def _numbered(say: Progress, total: int) -> Progress:
    """Number the measurements ("3/16 ..."): a log of a long run then says how far it has got."""
    done = itertools.count(1)
    return lambda message: say(f"{next(done)}/{total} {message}")


def busy_rows(rows: list[dict[str, Any]]) -> list[str]:
    """Measurements whose slowest run took over SPREAD_LIMIT × the fastest: something else used the
    machine (or it changed clock speed) meanwhile, so their figures are not the machine's."""
    warnings = []
    for row in rows:
        spread = row["latency_s"]["max"] / row["latency_s"]["min"]
        if spread > SPREAD_LIMIT:
            warnings.append(
                f"{row['backend']} {row['precision']} batch {row['batch']} {row['stage']}: the slowest run took "
                f"{spread:.1f}× the fastest (over {SPREAD_LIMIT:g}×): the machine was busy, rerun it quiet"
            )
    return warnings


def official_rows(
    checkpoint: Path, photo: np.ndarray, settings: BenchSettings, flops: dict[str, float], say: Progress
) -> list[dict[str, Any]]:
    from .baseline import time_official

    rows = []
    label = {"backend": "torch-official", "precision": "fp32", "modconv": "grouped"}
    for batch in settings.batches:
        say(f"official torch path, batch {batch}")
        timings = time_official(
            checkpoint, photo, batch, settings.stages, settings.warmup, settings.runs, settings.threads
        )
        rows += [result_row(label, batch, stage, latency, flops) for stage, latency in timings.items()]
    return rows
