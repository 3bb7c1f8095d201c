"""`psp-deploy calibrate`: FP16 or INT8 graphs for a bundle, with an accuracy report.

Stages, one module each: calibration data (data) → per graph, range capture and FP16
decisions, or INT8 quantization with a measured method (convert) → held-back evaluation
against FP32 through the runtime backends (evaluate) → manifest records and report (record).
This module checks the arguments and runs the stages in order.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from ..bundle import Bundle
from ..errors import CalibrationError
from ..graph_io import GRAPH_IO
from ..runtime import Pipeline
from ..runtime.backends.registry import REGISTRY
from .convert import make_fp16, make_int8
from .data import CalibrationSet, check_source, make_calibration_set
from .evaluate import evaluate
from .int8 import METHODS
from .progress import Progress, as_lines
from .record import record, register
from .report import AccuracyReport

# The backends calibration measures on, and their reduced precisions, from the one table. The first (ONNX
# Runtime) makes the graphs of a precision; another measures the graphs already there, making them if missing.
BACKENDS = {name: spec.calibrates for name, spec in REGISTRY.items() if spec.calibrates}
GRAPH_MAKER = next(iter(BACKENDS))
MIN_HELD_BACK = 4  # below this, one odd sample moves the mean PSNR and the worst cosine a lot
ACCUMULATION_NOTE = (
    "FP16 accuracy is measured by running the FP16 graph in ONNX Runtime on the CPU, where FP16 kernels compute "
    "in FP32 and round to FP16 between ops; TensorRT's FP16 kernels may also accumulate in FP16, so expect the "
    "same or slightly lower PSNR there."
)
BF16_NOTE = (
    "BF16 is OpenVINO's inference precision applied to the FP32 graphs (weights and activations rounded to "
    "bfloat16, 8 mantissa bits; accumulation in FP32), measured on this CPU's native BF16 units."
)
INT8_NOTE = (
    "INT8 uses symmetric Q/DQ (zero points 0), per-channel weights, Conv/ConvTranspose/Gemm/MatMul only: the "
    "explicit-quantization form TensorRT builds strongly typed networks from; ONNX Runtime CPU runs the same graph."
)


def _checked(bundle_dir: str | Path, precision: str, backend: str, graphs: tuple[str, ...] | None):
    if backend not in BACKENDS:
        raise CalibrationError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if precision not in BACKENDS[backend]:
        raise CalibrationError(f"{backend} precision must be one of {', '.join(BACKENDS[backend])}, got {precision!r}")
    graphs = graphs or (tuple(GRAPH_IO) if precision == "fp16" else ("encoder", "synthesis"))
    unknown = set(graphs) - set(GRAPH_IO)
    if unknown:
        raise CalibrationError(f"unknown graphs {sorted(unknown)}; choose from encoder, mapping, synthesis")
    bundle = Bundle.open(bundle_dir)
    if precision == "int8" and "synthesis" in graphs and bundle.manifest.modconv.get("form") != "scaled":
        raise CalibrationError(
            "INT8 synthesis needs static weights: export the bundle with --modconv scaled "
            "(or calibrate --graphs encoder)"
        )
    return bundle, graphs


def _make_graphs(
    bundle: Bundle,
    data: CalibrationSet,
    precision: str,
    graphs: tuple[str, ...],
    backend: str,
    methods: tuple[str, ...],
    rounds: int,
    progress: Progress,
) -> dict[str, dict]:
    """Write the graphs at ``precision`` and register them (a backend other than GRAPH_MAKER reuses graphs already
    calibrated)."""
    decisions = {}
    for graph in graphs:
        if backend != GRAPH_MAKER and precision in bundle.manifest.models[graph]:
            continue
        samples = data.samples(graph)
        if precision == "fp16":
            decisions[graph] = make_fp16(bundle, graph, samples, progress)
        else:
            decisions[graph] = make_int8(bundle, graph, samples, methods, rounds, progress)
        register(bundle, graph, precision, decisions[graph])
    return decisions


def report_path(bundle_dir: str | Path, precision: str, backend: str) -> Path:
    """Where calibrate saves the accuracy report of ``precision`` measured on ``backend``."""
    name = precision if backend == GRAPH_MAKER else f"{backend}-{precision}"
    return Path(bundle_dir) / "reports" / f"{name}.json"


def _held_back_warnings(held_back: int, holdout: float) -> list[str]:
    if held_back >= MIN_HELD_BACK:
        return []
    return [
        f"only {held_back} held-back sample{'s' if held_back != 1 else ''} (holdout {holdout:g}): the accuracy "
        f"figures rest on too few faces to trust; give at least {MIN_HELD_BACK} (more samples or a larger --holdout)"
    ]


def calibrate_bundle(
    bundle_dir: str | Path,
    precision: str,
    *,
    backend: str = "onnxruntime",
    images: Path | None = None,
    synthetic: int | None = None,
    align: bool | None = None,
    seed: int = 0,
    holdout: float = 0.25,
    methods: tuple[str, ...] = METHODS,
    graphs: tuple[str, ...] | None = None,
    rounds: int = 2,
    force_bf16: bool = False,
    progress: Callable[[str], None] | None = None,
    stages: Progress | None = None,
) -> AccuracyReport:
    """Write ``<graph>.<precision>.onnx`` into the bundle, record them, and report accuracy vs FP32.

    ``graphs`` defaults to all of them for FP16 and to encoder and synthesis for INT8 (the
    mapping network is tiny); graphs left out keep running in FP32. INT8 tries each of
    ``methods`` and then up to ``rounds`` rounds of keeping the most sensitive nodes in float.
    With ``backend="openvino"`` the accuracy is OpenVINO's: bf16 (its inference precision on
    the FP32 graphs, nothing written) or int8 (the Q/DQ graphs, made here if missing).

    Photos from ``images`` are aligned as the runtime does; ``align=False`` uses already-aligned
    crops (`psp-deploy align`'s output) as they are. A photo that cannot be used (no face,
    unreadable) is left out and named, with its reason, in the report's ``dropped``.

    ``progress`` is told each stage's advance as a line, about ten per stage (a log's view);
    ``stages`` instead gets it counted, ``(stage, done, total, note)`` (a progress bar's view).
    """
    track = stages or as_lines(progress or (lambda _m: None))
    bundle, graphs = _checked(bundle_dir, precision, backend, graphs)
    check_source(images, synthetic, holdout, align)
    if precision == "bf16":
        from ..runtime.backends.openvino import check_bf16

        check_bf16(force_bf16)  # before any work
    with Pipeline.from_bundle(bundle.root) as fp32:
        data = make_calibration_set(
            fp32, images=images, synthetic=synthetic, holdout=holdout, seed=seed, align=align, progress=track
        )
    decisions = (
        {} if precision == "bf16" else _make_graphs(bundle, data, precision, graphs, backend, methods, rounds, track)
    )
    notes = [ACCUMULATION_NOTE if precision == "fp16" else INT8_NOTE if precision == "int8" else BF16_NOTE]
    report = AccuracyReport(
        precision,
        f"{backend}-cpu",
        data.source,
        len(data.held_images),
        evaluate(bundle, data, precision, backend, graphs, force_bf16, track),
        decisions,
        notes,
        data.notes + _held_back_warnings(len(data.held_images), holdout),
        [asdict(d) for d in data.dropped],
    )
    record(bundle, report, list(decisions), report_path(bundle.root, precision, backend))
    return report
