"""Held-back accuracy against FP32, every graph run through the runtime's own backends.

The FP32 side is always ONNX Runtime; the candidate side is the backend being calibrated for,
opening the graph exactly as the runtime does (the bundle resolves which file runs).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from contextlib import ExitStack
from typing import Any

import numpy as np

from ..bundle import Bundle
from ..graph_io import GRAPH_IO
from ..runtime.backends import Backend, BackendOptions, backend_class
from ..runtime.pipeline import run_batched
from .data import CalibrationSet
from .progress import Progress, quiet
from .report import GraphAccuracy, code_accuracy, image_accuracy, vector_accuracy

EVAL_BATCH = 4

Runner = Callable[[np.ndarray], np.ndarray]  # a graph's input samples → its main output


def open_graph(
    bundle: Bundle, graph: str, precision: str, backend: str = "onnxruntime", force_bf16: bool = False
) -> Backend:
    """``graph`` at ``precision`` on ``backend`` (CPU), from the bundle's graph file: a saved
    optimized ONNX Runtime model is left aside, so what is measured is the graph itself."""
    options = BackendOptions(engines=False, force_bf16=force_bf16)
    return backend_class(backend).from_bundle(bundle, graph, precision, options)


def runner(backend: Backend) -> Runner:
    """``backend`` run on sample arrays in chunks (a fixed-batch graph: padded batches)."""
    io = GRAPH_IO[backend.graph]
    run = lambda chunk: [backend.infer({io.input: chunk})[io.output]]  # noqa: E731
    return lambda samples: run_batched(run, samples, backend.record.batch, EVAL_BATCH)[0]


EVALUATING = "evaluating on held-back samples"


def _runs(candidates: tuple[str, ...]) -> int:
    """How many graph runs ``_accuracy`` makes: the codes on both sides, each candidate synthesis or mapping
    graph's own pair, and the end-to-end synthesis pair."""
    return 2 + 2 * len(set(candidates) & {"synthesis", "mapping"}) + 2


def evaluate(
    bundle: Bundle,
    data: CalibrationSet,
    precision: str,
    backend: str,
    graphs: tuple[str, ...],
    force_bf16: bool = False,
    progress: Progress = quiet,
) -> list[GraphAccuracy]:
    """Held-back accuracy of each of ``graphs`` at ``precision`` on ``backend`` against FP32 (ONNX
    Runtime), and of encoder → synthesis end to end (a graph left out runs FP32 on both sides).
    ``progress`` counts one stage: a unit per graph opened and per graph run."""
    total, step = len(GRAPH_IO) + len(graphs) + _runs(graphs), itertools.count(1)
    progress(EVALUATING, 0, total)
    with ExitStack() as opened:

        def counted(graph: str, *how: Any) -> Runner:
            run = runner(opened.enter_context(open_graph(bundle, graph, *how)))
            progress(EVALUATING, next(step), total)

            def run_counted(samples: np.ndarray) -> np.ndarray:
                out = run(samples)
                progress(EVALUATING, next(step), total)
                return out

            return run_counted

        fp32 = {g: counted(g, "fp32") for g in GRAPH_IO}
        candidates = {g: counted(g, precision, backend, force_bf16) for g in graphs}
        results = _accuracy(bundle, data, fp32, {**fp32, **candidates}, candidates)
    progress(EVALUATING, total, total)
    return results


def _accuracy(
    bundle: Bundle, data: CalibrationSet, fp32: dict[str, Runner], test: dict[str, Runner], candidates: dict
) -> list[GraphAccuracy]:
    held_images, held_codes = data.samples("encoder", True), data.samples("synthesis", True)
    codes32, codes_p = fp32["encoder"](held_images), test["encoder"](held_images)
    results = []
    if "encoder" in candidates:
        results.append(code_accuracy(codes32, codes_p, bundle.latent_avg()))
    if "synthesis" in candidates:
        results.append(image_accuracy("synthesis", fp32["synthesis"](held_codes), test["synthesis"](held_codes)))
    if "mapping" in candidates:
        z = data.samples("mapping", True)
        results.append(vector_accuracy("mapping", fp32["mapping"](z), test["mapping"](z)))
    results.append(image_accuracy("end-to-end", fp32["synthesis"](codes32), test["synthesis"](codes_p)))
    return results
