"""One ONNX Runtime session with its inputs and outputs bound on its device: the graph alone, as the
benchmarks time it (a stage's pipeline time minus this is the host's overhead)."""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ....bundle import BATCH, TensorSpec
from . import run_options
from .buffers import Buffers

# CUDA graph ids of bound graphs, one each and apart from the resident chain's (its batch sizes): a session
# replays whatever graph an id captured first, with that capture's buffers and shapes.
GRAPH_IDS = itertools.count(1_000_000)


class BoundGraph:
    """Calling it runs the graph once and waits for its outputs. Inputs are copied to the device once;
    outputs are allocated once from their declared specs (the manifest's shapes with the batch filled in).
    On a session that ``captures`` CUDA graphs, it replays its own."""

    def __init__(
        self,
        session: Any,
        feeds: Mapping[str, NDArray[Any]],
        outputs: list[TensorSpec],
        device: str,
        captures: bool = False,
    ) -> None:
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
            shape = [batch if dim == BATCH else int(dim) for dim in spec.shape]
            buffer = buffers.on_device(spec.name, shape, np.dtype(spec.dtype).type)
            buffer.bind_output(self.binding, spec.name, batch)
            self.outputs[spec.name] = buffer.value

    def __call__(self) -> None:
        # Run synchronises the execution providers at its end (ONNX Runtime's default); synchronising the
        # bound outputs as well keeps the call complete should a provider's Run return earlier.
        self.session.run_with_iobinding(self.binding, self.run_options)
        self.binding.synchronize_outputs()
