"""One bundle graph at a reduced precision: ``<graph>.fp16.onnx`` from its measured ranges, or
``<graph>.int8.onnx`` with the calibration method (and nodes kept in float) that scored best."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import onnx

from ..bundle import Bundle
from ..export.checks import check_graph
from ..files import atomic_file
from ..graph_io import GRAPH_IO
from ..measure.flops import node_flops
from ..runtime.backends.onnxruntime import OnnxRuntimeBackend
from .evaluate import open_graph, runner
from .fp16 import decide, to_fp16
from .int8 import LIGHT_BUDGET, calibrate_int8, light_nodes
from .progress import Progress, quiet
from .ranges import capture_ranges
from .report import psnr_db

PROBE = 4  # samples each INT8 attempt is scored on
SCORES = {"encoder": "mean end-to-end image PSNR (dB), FP32 synthesis", "synthesis": "mean image PSNR (dB)"}


def target_path(bundle: Bundle, graph: str, precision: str) -> Path:
    return bundle.root / f"{graph}.{precision}.onnx"


def sample_feeds(samples: np.ndarray, graph: str, batch: int | None) -> list[dict[str, np.ndarray]]:
    """``samples`` as feeds of ``graph``: whole batches of a fixed-batch graph, else one sample each."""
    b = batch or 1
    usable = len(samples) - len(samples) % b or b
    name = GRAPH_IO[graph].input
    return [{name: samples[i : i + b]} for i in range(0, usable, b) if len(samples[i : i + b]) == b]


def make_fp16(bundle: Bundle, graph: str, samples: np.ndarray, progress: Progress = quiet) -> dict:
    """``progress``: one stage, a unit per calibration feed run for its ranges and one for the conversion."""
    src, batch = bundle.model_path(graph), bundle.record(graph).batch
    feeds = sample_feeds(samples, graph, batch)
    stage, total = f"fp16 {graph}", len(feeds) + 1
    progress(stage, 0, total, "measuring ranges")
    model = onnx.load(src)
    ranges = capture_ranges(src, feeds, lambda done: progress(stage, done, total, "measuring ranges"))
    progress(stage, len(feeds), total, "converting")
    decisions = decide(model, ranges)
    converted = to_fp16(model, decisions)
    check_graph(converted, f"{graph} fp16")
    with atomic_file(target_path(bundle, graph, "fp16")) as f:  # an interrupted run leaves the old graph or none
        f.write(converted.SerializeToString())
    progress(stage, total, total, "converted")
    return {"kept_fp32": decisions.kept_fp32}


@contextlib.contextmanager
def _int8_score(bundle: Bundle, graph: str, samples: np.ndarray) -> Iterator[Callable[[Path], float]]:
    """How close an INT8 attempt's images on ``samples`` come to FP32's: the mean PSNR; for the encoder, of
    the images the FP32 synthesis makes of its codes. The gate is end to end, and codes close by cosine
    can still draw apart (at 1024², an INT8 bundle whose encoder passed cosine ≥ 0.99 missed 28 dB).
    Attempts run on ONNX Runtime, as the runtime runs them."""
    with contextlib.ExitStack() as opened:
        with open_graph(bundle, graph, "fp32") as fp32:
            reference = runner(fp32)(samples)
        images = runner(opened.enter_context(open_graph(bundle, "synthesis", "fp32"))) if graph == "encoder" else None
        to_images = images or (lambda outputs: outputs)
        reference_images, record = to_images(reference), bundle.record(graph)  # an attempt's I/O is FP32's

        def score(path: Path) -> float:
            with OnnxRuntimeBackend(path, record, graph) as attempt:
                test = to_images(runner(attempt)(samples))
            return float(np.mean([psnr_db(r, t) for r, t in zip(reference_images, test, strict=True)]))

        yield score


def make_int8(
    bundle: Bundle,
    graph: str,
    samples: np.ndarray,
    methods: tuple[str, ...],
    rounds: int,
    progress: Progress = quiet,
) -> dict:
    src, dst, batch = bundle.model_path(graph), target_path(bundle, graph, "int8"), bundle.record(graph).batch
    flops = node_flops(src, bundle.record(graph))
    light = light_nodes(flops)
    feeds = sample_feeds(samples, graph, batch)
    with _int8_score(bundle, graph, samples[:PROBE]) as score:
        best, tried = calibrate_int8(
            src,
            dst,
            feeds,
            score,
            light=light,
            methods=methods,
            rounds=rounds,
            progress=progress,
            stage=f"int8 {graph}",
        )
    check_graph(onnx.load(dst, load_external_data=False), f"{graph} int8")
    return {
        "method": best.method,
        "light": {
            "nodes": light,
            "budget": LIGHT_BUDGET,
            "flops_share": sum(flops[n] for n in light) / sum(flops.values()),
        },
        "kept_float": best.excluded,
        "tried": [{"method": a.method, "kept_float": a.excluded, "score": a.score} for a in tried],
        "score": SCORES[graph],
    }
