"""The checks every exported graph must pass before it enters a bundle."""

from __future__ import annotations

import onnx

from ..bundle import BATCH, TensorSpec
from ..errors import ExportError
from .oplist import TENSORRT_ONNX_OPS

SMALL_INITIALIZER = 4096  # elements; larger ones are weights, never shape arithmetic


def unsupported_ops(model: onnx.ModelProto) -> set[str]:
    return {n.op_type for n in model.graph.node} - TENSORRT_ONNX_OPS


def skeleton(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with its weights turned into typed inputs: the same shapes to infer, no bytes.

    Strict shape inference on a full 1 GB model spends seconds copying weights between
    Python and C++; weights never take part in shape arithmetic, so their types suffice.
    """
    g = model.graph
    big = [
        t for t in g.initializer if onnx.helper.tensor_dtype_to_np_dtype(t.data_type) and _numel(t) > SMALL_INITIALIZER
    ]
    big_names = {t.name for t in big}
    weight_inputs = [onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in big]
    graph = onnx.helper.make_graph(
        list(g.node),
        g.name,
        list(g.input) + weight_inputs,
        list(g.output),
        initializer=[t for t in g.initializer if t.name not in big_names],
    )
    return onnx.helper.make_model(graph, opset_imports=list(model.opset_import), ir_version=model.ir_version)


def _numel(tensor: onnx.TensorProto) -> int:
    n = 1
    for d in tensor.dims:
        n *= d
    return n


def check_graph(model: onnx.ModelProto, name: str) -> None:
    """The TensorRT op list, onnx.checker and strict shape inference."""
    bad = unsupported_ops(model)
    if bad:
        raise ExportError(f"{name} graph uses ops TensorRT's ONNX parser does not support: {sorted(bad)}")
    stripped = skeleton(model)
    try:
        onnx.checker.check_model(stripped, full_check=False)
        onnx.shape_inference.infer_shapes(stripped, check_type=True, strict_mode=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as err:
        raise ExportError(f"{name} graph is not valid ONNX: {err}") from err


def _declared(value: onnx.ValueInfoProto) -> TensorSpec:
    tensor = value.type.tensor_type
    shape = tuple(d.dim_value if d.HasField("dim_value") else BATCH for d in tensor.shape.dim)
    return TensorSpec(value.name, shape, onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name)


def check_io(model: onnx.ModelProto, name: str, inputs: list[TensorSpec], outputs: list[TensorSpec]) -> None:
    """The graph's inputs and outputs are exactly the ones the manifest will state: names (so each
    unique), shapes and dtypes. Runs with or without the parity check: a graph that fails it is
    never written."""
    for io, values, stated in (("inputs", model.graph.input, inputs), ("outputs", model.graph.output, outputs)):
        declared = [_declared(v) for v in values]
        if declared != list(stated):
            raise ExportError(f"{name} graph {io} are {_show(declared)}, the manifest would say {_show(stated)}")


def _show(tensors: list[TensorSpec]) -> str:
    return ", ".join(f"{t.name} {t.dtype}{list(t.shape)}" for t in tensors)
