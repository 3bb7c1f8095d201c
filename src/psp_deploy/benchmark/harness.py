"""`psp-deploy bench`: per-stage and end-to-end latency and throughput of a bundle.

Each stage is timed through the pipeline ("pipeline" rows) and, on ONNX Runtime, as its graphs
alone with inputs and outputs bound on the device ("graphs" rows, benchmark/device.py); their
difference is a row of its own ("host": the host's overhead). With --device cuda every timed call
ends with a device-wide synchronise, and the GPU, driver, CUDA and library versions are recorded.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..bundle import Bundle
from ..errors import BackendUnavailableError, InputError
from ..graph_io import IMAGE
from ..machine import cpu_info, library_versions
from ..measure.flops import flops_per_image
from ..measure.timing import Latency, measure
from ..runtime import Pipeline
from ..runtime.backends import DEVICES, BackendOptions, check_device, resolve_backend
from ..runtime.pipeline import openable
from .baseline import COMPILED, EAGER
from .device import STAGE_GRAPHS, stage_graphs
from .gpu import cuda_problem, cuda_synchronizer, gpu_info
from .rows import Row

STAGES = ("align", "encode", "synthesize", "e2e")
OFFICIAL_PRECISIONS = {"cpu": ("fp32",), "cuda": ("fp32", "fp16")}  # fp16: the FP32 model under torch.autocast
SPREAD_LIMIT = 1.5  # max/min latency of one measurement's runs; a quiet machine stays well below
Progress = Callable[[str], None]
Timer = Callable[[Callable[[], object]], Latency]

ALIGN_NOTE = (
    "align is not timed with --device cuda: alignment (dlib) is CPU work whatever the device (a CPU bench times "
    "it), so e2e starts from an aligned 256² face, for psp-deploy and the official path alike"
)
LIMITS_NOTE = "no single-conv limits with --device cuda: they are measured on CPU backends"
AUTOCAST_NOTE = "torch-official fp16 is the official FP32 model run under torch.autocast(float16), as a user would"
COMPILED_NOTE = (
    "torch-compile is the official algorithm under torch.compile (inductor, default mode, one static graph per "
    "batch size; fp16: FP16 autocast with channels-last weights and inputs); each graph's first call at each batch "
    "is its compile, timed apart (compile s) and before the warm-up, never in the timed runs"
)
GRAPH_STAGE = {"encoder": "encode", "synthesis": "synthesize"}  # the stage that runs one graph alone
GRAPHS_NOTE = "graphs-alone and host rows exist for ONNX Runtime backends only (their sessions are bound directly)"


def forms_label(modconv: dict[str, Any]) -> str:
    """'scaled', or 'scaled+phase' for a bundle whose upsampling convs are in the phase form."""
    upsample = modconv.get("upsample", "transpose")
    return modconv["form"] if upsample == "transpose" else f"{modconv['form']}+{upsample}"


@dataclass(kw_only=True)
class BenchSettings:
    backends: list[str] = field(default_factory=lambda: ["onnxruntime"])
    precisions: list[str] = field(default_factory=lambda: ["fp32"])
    batches: list[int] = field(default_factory=lambda: [1, 4])
    stages: list[str] = field(default_factory=lambda: list(STAGES))
    warmup: int = 1
    runs: int = 5
    threads: int | None = None
    profile: bool = False
    device: str = "cpu"
    tf32: bool = False
    torch_compile: bool = True  # with a baseline: the official path under torch.compile too

    def __post_init__(self) -> None:
        unknown = set(self.stages) - set(STAGES)
        if unknown:
            raise InputError(f"unknown stages {sorted(unknown)}; choose from {', '.join(STAGES)}")
        if min(self.batches) < 1:
            raise InputError(f"batch sizes must be at least 1, got {self.batches}")
        if self.runs < 1 or self.warmup < 0:
            raise InputError(f"--runs must be at least 1 and --warmup at least 0, got {self.runs} and {self.warmup}")
        if self.device not in DEVICES:
            raise InputError(f"--device must be one of {', '.join(DEVICES)}, got {self.device!r}")
        if self.device == "cuda":
            self._check_cuda()
        elif self.tf32:
            raise InputError("--tf32 is a mode of NVIDIA tensor cores: it needs --device cuda")

    def _check_cuda(self) -> None:
        if self.profile:
            raise InputError("--profile reads the CPU sessions' profilers: leave it out with --device cuda")
        for name in set(self.backends) - {"auto"}:
            check_device(name, self.device)
        self.stages = [stage for stage in self.stages if stage != "align"]
        if not self.stages:
            raise InputError("align is CPU work (dlib) whatever the device: time it without --device cuda")

    @property
    def compiled_stages(self) -> list[str]:
        """The stages timed under torch.compile: those that run graphs (alignment has none to compile)."""
        return [stage for stage in self.stages if stage in STAGE_GRAPHS] if self.torch_compile else []

    @property
    def align(self) -> bool | None:
        """How e2e treats photos: as `run` does on a CPU (None: align photos); from aligned faces on a GPU."""
        return None if self.device == "cpu" else False


def benchmark_photo() -> np.ndarray:
    """A 1024² photo with one face: scikit-image's astronaut, upscaled."""
    import cv2
    from skimage import data

    return cv2.resize(data.astronaut(), (1024, 1024), interpolation=cv2.INTER_CUBIC)


