"""Where the time goes: seconds per operator type for one run of a graph, from the backend's own
profiler (ONNX Runtime session profiling; OpenVINO's per-layer performance counters).

Only the last of RUNS runs is counted: at 1024² ONNX Runtime's first two or three runs are still
growing its memory arena and run up to 1.5× slower than the steady state.
"""

from __future__ import annotations

import numpy as np

from ..bundle import Bundle
from ..runtime import Pipeline
from ..runtime.backends import Backend, BackendOptions, backend_class

Feeds = dict[str, np.ndarray]
RUNS = 4


def op_seconds(net: Backend, feeds: Feeds) -> dict[str, float]:
    """Seconds per operator type of one run of ``net`` (a runtime backend) on ``feeds``, largest first."""
    return dict(sorted(net.op_seconds(feeds, RUNS).items(), key=lambda kv: -kv[1]))


def profile_graph(
    bundle: Bundle, graph: str, backend: str, precision: str, feeds: Feeds, threads: int | None = None
) -> dict[str, float]:
    """``op_seconds`` of ``graph`` on ``backend`` at ``precision``, opened as the runtime opens it."""
    with backend_class(backend).from_bundle(bundle, graph, precision, BackendOptions(threads=threads)) as net:
        return op_seconds(net, feeds)


def profile_table(seconds: dict[str, float], top: int = 8) -> list[str]:
    """A markdown table of the ``top`` operator types and the rest, with their share of the run."""
    total = sum(seconds.values()) or 1.0
    items = list(seconds.items())
    rows = items[:top] + ([("(other)", sum(v for _, v in items[top:]))] if len(items) > top else [])
    lines = ["| operator | ms | share |", "|---|---:|---:|"]
    lines += [f"| {name} | {value * 1e3:.1f} | {value / total:.0%} |" for name, value in rows]
    return lines + [f"| total | {total * 1e3:.1f} | |"]


def profile_pipeline(pipeline: Pipeline, image: np.ndarray, codes: np.ndarray) -> dict[str, dict[str, float]]:
    """``op_seconds`` of the pipeline's own encoder on ``image`` and synthesis on ``codes`` (one batch each)."""
    feeds = {"encoder": image, "synthesis": codes}
    nets = pipeline.nets
    return {graph: op_seconds(nets[graph], {nets[graph].inputs[0].name: x}) for graph, x in feeds.items()}
