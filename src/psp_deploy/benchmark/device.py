"""The device-resident time of a stage: its ONNX Runtime sessions alone, inputs and outputs bound on the device.

A stage's pipeline time includes the work around the bundle's graphs: input checks, copies up and
down, chunking, the runtime's own small pre- and post-processing graphs, and in e2e the host's
preparation of the inputs (and alignment on a CPU). The graphs' own time is measured with ONNX
Runtime's I/O binding: inputs copied to the device once, outputs allocated there once, both bound
once, so a timed call is the sessions' Run and nothing else; the difference is the host overhead
row. The same code runs on a CPU with "cpu" OrtValues.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from ..bundle import BATCH, TensorSpec

# The graphs each stage runs, in order (e2e without style mixing never runs the mapping).
STAGE_GRAPHS = {"encode": ("encoder",), "synthesize": ("synthesis",), "e2e": ("encoder", "synthesis")}
# CUDA graph ids of bound graphs, one each and apart from the resident chain's (its batch sizes): a session
# replays whatever graph an id captured first, with that capture's buffers and shapes.
GRAPH_IDS = itertools.count(1_000_000)


class BoundGraph:
    """One session with its inputs and outputs bound on ``device``; calling it runs the graph once and
    waits for its outputs. Outputs are allocated once from their declared specs (the manifest's shapes
    with the batch filled in). On a session that ``captures`` CUDA graphs, it replays its own."""

    def __init__(
        self,
        session: Any,
        feeds: Mapping[str, np.ndarray],
        outputs: list[TensorSpec],
        device: str,
        captures: bool = False,
    ) -> None:
        from ..runtime.backends.onnxruntime import run_options
        from ..runtime.backends.onnxruntime.buffers import Buffers  # the runtime's own bound buffers, as the resident chain binds them

        batch = len(next(iter(feeds.values())))
        self.session, self.binding = session, session.io_binding()
        self.run_options = run_options(next(GRAPH_IDS)) if captures else None
        self.buffers = buffers = Buffers(device)  # kept: the binding holds their addresses, not the memory
        for name, value in feeds.items():
            buffer = buffers.on_device(name, value.shape, value.dtype.type)
            buffer.fill(value)
            buffer.bind_input(self.binding, name, batch)
        self.outputs = {}  # name → OrtValue
        for spec in outputs:
            shape = [batch if dim == BATCH else dim for dim in spec.shape]
            buffer = buffers.on_device(spec.name, shape, np.dtype(spec.dtype).type)
            buffer.bind_output(self.binding, spec.name, batch)
            self.outputs[spec.name] = buffer.value

    def __call__(self) -> None:
        # Run synchronises the execution providers at its end (ONNX Runtime's default); synchronising the
        # bound outputs as well keeps the call complete should a provider's Run return earlier.
        self.session.run_with_iobinding(self.binding, self.run_options)
        self.binding.synchronize_outputs()


def has_session(net: Any) -> bool:
    """Whether a pipeline's backend is an ONNX Runtime session (the only kind bound here)."""
    import onnxruntime as ort

    return isinstance(getattr(net, "session", None), ort.InferenceSession)


def stage_graphs(
    nets: Mapping[str, Any], stage: str, feeds: Mapping[str, np.ndarray], batch: int, device: str
) -> Callable[[], None] | None:
    """The stage's graphs alone at ``batch``: one call runs each in turn. ``feeds`` holds each graph's
    input for the batch ({"encoder": images, "synthesis": codes}); a fixed-batch graph runs as many full
    batches as the pipeline would. None for a stage without graphs or a backend other than ONNX Runtime."""
    graphs = STAGE_GRAPHS.get(stage, ())
    if not graphs or not all(has_session(nets[graph]) for graph in graphs):
        return None
    runs: list[BoundGraph] = []
    for graph in graphs:
        net = nets[graph]
        value, fixed = feeds[graph], net.record.batch
        if fixed:
            value = np.resize(value, (fixed, *value.shape[1:]))
        feed = {net.record.inputs[0].name: value}
        bound = BoundGraph(net.session, feed, net.record.outputs, device, getattr(net, "captures", False))
        runs += [bound] * (-(-batch // fixed) if fixed else 1)

    def run() -> None:
        for bound in runs:
            bound()

    return run