def benchmark_face(photo: np.ndarray) -> np.ndarray:
    """The photo shrunk to 256², standing in for an aligned face where alignment is not timed: the graphs'
    work does not depend on what the face looks like."""
    import cv2

    return cv2.resize(photo, (256, 256), interpolation=cv2.INTER_AREA)


def stage_inputs(
    pipeline: Pipeline, photo: np.ndarray, batch: int, align: bool | None
) -> tuple[dict[str, Callable[[], Any]], dict[str, np.ndarray]]:
    """Each stage's call at ``batch`` the way `run` makes it, and each graph's input for the graphs-alone
    timing. Encode and synthesize run the pipeline's chain as `run` does: uint8 faces in, codes out; codes in,
    uint8 images out (on a device-resident chain, ONNX Runtime's, each crosses the bus once)."""
    face = photo if align is None else benchmark_face(photo)
    x = np.repeat(pipeline.prepare(face, align)[0][None], batch, axis=0)
    codes = pipeline.encode(x)
    inputs = [face] * batch
    faces = np.repeat(pipeline.prepare_face(face, align)[0][None], batch, axis=0)
    calls = {
        "align": lambda: [pipeline.aligner.align(p) for p in inputs],
        "encode": lambda: pipeline.chain.encode(faces),
        "synthesize": lambda: pipeline.chain.synthesize(codes, [IMAGE]),
        "e2e": lambda: pipeline.run(inputs, align=align),
    }
    return calls, {"encoder": x, "synthesis": codes}


def result_row(label: dict[str, Any], batch: int, stage: str, latency: Latency, flops: dict[str, float]) -> Row:
    """One measurement: latency statistics, images/s and the achieved GFLOP/s of the stage's graphs."""
    per_image = {
        "encode": flops["encoder"],
        "synthesize": flops["synthesis"],
        "e2e": flops["encoder"] + flops["synthesis"],
    }.get(stage, 0.0)
    return Row(
        **label,
        batch=batch,
        stage=stage,
        latency_s=latency.as_dict(),
        images_per_s=batch / latency.mean,
        gflops_per_s=per_image * batch / latency.mean / 1e9 if per_image else None,
    )


def host_row(pipeline_row: Row, graphs_row: Row, includes_alignment: bool) -> Row:
    """The pipeline's time outside its graphs (pipeline − graphs alone) at the median and the mean, and its
    share of the pipeline's median. Extremes do not subtract: the slowest runs of each need not coincide."""
    pipeline, graphs = pipeline_row.latency_s, graphs_row.latency_s
    latency = {stat: pipeline[stat] - graphs[stat] for stat in ("p50", "mean")}
    return replace(
        pipeline_row,
        part="host",
        latency_s=latency,
        share_of_pipeline=latency["p50"] / pipeline["p50"],
        images_per_s=None,
        gflops_per_s=None,
        includes_alignment=includes_alignment,
    )


