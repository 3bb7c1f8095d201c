"""Where the time goes: seconds per operator type for one run of a graph, from the backend's own
profiler (ONNX Runtime session profiling; OpenVINO's per-layer performance counters).

Only the last of RUNS runs is counted: at 1024² ONNX Runtime's first two or three runs are still
growing its memory arena and run up to 1.5× slower than the steady state.
"""

from __future__ import annotations

import json
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from ..bundle import Bundle
from ..errors import InputError
from ..runtime.backends.onnxruntime import session_options
from ..runtime.backends.openvino import OpenVINOBackend

Feeds = dict[str, np.ndarray]
RUNS = 4


def ort_op_seconds(path: Path, feeds: Feeds, threads: int | None = None) -> dict[str, float]:
    import onnxruntime as ort

    options = session_options(threads)
    options.enable_profiling = True
    with tempfile.TemporaryDirectory() as tmp:
        options.profile_file_prefix = str(Path(tmp) / "ort")
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        for _ in range(RUNS):
            session.run(None, feeds)
        trace = json.loads(Path(session.end_profiling()).read_text())
    last = [e for e in trace if e.get("name") == "model_run"][-1]
    start, end = last["ts"], last["ts"] + last["dur"]
    seconds: Counter[str] = Counter()
    for event in trace:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time") and start <= event["ts"] <= end:
            seconds[event["args"]["op_name"]] += event["dur"] / 1e6  # the trace is in microseconds
    return dict(seconds)


def openvino_op_seconds(compiled: Any, feeds: Feeds) -> dict[str, float]:
    """Keyed by layer type and the kernel OpenVINO chose (e.g. ``Convolution [brgconv_avx2_FP32]``),
    which shows whether a layer really ran in the precision asked for. ``compiled`` is a model that an
    ``OpenVINOBackend(..., profile=True)`` compiled."""
    request = compiled.create_infer_request()
    for _ in range(RUNS):
        request.infer(feeds)
    seconds: Counter[str] = Counter()
    for info in request.get_profiling_info():
        if info.status == info.Status.EXECUTED:
            seconds[f"{info.node_type} [{info.exec_type}]"] += info.real_time.total_seconds()
    return dict(seconds)


def profile_graph(
    bundle: Bundle, graph: str, backend: str, precision: str, feeds: Feeds, threads: int | None = None
) -> dict[str, float]:
    """Seconds per operator type of one ``graph`` run on ``backend`` at ``precision``, largest first."""
    record = bundle.resolve(graph, precision, backend).record
    path = bundle.model_path(graph, record.precision)
    if backend == "onnxruntime":
        seconds = ort_op_seconds(path, feeds, threads)
    elif backend == "openvino":
        openvino = OpenVINOBackend(path, record, graph, precision=precision, threads=threads, profile=True)
        openvino.prepare(path)  # the model profiled is the one the backend runs for this batch size
        seconds = openvino_op_seconds(openvino.compiled_for(len(next(iter(feeds.values())))), feeds)
    else:
        raise InputError(f"per-op profiles are available for onnxruntime and openvino, not {backend!r}")
    return dict(sorted(seconds.items(), key=lambda kv: -kv[1]))


def profile_table(seconds: dict[str, float], top: int = 8) -> list[str]:
    """A markdown table of the ``top`` operator types and the rest, with their share of the run."""
    total = sum(seconds.values()) or 1.0
    items = list(seconds.items())
    rows = items[:top] + ([("(other)", sum(v for _, v in items[top:]))] if len(items) > top else [])
    lines = ["| operator | ms | share |", "|---|---:|---:|"]
    lines += [f"| {name} | {value * 1e3:.1f} | {value / total:.0%} |" for name, value in rows]
    return lines + [f"| total | {total * 1e3:.1f} | |"]


def profile_bundle(
    bundle: Bundle, backend: str, precision: str, image: np.ndarray, codes: np.ndarray, threads: int | None = None
) -> dict[str, dict[str, float]]:
    """Per-op seconds of the encoder on ``image`` and the synthesis on ``codes`` (one batch each)."""
    feeds = {"encoder": image, "synthesis": codes}
    return {
        graph: profile_graph(bundle, graph, backend, precision, {bundle.record(graph).inputs[0].name: x}, threads)
        for graph, x in feeds.items()
    }
