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
from .data import CalibrationSet, make_calibration_set
from .fp16 import decide, to_fp16
from .int8 import METHODS, calibrate_int8
from .ranges import capture_ranges
from .report import AccuracyReport, code_accuracy, cosines, image_accuracy, psnr_db, vector_accuracy

PRECISIONS = ("fp16", "int8")
OUTPUT = {"encoder": "codes", "mapping": "w", "synthesis": "image"}
INPUT = {"encoder": "image", "mapping": "z", "synthesis": "codes"}
ACCUMULATION_NOTE = (
    "FP16 accuracy is measured by running the FP16 graph in ONNX Runtime on the CPU, where FP16 kernels compute "
    "in FP32 and round to FP16 between ops; TensorRT's FP16 kernels may also accumulate in FP16, so expect the "
    "same or slightly lower PSNR there."
)
INT8_NOTE = (
    "INT8 uses symmetric Q/DQ (zero points 0), per-channel weights, Conv/ConvTranspose/Gemm/MatMul only: the "
    "explicit-quantization form TensorRT builds strongly typed networks from; ONNX Runtime CPU runs the same graph."
)


class GraphRunner:
    """One CPU session over a graph file, run on sample arrays in chunks of the graph's batch."""

    def __init__(self, path: Path, graph: str, batch: int | None) -> None:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.graph, self.batch = graph, batch or 1

    def __call__(self, samples: np.ndarray) -> np.ndarray:
        out = []
        for start in range(0, len(samples), self.batch):
            chunk = samples[start : start + self.batch]
            n = len(chunk)
            padded = np.concatenate([chunk, np.repeat(chunk[-1:], self.batch - n, axis=0)]) if n < self.batch else chunk
            out.append(self.session.run([OUTPUT[self.graph]], {INPUT[self.graph]: padded})[0][:n])
        return np.concatenate(out)


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


def evaluate(bundle: Bundle, data: CalibrationSet, paths: dict[str, Path]) -> list:
    """Held-back accuracy of every new graph, and of encoder → synthesis end to end (a graph not
    converted runs in FP32 on both sides)."""
    fp32 = {g: bundle.model_path(g) for g in ("encoder", "mapping", "synthesis")}
    test = {**fp32, **paths}
    run = lambda g, p, x: GraphRunner(p, g, bundle.record(g).batch)(x)  # noqa: E731
    held_images, held_codes = _samples(data, "encoder", True), _samples(data, "synthesis", True)
    codes32, codes_p = run("encoder", fp32["encoder"], held_images), run("encoder", test["encoder"], held_images)
    results = []
    if "encoder" in paths:
        results.append(code_accuracy(codes32, codes_p, bundle.latent_avg()))
    if "synthesis" in paths:
        reference = run("synthesis", fp32["synthesis"], held_codes)
        results.append(image_accuracy("synthesis", reference, run("synthesis", paths["synthesis"], held_codes)))
    if "mapping" in paths:
        z = _samples(data, "mapping", True)
        results.append(
            vector_accuracy("mapping", run("mapping", fp32["mapping"], z), run("mapping", paths["mapping"], z))
        )
    reference = run("synthesis", fp32["synthesis"], codes32)
    results.append(image_accuracy("end-to-end", reference, run("synthesis", test["synthesis"], codes_p)))
    return results


def calibrate_bundle(
    bundle_dir: str | Path,
    precision: str,
    *,
    images: Path | None = None,
    synthetic: int | None = None,
    seed: int = 0,
    holdout: float = 0.25,
    methods: tuple[str, ...] = METHODS,
    graphs: tuple[str, ...] | None = None,
    rounds: int = 2,
    progress: Callable[[str], None] | None = None,
) -> AccuracyReport:
    """Write ``<graph>.<precision>.onnx`` into the bundle, record them, and report accuracy vs FP32.

    ``graphs`` defaults to all of them for FP16 and to encoder and synthesis for INT8 (the
    mapping network is tiny); graphs left out keep running in FP32. INT8 tries each of
    ``methods`` and then up to ``rounds`` rounds of keeping the most sensitive nodes in float.
    """
    say = progress or (lambda _m: None)
    if precision not in PRECISIONS:
        raise CalibrationError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
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
    with Pipeline.from_bundle(bundle.root) as fp32:
        data = make_calibration_set(
            fp32,
            images=images,
            synthetic=synthetic,
            holdout=holdout,
            seed=seed,
            progress=lambda what, done, total: say(f"{what} {done}/{total}"),
        )
    paths, decisions = {}, {}
    for graph in graphs:
        say(f"{precision} {graph}")
        samples = _samples(data, graph, False)
        if precision == "fp16":
            decisions[graph] = make_fp16(bundle, graph, samples)
        else:
            decisions[graph] = make_int8(bundle, graph, samples, methods, rounds, say)
        paths[graph] = target_path(bundle, graph, precision)
    say("evaluating on held-back samples")
    report = AccuracyReport(
        precision,
        "onnxruntime-cpu",
        data.source,
        len(data.held_images),
        evaluate(bundle, data, paths),
        decisions,
        [ACCUMULATION_NOTE if precision == "fp16" else INT8_NOTE],
    )
    report_file = Path("reports") / f"{precision}.json"
    (bundle.root / "reports").mkdir(exist_ok=True)
    report.save(bundle.root / report_file)
    for graph, path in paths.items():
        base = bundle.record(graph)
        bundle.manifest.models[graph][precision] = ModelRecord(
            path.name,
            sha256_file(path),
            precision,
            base.opset,
            base.inputs,
            base.outputs,
            notes={**decisions[graph], "report": str(report_file), "passed": report.passed},
        )
    bundle.save_manifest()
    return report
