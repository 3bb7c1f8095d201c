"""ONNX graph tools for the stages that look inside graphs (calibration's ranges, the benchmark's
FLOP count). Needs onnx and onnxruntime: runtime/ never imports it (the runtime needs no onnx).
"""

from __future__ import annotations

from collections.abc import Iterable

import onnx
import onnxruntime as ort


def session_with_outputs(model: onnx.ModelProto, names: Iterable[str]) -> ort.InferenceSession:
    """A CPU session over ``model`` that also returns each of ``names`` (float tensors inside it).

    ``model``'s outputs are extended in place (copy it first to keep it as it was). Graph
    optimizations are off, so every tensor keeps its name and is computed as the graph says.
    """
    existing = {o.name for o in model.graph.output}
    model.graph.output.extend(
        onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None) for n in names if n not in existing
    )
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