def bench_pipeline(
    pipeline: Pipeline,
    settings: BenchSettings,
    flops: dict[str, float],
    photo: np.ndarray,
    label: dict[str, Any],
    say: Progress,
    timer: Timer,
) -> list[Row]:
    rows: list[Row] = []
    for batch in settings.batches:
        calls, feeds = stage_inputs(pipeline, photo, batch, settings.align)
        for stage in settings.stages:
            say(f"{label['backend']} {label['precision']} batch {batch}: {stage}")
            row = result_row({**label, "part": "pipeline"}, batch, stage, timer(calls[stage]), flops)
            rows.append(row)
            graphs = stage_graphs(pipeline.nets, stage, feeds, batch)
            if graphs is not None:
                alone = result_row({**label, "part": "graphs"}, batch, stage, timer(graphs), flops)
                # e2e from photos also aligns them (CPU work): the difference is not the runtime's overhead alone
                aligned = stage == "e2e" and pipeline.wants_alignment(settings.align)
                rows += [alone, host_row(row, alone, aligned)]
    return rows


def graph_flops(bundle: Bundle) -> dict[str, float]:
    return {g: flops_per_image(bundle.model_path(g), bundle.record(g)) for g in ("encoder", "synthesis")}


def _profile(pipeline: Pipeline, photo: np.ndarray) -> dict[str, dict[str, float]]:
    """Per-op seconds of each of the pipeline's graphs at the bundle's own batch (1 where it is dynamic)."""
    from .op_profile import profile_pipeline

    x = np.repeat(pipeline.prepare(photo)[0][None], pipeline.encoder.record.batch or 1, axis=0)
    return profile_pipeline(pipeline, x, pipeline.encode(x))


def _bench_backends(
    bundle: Bundle,
    settings: BenchSettings,
    photo: np.ndarray,
    flops: dict[str, float],
    say: Progress,
    measured: Progress,
    timer: Timer,
) -> tuple[list[Row], dict[str, Any], dict[str, Any]]:
    """Rows of every backend × precision, their profiles, and what each pipeline ran (Pipeline.describe:
    devices, providers and their options per session). ``measured`` reports each measurement, ``say`` the rest."""
    rows: list[Row] = []
    profiles, pipelines = {}, {}
    for name in settings.backends:
        for precision in settings.precisions:
            backend = resolve_backend(name, settings.device, precision)
            options = BackendOptions(device=settings.device, threads=settings.threads, tf32=settings.tf32)
            say(f"loading {backend} {precision}")
            with Pipeline.from_bundle(
                bundle.root, backend, precision, options=options, max_batch=max(settings.batches)
            ) as pipeline:
                described = pipelines[f"{backend} {precision}"] = pipeline.describe()
                label = {
                    "backend": backend,
                    "precision": precision,
                    "modconv": forms_label(bundle.manifest.modconv),
                    "graphs": pipeline.precisions,
                    "device": described["device"],
                    "tf32": described["tf32"],  # as it ran
                }
                rows += bench_pipeline(pipeline, settings, flops, photo, label, measured, timer)
                if settings.profile and pipeline.encoder.spec().profiles:
                    say(f"profiling {backend} {precision}")
                    profiles[f"{backend} {precision}"] = _profile(pipeline, photo)
    return rows, profiles, pipelines


@dataclass(frozen=True)
class Clock:
    """Times a call as `measure` does (warm-up calls, then timed runs), each call ending with ``sync`` (a
    device-wide synchronise; None on a CPU)."""

    warmup: int
    runs: int
    sync: Callable[[], object] | None = None

    def __call__(self, fn: Callable[[], object]) -> Latency:
        return measure(fn, self.warmup, self.runs, self.sync)

    def once(self, fn: Callable[[], object]) -> float:
        """The seconds of one call with nothing before it: a first call, with whatever it compiles."""
        return measure(fn, 0, 1, self.sync).min


