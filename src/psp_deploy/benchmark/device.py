"""The device-resident time of a stage: its graphs alone, inputs and outputs bound on the device.

A stage's pipeline time includes the work around the bundle's graphs: input checks, copies up and
down, chunking, the runtime's own small pre- and post-processing graphs, and in e2e the host's
preparation of the inputs (and alignment on a CPU). The graphs' own time is each backend's
``bound`` graph (ONNX Runtime: I/O binding, inputs copied to the device once, outputs allocated there
once, so a timed call is the session's Run and nothing else); the difference is the host overhead row.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

from ..runtime.backends import Backend

# The graphs each stage runs, in order (e2e without style mixing never runs the mapping).
STAGE_GRAPHS = {"encode": ("encoder",), "synthesize": ("synthesis",), "e2e": ("encoder", "synthesis")}


def stage_graphs(
    nets: Mapping[str, Backend], stage: str, feeds: Mapping[str, np.ndarray], batch: int
) -> Callable[[], None] | None:
    """The stage's graphs alone at ``batch``: one call runs each in turn. ``feeds`` holds each graph's
    input for the batch ({"encoder": images, "synthesis": codes}); a fixed-batch graph runs as many full
    batches as the pipeline would. None for a stage without graphs or on a backend that cannot bind them
    (``Backend.bound``)."""
    graphs = STAGE_GRAPHS.get(stage, ())
    runs: list[Callable[[], None]] = []
    for graph in graphs:
        net = nets[graph]
        value, fixed = feeds[graph], net.record.batch
        if fixed:
            value = np.resize(value, (fixed, *value.shape[1:]))
        bound = net.bound({net.record.inputs[0].name: value})
        if bound is None:
            return None
        runs += [bound] * (-(-batch // fixed) if fixed else 1)
    if not runs:
        return None

    def run() -> None:
        for bound in runs:
            bound()

    return run
