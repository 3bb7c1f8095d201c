"""Every intermediate tensor's range on calibration data, captured with ONNX Runtime.

The graph is augmented so that each float tensor is also a graph output; statistics are
reduced per sample, so memory stays that of one forward pass.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from ..onnx_tools import session_with_outputs

FP16_MIN_NORMAL = 2.0**-14  # 6.1e-5: below it FP16 loses precision, below 6e-8 values vanish


@dataclass
class TensorStats:
    max_abs: float = 0.0
    nonzero: int = 0
    tiny: int = 0  # nonzero values below FP16's smallest normal number
    nonfinite: int = 0

    def update(self, value: np.ndarray) -> None:
        magnitude = np.abs(value)
        finite = np.isfinite(magnitude)
        self.nonfinite += int((~finite).sum())
        magnitude = magnitude[finite]
        if magnitude.size:
            self.max_abs = max(self.max_abs, float(magnitude.max()))
        self.nonzero += int(np.count_nonzero(magnitude))
        self.tiny += int(np.count_nonzero((magnitude > 0) & (magnitude < FP16_MIN_NORMAL)))

    @property
    def tiny_fraction(self) -> float:
        return self.tiny / self.nonzero if self.nonzero else 0.0


@dataclass
class GraphRanges:
    tensors: dict[str, TensorStats] = field(default_factory=dict)
    producers: dict[str, str] = field(default_factory=dict)  # tensor → node name


def _float_outputs(model: onnx.ModelProto) -> list[str]:
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {
        v.name: v.type.tensor_type.elem_type for v in list(inferred.graph.value_info) + list(inferred.graph.output)
    }
    outputs = [o for n in model.graph.node for o in n.output if o]
    return [o for o in outputs if types.get(o) == onnx.TensorProto.FLOAT]


def capture_ranges(
    path: Path, feeds: Iterable[dict[str, np.ndarray]], on_feed: Callable[[int], None] | None = None
) -> GraphRanges:
    """Run ``path`` on every feed and record each float tensor's statistics; ``on_feed`` is told how many
    feeds are done after each."""
    model = onnx.load(path)
    names = _float_outputs(model)
    session = session_with_outputs(model, names)
    ranges = GraphRanges(producers={o: n.name for n in model.graph.node for o in n.output})
    for done, feed in enumerate(feeds, 1):
        for name, value in zip(names, session.run(names, feed), strict=True):
            ranges.tensors.setdefault(name, TensorStats()).update(value)
        if on_feed is not None:
            on_feed(done)
    return ranges
