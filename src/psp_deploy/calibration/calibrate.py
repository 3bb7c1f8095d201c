"""`psp-deploy calibrate`: FP16 or INT8 graphs for a bundle, with an accuracy report.

Stages: calibration data → per graph, range capture and FP16 decisions, or INT8
quantization with a measured method → held-back evaluation against FP32 → graphs,
manifest records and report written into the bundle.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from ..bundle import Bundle, ModelRecord, sha256_file
from ..errors import CalibrationError
from ..export.checks import check_graph
from ..runtime import Pipeline
from ..runtime.pipeline import run_batched
from .data import CalibrationSet, make_calibration_set
from .fp16 import decide, to_fp16
from .int8 import METHODS, calibrate_int8
from .ranges import capture_ranges
from .report import AccuracyReport, code_accuracy, cosines, image_accuracy, psnr_db, vector_accuracy

BACKENDS = {"onnxruntime": ("fp16", "int8"), "openvino": ("bf16", "int8")}
OUTPUT = {"encoder": "codes", "mapping": "w", "synthesis": "image"}
INPUT = {"encoder": "image", "mapping": "z", "synthesis": "codes"}
EVAL_BATCH = 4
MIN_HELD_BACK = 4  # below this, one odd sample moves the mean PSNR and the worst cosine a lot
PROGRESS_STEPS = 10  # per-sample progress in about this many updates: log lines, not one per sample
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


class GraphRunner:
    """One CPU session over a graph file, run on sample arrays (a fixed-batch graph: padded batches)."""

    def __init__(self, path: Path, graph: str, batch: int | None) -> None:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.graph, self.batch = graph, batch

    def __call__(self, samples: np.ndarray) -> np.ndarray:
        run = lambda chunk: self.session.run([OUTPUT[self.graph]], {INPUT[self.graph]: chunk})  # noqa: E731
        return run_batched(run, samples, self.batch, EVAL_BATCH)[0]


class OpenVINORunner:
    """The candidate graph on OpenVINO at a precision (bf16 or int8), same calling convention."""

    def __init__(self, bundle: Bundle, graph: str, precision: str, force_bf16: bool) -> None:
        from ..runtime.backends.openvino import OpenVINOBackend

        self.backend = OpenVINOBackend.from_bundle(bundle, graph, precision, force_bf16=force_bf16)
        self.graph, self.batch = graph, bundle.record(graph).batch

    def __call__(self, samples: np.ndarray) -> np.ndarray:
        run = lambda chunk: [self.backend.infer({INPUT[self.graph]: chunk})[OUTPUT[self.graph]]]  # noqa: E731
        return run_batched(run, samples, self.batch, EVAL_BATCH)[0]


def _samples(data: CalibrationSet, graph: str, held: bool) -> np.ndarray:
    return np.concatenate([feed[INPUT[graph]] for feed in data.feeds(graph, held)])


def _feeds(samples: np.ndarray, graph: str, batch: int | None) -> list[dict[str, np.ndarray]]:
    b = batch or 1
    usable = len(samples) - len(samples) % b or b
    return [{INPUT[graph]: samples[i : i + b]} for i in range(0, usable, b) if len(samples[i : i + b]) == b]


def target_path(bundle: Bundle, graph: str, precision: str) -> Path:
    return bundle.root / f"{graph}.{precision}.onnx"


def make_fp16(bundle: Bundle, graph: str, samples: np.ndarray) -> dict:
    src, batch = bundle.model_path(graph), bundle.record(graph).batch
    model = onnx.load(src)
    decisions = decide(model, capture_ranges(src, _feeds(samples, graph, batch)))
    converted = to_fp16(model, decisions)
    check_graph(converted, f"{graph} fp16")
    target_path(bundle, graph, "fp16").write_bytes(converted.SerializeToString())
    return {"kept_fp32": decisions.kept_fp32}


def _int8_score(graph: str, reference: np.ndarray, samples: np.ndarray, latent_avg: np.ndarray, batch: int | None):
    def score(path: Path) -> float:
        test = GraphRunner(path, graph, batch)(samples)
        if graph == "encoder":
            return float(cosines(reference - latent_avg, test - latent_avg).min())
        return float(np.mean([psnr_db(r, t) for r, t in zip(reference, test, strict=True)]))

    return score


def make_int8(
    bundle: Bundle, graph: str, samples: np.ndarray, methods: tuple[str, ...], rounds: int, say: Callable[[str], None]
) -> dict:
    src, dst, batch = bundle.model_path(graph), target_path(bundle, graph, "int8"), bundle.record(graph).batch
    probe = samples[:4]
    score = _int8_score(graph, GraphRunner(src, graph, batch)(probe), probe, bundle.latent_avg(), batch)
    best, tried = calibrate_int8(
        src, dst, _feeds(samples, graph, batch), score, methods=methods, rounds=rounds, progress=say
    )
    check_graph(onnx.load(dst, load_external_data=False), f"{graph} int8")
    return {
        "method": best.method,
        "kept_float": best.excluded,
        "tried": [{"method": a.method, "kept_float": a.excluded, "score": a.score} for a in tried],
        "score": "min codes cosine" if graph == "encoder" else "mean image PSNR (dB)",
    }


Runner = Callable[[np.ndarray], np.ndarray]


def evaluate(bundle: Bundle, data: CalibrationSet, candidates: dict[str, Runner]) -> list:
    """Held-back accuracy of every candidate graph against FP32 (ONNX Runtime), and of encoder →
    synthesis end to end (a graph without a candidate runs FP32 on both sides)."""
    fp32 = {
        g: GraphRunner(bundle.model_path(g), g, bundle.record(g).batch) for g in ("encoder", "mapping", "synthesis")
    }
    test = {**fp32, **candidates}
    held_images, held_codes = _samples(data, "encoder", True), _samples(data, "synthesis", True)
    codes32, codes_p = fp32["encoder"](held_images), test["encoder"](held_images)
    results = []
    if "encoder" in candidates:
        results.append(code_accuracy(codes32, codes_p, bundle.latent_avg()))
    if "synthesis" in candidates:
        results.append(image_accuracy("synthesis", fp32["synthesis"](held_codes), test["synthesis"](held_codes)))
    if "mapping" in candidates:
        z = _samples(data, "mapping", True)
        results.append(vector_accuracy("mapping", fp32["mapping"](z), test["mapping"](z)))
    results.append(image_accuracy("end-to-end", fp32["synthesis"](codes32), test["synthesis"](codes_p)))
    return results


def _checked(bundle_dir: str | Path, precision: str, backend: str, graphs: tuple[str, ...] | None):
    if backend not in BACKENDS:
        raise CalibrationError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if precision not in BACKENDS[backend]:
        raise CalibrationError(f"{backend} precision must be one of {', '.join(BACKENDS[backend])}, got {precision!r}")
    graphs = graphs or (("encoder", "mapping", "synthesis") if precision == "fp16" else ("encoder", "synthesis"))
    unknown = set(graphs) - set(OUTPUT)
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
    say: Callable[[str], None],
) -> dict[str, dict]:
    """Write the graphs at ``precision`` (OpenVINO reuses INT8 graphs already calibrated)."""
    decisions = {}
    for graph in graphs:
        if backend == "openvino" and precision in bundle.manifest.models[graph]:
            continue
        say(f"{precision} {graph}")
        samples = _samples(data, graph, False)
        if precision == "fp16":
            decisions[graph] = make_fp16(bundle, graph, samples)
        else:
            decisions[graph] = make_int8(bundle, graph, samples, methods, rounds, say)
    return decisions


def _candidate(bundle: Bundle, graph: str, precision: str, backend: str, force_bf16: bool) -> Runner:
    if backend == "openvino":
        return OpenVINORunner(bundle, graph, precision, force_bf16)
    return GraphRunner(target_path(bundle, graph, precision), graph, bundle.record(graph).batch)


def report_path(bundle_dir: str | Path, precision: str, backend: str) -> Path:
    """Where calibrate saves the accuracy report of ``precision`` measured on ``backend``."""
    name = precision if backend == "onnxruntime" else f"{backend}-{precision}"
    return Path(bundle_dir) / "reports" / f"{name}.json"


def _record(bundle: Bundle, report: AccuracyReport, decisions: dict[str, dict], backend: str) -> None:
    saved = report_path(bundle.root, report.precision, backend)
    report_file = saved.relative_to(bundle.root)
    saved.parent.mkdir(exist_ok=True)
    report.save(saved)
    for graph, decision in decisions.items():
        base, path = bundle.record(graph), target_path(bundle, graph, report.precision)
        bundle.manifest.models[graph][report.precision] = ModelRecord(
            path.name,
            sha256_file(path),
            report.precision,
            base.opset,
            base.inputs,
            base.outputs,
            notes={**decision, "report": str(report_file), "passed": report.passed},
        )
    bundle.save_manifest()


def _sample_progress(say: Callable[[str], None]) -> Callable[[str, int, int], None]:
    def report(what: str, done: int, total: int) -> None:
        if done in (0, total) or done % max(1, total // PROGRESS_STEPS) == 0:
            say(f"{what} {done}/{total}")

    return report


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
    seed: int = 0,
    holdout: float = 0.25,
    methods: tuple[str, ...] = METHODS,
    graphs: tuple[str, ...] | None = None,
    rounds: int = 2,
    force_bf16: bool = False,
    progress: Callable[[str], None] | None = None,
) -> AccuracyReport:
    """Write ``<graph>.<precision>.onnx`` into the bundle, record them, and report accuracy vs FP32.

    ``graphs`` defaults to all of them for FP16 and to encoder and synthesis for INT8 (the
    mapping network is tiny); graphs left out keep running in FP32. INT8 tries each of
    ``methods`` and then up to ``rounds`` rounds of keeping the most sensitive nodes in float.
    With ``backend="openvino"`` the accuracy is OpenVINO's: bf16 (its inference precision on
    the FP32 graphs, nothing written) or int8 (the Q/DQ graphs, made here if missing).
    """
    say = progress or (lambda _m: None)
    bundle, graphs = _checked(bundle_dir, precision, backend, graphs)
    if precision == "bf16":
        from ..runtime.backends.openvino import check_bf16

        check_bf16(force_bf16)  # before any work
    with Pipeline.from_bundle(bundle.root) as fp32:
        data = make_calibration_set(
            fp32,
            images=images,
            synthetic=synthetic,
            holdout=holdout,
            seed=seed,
            progress=_sample_progress(say),
        )
    decisions = (
        {} if precision == "bf16" else _make_graphs(bundle, data, precision, graphs, backend, methods, rounds, say)
    )
    say("evaluating on held-back samples")
    candidates = {g: _candidate(bundle, g, precision, backend, force_bf16) for g in graphs}
    notes = [ACCUMULATION_NOTE if precision == "fp16" else INT8_NOTE if precision == "int8" else BF16_NOTE]
    report = AccuracyReport(
        precision,
        f"{backend}-cpu",
        data.source,
        len(data.held_images),
        evaluate(bundle, data, candidates),
        decisions,
        notes,
        _held_back_warnings(len(data.held_images), holdout),
    )
    _record(bundle, report, decisions, backend)
    return report