def _timer(settings: BenchSettings) -> tuple[Clock, str | None]:
    """The measuring function, and what synchronises the device after each call (None on a CPU)."""
    sync = cuda_synchronizer() if settings.device == "cuda" else None
    return Clock(settings.warmup, settings.runs, sync[1] if sync else None), sync[0] if sync else None


def run_benchmark(
    bundle_dir: str | Path,
    settings: BenchSettings,
    *,
    baseline: Path | None = None,
    limits: bool = True,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Time every backend × precision × batch × stage; optionally the official torch path and (on a CPU)
    the machine's single-conv limits in the same run."""
    if settings.device == "cuda" and (problem := cuda_problem()):
        raise BackendUnavailableError(f"--device cuda needs an NVIDIA GPU with onnxruntime-gpu: {problem}")
    say = progress or (lambda _m: None)
    measured = _numbered(say, _measurements(settings, baseline))
    timer, synchronised_by = _timer(settings)
    bundle = Bundle.open(bundle_dir)
    for name in settings.backends:  # every combination refused now, not after minutes of measuring others
        for precision in settings.precisions:
            openable(bundle, resolve_backend(name, settings.device, precision), precision)
    photo = benchmark_photo()
    flops = graph_flops(bundle)
    rows, profiles, pipelines = _bench_backends(bundle, settings, photo, flops, say, measured, timer)
    failures: list[str] = []
    if baseline is not None:
        official, failures = official_rows(baseline, photo, settings, flops, say, measured, timer)
        rows += official
    results: dict[str, Any] = {
        "machine": cpu_info(),
        "versions": library_versions(),
        "settings": {**settings.__dict__},
        "synchronised_by": synchronised_by,
        "pipelines": pipelines,
        "bundle": {
            "path": str(bundle.root),
            "config": bundle.config.to_dict(),
            "modconv": bundle.manifest.modconv,
            "source": bundle.manifest.source,  # the checkpoint it was exported from (name, sha256)
        },
        "gflop_per_image": {g: f / 1e9 for g, f in flops.items()},
        "results": [row.as_json() for row in rows],
        "warnings": busy_rows(rows) + failures,
        "notes": _notes(settings, rows, limits),
    }
    if settings.device == "cuda":
        results["gpu"] = gpu_info()
    if profiles:
        results["profiles"] = profiles
    if limits and settings.device == "cpu":
        from .roofline import machine_limits

        say("measuring the machine's single-conv rate")
        results["conv_gflops_per_s"] = machine_limits(
            {row.backend for row in rows} - {EAGER, COMPILED},
            set(settings.precisions),
            settings.threads,
            torch_too=baseline is not None,
        )
    return results


def _notes(settings: BenchSettings, rows: list[Row], limits: bool) -> list[str]:
    """What a reader of the results must know about what was (not) measured."""
    notes = []
    if settings.device == "cuda":
        notes += [ALIGN_NOTE, LIMITS_NOTE] if limits else [ALIGN_NOTE]
    if any(row.backend == EAGER and row.precision == "fp16" for row in rows):
        notes.append(AUTOCAST_NOTE)
    if any(row.backend == COMPILED for row in rows):
        notes.append(COMPILED_NOTE)
    with_graphs = {r.backend for r in rows if r.stage in STAGE_GRAPHS and r.backend not in (EAGER, COMPILED)}
    if with_graphs - {r.backend for r in rows if r.part == "graphs"}:
        notes.append(GRAPHS_NOTE)
    return notes


def _measurements(settings: BenchSettings, baseline: Path | None) -> int:
    per_config = len(settings.batches) * len(settings.stages)
    official = len(settings.batches) * len(OFFICIAL_PRECISIONS[settings.device]) if baseline else 0
    official *= 2 if settings.compiled_stages else 1  # eager, and under torch.compile
    return len(settings.backends) * len(settings.precisions) * per_config + official


def _numbered(say: Progress, total: int) -> Progress:
    """Number the measurements ("3/16 ..."): a log of a long run then says how far it has got."""
    done = itertools.count(1)
    return lambda message: say(f"{next(done)}/{total} {message}")


def busy_rows(rows: list[Row]) -> list[str]:
    """Measurements whose slowest run took over SPREAD_LIMIT × the fastest: something else used the
    machine (or it changed clock speed) meanwhile, so their figures are not the machine's."""
    warnings = []
    for row in rows:
        if row.part == "host":  # a difference of two measurements, warned about through them
            continue
        spread = row.latency_s["max"] / row.latency_s["min"]
        if spread > SPREAD_LIMIT:
            alone = " (graphs alone)" if row.part == "graphs" else ""
            warnings.append(
                f"{row.backend} {row.precision} batch {row.batch} {row.stage}{alone}: the slowest run "
                f"took {spread:.1f}× the fastest (over {SPREAD_LIMIT:g}×): the machine was busy, rerun it quiet"
            )
    return warnings


def official_rows(
    checkpoint: Path,
    photo: np.ndarray,
    settings: BenchSettings,
    flops: dict[str, float],
    say: Progress,
    measured: Progress,
    timer: Clock,
) -> tuple[list[Row], list[str]]:
    """The official algorithm on the bench's device, on a GPU in FP32 and under FP16 autocast: in eager torch
    and (settings.torch_compile) under torch.compile; and why a precision's compiled rows are missing."""
    from .baseline import load_official, official_stages, tf32_mode

    net = load_official(checkpoint, settings.device, settings.threads)
    face, rows = benchmark_face(photo), []
    with tf32_mode(settings.tf32):
        for batch in settings.batches:
            for precision in OFFICIAL_PRECISIONS[settings.device]:
                measured(f"official torch path {precision}, batch {batch}")
                stages = official_stages(net, photo, face, batch, half=precision == "fp16")
                label = _official_label(EAGER, precision, settings)
                rows += [result_row(label, batch, stage, timer(stages[stage]), flops) for stage in settings.stages]
        compiled, failures = compiled_rows(net, photo, face, settings, flops, say, measured, timer)
    return rows + compiled, failures


def _official_label(backend: str, precision: str, settings: BenchSettings) -> dict[str, Any]:
    label = {"backend": backend, "precision": precision, "modconv": "grouped", "part": "pipeline"}
    return {**label, "device": settings.device, "tf32": settings.tf32}


def compiled_rows(
    net: Any,
    photo: np.ndarray,
    face: np.ndarray,
    settings: BenchSettings,
    flops: dict[str, float],
    say: Progress,
    measured: Progress,
    timer: Clock,
) -> tuple[list[Row], list[str]]:
    """The official algorithm under torch.compile (baseline.compiled_graphs) per precision and batch. Before the
    warm-up, each graph's first call at the batch compiles it: its seconds are the row's compile_s (the graphs
    the stage runs), apart from the timed runs. A precision torch.compile fails at is left out, saying why."""
    from .baseline import compiled_graphs, compiling, official_stages

    graphs = list(dict.fromkeys(graph for stage in settings.compiled_stages for graph in STAGE_GRAPHS[stage]))
    precisions = OFFICIAL_PRECISIONS[settings.device] if graphs else ()
    rows, failures = [], []
    for precision in precisions:
        half, label = precision == "fp16", _official_label(COMPILED, precision, settings)
        try:
            with compiling(len(settings.batches) * len(precisions)):
                compiled = compiled_graphs(net, channels_last=half)
                for batch in settings.batches:
                    stages = official_stages(net, photo, face, batch, half, compiled)
                    say(f"torch.compile {precision}, batch {batch}: compiling the {' and '.join(graphs)}")
                    seconds = {graph: timer.once(stages[GRAPH_STAGE[graph]]) for graph in graphs}
                    measured(f"official torch path under torch.compile {precision}, batch {batch}")
                    for stage in settings.compiled_stages:
                        row = result_row(label, batch, stage, timer(stages[stage]), flops)
                        rows.append(replace(row, compile_s=sum(seconds[graph] for graph in STAGE_GRAPHS[stage])))
        except BackendUnavailableError as err:
            failures.append(f"{err}: the official path under torch.compile {precision} is left out")
            say(failures[-1])
    return rows, failures
