"""FP16 graphs that keep in FP32 exactly what FP16 cannot hold.

Two kinds of nodes stay FP32: (1) the epsilon-guarded normalisations, PixelNorm
(x·rsqrt(mean(x²) + 1e-8)) and the demodulation (rsqrt(Σw² + 1e-8)), whose 1e-8
vanishes in FP16 — zero energy then gives inf and NaN instead of a finite value; (2)
nodes whose outputs, measured on calibration data, exceed FP16's range (with headroom)
or have many nonzero values below its smallest normal number. The rest becomes FP16
with FP32 graph inputs and outputs (onnxconverter-common's converter).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from ..errors import CalibrationError
from .ranges import GraphRanges

FP16_MAX = 65504.0
RANGE_HEADROOM = 8.0  # keep activations 8× below FP16's max: sums inside kernels need room
TINY_FRACTION = 0.05  # more than 5 % of nonzero values subnormal in FP16: too much lost
EPS_LIMIT = 1e-5  # an Add of a constant this small is an epsilon guard
REDUCTIONS = {"ReduceMean", "ReduceSum", "ReduceSumSquare", "MatMul", "Gemm"}
SQUARES = {"Pow", "Mul"}
ROOTS = {"Sqrt", "Reciprocal", "Div"}


@dataclass
class Fp16Decisions:
    kept_fp32: dict[str, str] = field(default_factory=dict)  # node name → reason

    def keep(self, node: str, reason: str) -> None:
        self.kept_fp32.setdefault(node, reason)


def _constants(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    values = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer if np.prod(t.dims) <= 16}
    for node in model.graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    values[node.output[0]] = numpy_helper.to_array(attr.t)
    return values


def epsilon_guards(model: onnx.ModelProto, decisions: Fp16Decisions) -> None:
    """Mark each tiny-epsilon Add, the squares and reductions feeding it and the roots after it."""
    producer = {o: n for n in model.graph.node for o in n.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    constants = _constants(model)
    for node in model.graph.node:
        if node.op_type != "Add":
            continue
        eps = [float(constants[i].ravel()[0]) for i in node.input if i in constants and constants[i].size == 1]
        if not eps or not 0.0 < eps[0] <= EPS_LIMIT:  # a positive scalar: a zero bias is no guard
            continue
        decisions.keep(node.name, "epsilon guard (the 1e-8 is zero in FP16)")
        for up in (producer[i] for i in node.input if i in producer):  # upstream: reduction, then square
            if up.op_type in REDUCTIONS:
                decisions.keep(up.name, "sums the squares an epsilon guards")
                up = next((producer[i] for i in up.input if i in producer and producer[i].op_type in SQUARES), None)
            if up is not None and up.op_type in SQUARES:
                decisions.keep(up.name, "squares what an epsilon guards")
        frontier = list(consumers.get(node.output[0], []))
        while frontier:  # downstream: the root / reciprocal
            down = frontier.pop()
            if down.op_type in ROOTS and down.name not in decisions.kept_fp32:
                decisions.keep(down.name, "root of an epsilon-guarded energy")
                frontier += consumers.get(down.output[0], [])


def range_limits(ranges: GraphRanges, decisions: Fp16Decisions) -> None:
    for tensor, stats in ranges.tensors.items():
        node = ranges.producers.get(tensor)
        if node is None:
            continue
        if stats.max_abs > FP16_MAX / RANGE_HEADROOM:
            decisions.keep(
                node, f"output reaches {stats.max_abs:.3g} (FP16 max {FP16_MAX:.0f}, headroom ×{RANGE_HEADROOM:g})"
            )
        elif stats.tiny_fraction > TINY_FRACTION:
            decisions.keep(node, f"{stats.tiny_fraction:.0%} of nonzero outputs below FP16's smallest normal")


def decide(model: onnx.ModelProto, ranges: GraphRanges) -> Fp16Decisions:
    decisions = Fp16Decisions()
    epsilon_guards(model, decisions)
    range_limits(ranges, decisions)
    return decisions


def to_fp16(model: onnx.ModelProto, decisions: Fp16Decisions) -> onnx.ModelProto:
    """Convert everything but the kept nodes; graph inputs and outputs stay FP32.

    onnxconverter-common's converter, not onnxruntime.transformers': the latter routes every
    tensor between two kept nodes through FP16 (a Cast pair), which zeroes the epsilons.
    """
    from onnxconverter_common.float16 import convert_float_to_float16

    model = outputs_not_consumed(model)
    del model.graph.value_info[:]  # stale FP32 types would contradict the converted graph
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # it warns for every weight it rounds to FP16's range
        converted = convert_float_to_float16(model, keep_io_types=True, node_block_list=sorted(decisions.kept_fp32))
    return topologically_sorted(converted)


def outputs_not_consumed(model: onnx.ModelProto) -> onnx.ModelProto:
    """Give graph outputs that other nodes also read (the synthesized image feeds the pooling)
    an Identity of their own: the converter mistypes a graph output consumed inside the graph."""
    consumed = {i for n in model.graph.node for i in n.input}
    for output in model.graph.output:
        if output.name not in consumed:
            continue
        inner = output.name + "_inner"
        for node in model.graph.node:
            node.output[:] = [inner if o == output.name else o for o in node.output]
            node.input[:] = [inner if i == output.name else i for i in node.input]
        model.graph.node.append(onnx.helper.make_node("Identity", [inner], [output.name], name=f"{output.name}_out"))
    return model


def topologically_sorted(model: onnx.ModelProto) -> onnx.ModelProto:
    """The converter appends its Cast nodes at the end; ONNX (and TensorRT) want producers first."""
    nodes = list(model.graph.node)
    ready = {i.name for i in model.graph.input} | {t.name for t in model.graph.initializer} | {""}
    ordered: list[onnx.NodeProto] = []
    while nodes:
        pending = []
        for node in nodes:
            if all(i in ready for i in node.input):
                ordered.append(node)
                ready.update(node.output)
            else:
                pending.append(node)
        if len(pending) == len(nodes):
            stuck = pending[0]
            missing = [i for i in stuck.input if i not in ready]
            raise CalibrationError(
                f"the FP16 graph {model.graph.name!r} cannot be ordered: node {stuck.name!r} ({stuck.op_type}) "
                f"reads {missing}, which no node produces before it (a cycle or a dangling input); "
                "the FP16 conversion is broken for this graph, keep it in FP32 (calibrate --graphs)"
            )
        nodes = pending
    del model.graph.node[:]
    model.graph.node.extend(ordered)
    return model
