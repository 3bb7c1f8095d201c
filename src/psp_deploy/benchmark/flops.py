"""Floating-point work of a graph, from its Conv / ConvTranspose / Gemm / MatMul shapes.

Counts 2 operations per multiply-add, the convention of the GFLOP/s figures it is
compared with. Element-wise work is left out: it is small, and memory-bound anyway.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from ..bundle import BATCH, ModelRecord


def _shapes(model: onnx.ModelProto) -> dict[str, list[int]]:
    inferred = onnx.shape_inference.infer_shapes(model)
    shapes = {}
    for value in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        dims = value.type.tensor_type.shape.dim
        if dims and all(d.HasField("dim_value") for d in dims):
            shapes[value.name] = [d.dim_value for d in dims]
    for init in model.graph.initializer:
        shapes[init.name] = list(init.dims)
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


def graph_flops(path: Path, record: ModelRecord, batch: int = 1) -> float:
    """FLOPs of one run of the graph at ``batch`` (a fixed-batch graph: at its own batch)."""
    model = onnx.load(path, load_external_data=False)
    for value in model.graph.input:
        spec = next((s for s in record.inputs if s.name == value.name), None)
        if spec is not None:
            for dim, size in zip(value.type.tensor_type.shape.dim, spec.shape, strict=True):
                if size == BATCH:
                    dim.dim_value = batch
    shapes = _shapes(model)
    return float(
        sum(
            _node_flops(n, shapes) for n in model.graph.node if n.op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul")
        )
    )


def flops_per_image(path: Path, record: ModelRecord) -> float:
    batch = record.batch or 1
    return graph_flops(path, record, batch) / batch
