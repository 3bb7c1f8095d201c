"""`psp-deploy build --backend onnxruntime --device cuda`: each graph's CUDA provider settings,
chosen by timing them on this GPU and recorded in the bundle (the runtime applies them on this GPU
only, as TensorRT plans are: onnxruntime.py's ``tuned_options``).

Which is faster depends on the graph, its precision and the GPU: on an H200 NHWC convolutions sped
the FP16 encoder up and slowed the synthesis, replaying a captured CUDA graph sped the synthesis up
at batch 1, and with TF32 off NHWC slowed both FP32 graphs
(benchmarks/results/nvidia-h200-cuda-settings.json). Each candidate is timed as the graph alone,
input and output bound on the device, at the batch asked for; the record keeps every candidate's time
beside the choice.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from ..bundle import BATCH, Bundle, EngineRecord, ModelRecord, Resolved
from ..errors import EngineError
from ..runtime.backends.onnxruntime import CAPTURED, RUN_ERRORS, TUNING, cuda_key, open_session, uses_tf32
from ..runtime.backends.options import BackendOptions, BuildOptions, CudaConv

# NCHW or NHWC convolutions, each with and without CUDA-graph replay; cuDNN picks its algorithms by
# timing them (EXHAUSTIVE), which finds the fastest kernels for the shapes at hand.
CANDIDATES = [(CudaConv(prefer_nhwc=nhwc), graph) for nhwc in (False, True) for graph in (False, True)]
WARMUP = 3  # cuDNN's algorithm search and ONNX Runtime's CUDA-graph capture happen in the first runs
RUNS = 10


def _label(conv: CudaConv, cuda_graph: bool) -> str:
    return f"{'nhwc' if conv.prefer_nhwc else 'nchw'}{', cuda graph' if cuda_graph else ''}"


def time_candidate(path: Path, record: ModelRecord, graph: str, options: BackendOptions, batch: int) -> float:
    """Median milliseconds of one run of ``graph`` with ``options``, bound on the device at ``batch``."""
    from ..measure.timing import measure
    from ..runtime.backends.onnxruntime.bound import BoundGraph

    session = open_session(path, graph, options, precision=record.precision)
    spec = record.inputs[0]
    shape = [batch if d == BATCH else int(d) for d in spec.shape]
    feed = np.random.default_rng(0).standard_normal(shape).astype(spec.dtype)
    bound = BoundGraph(session, {spec.name: feed}, record.outputs, "cuda")
    return measure(bound, WARMUP, RUNS).p50 * 1e3


def tune_graph(
    path: Path, record: ModelRecord, graph: str, batch: int, tf32: bool, say: Callable[[str], None]
) -> dict[str, Any]:
    """The engine record's details for ``graph``: the fastest settings on this GPU and every candidate's time."""
    key = cuda_key()
    if key["gpu"] is None:
        raise EngineError("nvidia-smi cannot name this GPU: CUDA settings measured here could not be tied to it")
    timings: dict[str, float] = {}
    failed: dict[str, str] = {}
    for conv, cuda_graph in CANDIDATES:
        label = _label(conv, cuda_graph)
        say(f"{graph}: timing {label}")
        options = BackendOptions(device="cuda", tf32=tf32, cuda_graph=cuda_graph, cuda_conv={graph: conv})
        try:
            timings[label] = time_candidate(path, record, graph, options, batch)
        except RUN_ERRORS as err:  # e.g. out of memory in cuDNN's search, a graph ONNX Runtime cannot capture
            failed[label] = str(err).splitlines()[0]
    if not timings:
        raise EngineError(f"{graph}: no CUDA setting ran: {failed}")
    conv, cuda_graph = min((c for c in CANDIDATES if _label(*c) in timings), key=lambda c: timings[_label(*c)])
    return {
        **key,
        "chosen": _label(conv, cuda_graph),
        "cuda_conv": asdict(conv),
        "cuda_graph": cuda_graph,
        "tf32": uses_tf32(record.precision, tf32),  # what the sessions ran: FP16 graphs keep it on
        "batch": record.batch or batch,
        "timings_ms": timings,
        "failed": failed,
        "source": path.name,
    }


def tune_engines(
    bundle: Bundle, resolved: list[Resolved], options: BuildOptions, say: Callable[[str], None]
) -> list[EngineRecord]:
    """`psp-deploy build --backend onnxruntime --device cuda` (the registry names it ONNX Runtime's tuner): each
    heavy graph's CUDA settings timed at the batch asked for, recorded against its graph file."""
    from .build import record_engine

    engines = []
    for r in (r for r in resolved if r.graph in CAPTURED):  # the mapping network is too small to matter
        source = bundle.model_path(r.graph, r.record.precision)
        batch = options.batch.optimum
        say(f"onnxruntime cuda {r.graph} ({r.precision}): timing its settings at batch {r.record.batch or batch}")
        details = tune_graph(source, r.record, r.graph, batch, options.tf32, say)
        engines.append(record_engine(bundle, TUNING, r.graph, r.precision, source, details))
    return engines
