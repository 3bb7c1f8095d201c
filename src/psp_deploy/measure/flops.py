"""Floating-point work of a graph, from its Conv / ConvTranspose / Gemm / MatMul shapes.

Counts 2 operations per multiply-add, the convention of the GFLOP/s figures it is
compared with. Element-wise work is left out: it is small, and memory-bound anyway.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from ..bundle import BATCH, ModelRecord

COUNTED = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def _shapes(model: onnx.ModelProto, record: ModelRecord, batch: int) -> dict[str, list[int]]:
    """The shapes of every tensor the counted ops read and write, from one run in ONNX Runtime.

    Static shape inference loses the batch axis through the generator's constant-input Tile
    (its repeats come from Shape ops); running the graph once gives exact shapes for any graph.
    """
    from ..onnx_tools import session_with_outputs

    wanted = {t for n in model.graph.node if n.op_type in COUNTED for t in (*n.input[:2], n.output[0])}
    initializers = {t.name: list(t.dims) for t in model.graph.initializer}
    names = sorted(wanted - set(initializers) - {i.name for i in model.graph.input})
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    session = session_with_outputs(probe, names)
    rng = np.random.default_rng(0)
    feeds = {
        spec.name: rng.standard_normal([batch if d == BATCH else int(d) for d in spec.shape]).astype(np.float32)
        for spec in record.inputs
    }
    shapes = {**initializers, **{name: list(value.shape) for name, value in feeds.items()}}
    shapes.update({name: list(value.shape) for name, value in zip(names, session.run(names, feeds), strict=True)})
    return shapes


def _node_flops(node: onnx.NodeProto, shapes: dict[str, list[int]]) -> float:
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    if node.op_type == "Conv":
        out, weight = shapes[node.output[0]], shapes[node.input[1]]
        return 2.0 * np.prod(out) * np.prod(weight[1:])  # each output: C_in/group · kh · kw multiply-adds
    if node.op_type == "ConvTranspose":
        inp, weight = shapes[node.input[0]], shapes[node.input[1]]
        return 2.0 * np.prod(inp) * weight[1] * np.prod(weight[2:])  # each input pixel spreads to C_out/group · k²
    if node.op_type in ("Gemm", "MatMul"):
        a, out = shapes[node.input[0]], shapes[node.output[0]]
        k = a[-1] if not (node.op_type == "Gemm" and attrs.get("transA", 0)) else a[0]
        return 2.0 * np.prod(out) * k
    return 0.0


def _counted(path: Path, record: ModelRecord, batch: int) -> list[tuple[onnx.NodeProto, float]]:
    model = onnx.load(path)
    shapes = _shapes(model, record, record.batch or batch)
    return [(n, float(_node_flops(n, shapes))) for n in model.graph.node if n.op_type in COUNTED]


def node_flops(path: Path, record: ModelRecord, batch: int = 1) -> dict[str, float]:
    """FLOPs of each counted node, by node name (exported graphs name every node), in one run at ``batch``."""
    counted = _counted(path, record, batch)
    by_name = {node.name: flops for node, flops in counted}
    if len(by_name) != len(counted) or "" in by_name:
        raise ValueError(f"{path.name}: counted nodes need unique names to be told apart")
    return by_name


def graph_flops(path: Path, record: ModelRecord, batch: int = 1) -> float:
    """FLOPs of one run of the graph at ``batch`` (a fixed-batch graph: at its own batch)."""
    return sum(flops for _, flops in _counted(path, record, batch))


def flops_per_image(path: Path, record: ModelRecord) -> float:
    batch = record.batch or 1
    return graph_flops(path, record, batch) / batch
