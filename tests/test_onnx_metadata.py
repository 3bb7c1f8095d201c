"""Reading an ONNX file's metadata_props without its weights."""

import onnx
import pytest

from psp_deploy.onnx_metadata import read_metadata


def _model(props: dict[str, str]) -> onnx.ModelProto:
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2])
    weight = onnx.helper.make_tensor("w", onnx.TensorProto.FLOAT, [2], [1.0, 2.0])
    node = onnx.helper.make_node("Mul", ["x", "w"], ["y"])
    model = onnx.helper.make_model(onnx.helper.make_graph([node], "g", [x], [y], initializer=[weight]))
    model.doc_string = "fields before and after the graph: all skipped"
    onnx.helper.set_model_props(model, props)
    return model


@pytest.mark.parametrize("props", [{}, {"a": "1"}, {"psp_deploy.config": '{"n_styles": 10}', "ünï": "", "": "x" * 300}])
def test_reads_what_onnx_reads(tmp_path, props):
    path = tmp_path / "m.onnx"
    onnx.save(_model(props), path)
    assert read_metadata(path) == props


def test_reads_a_bundle_graph(bundles):
    path = bundles("rgb-scaled")[0].model_path("synthesis")
    expected = {p.key: p.value for p in onnx.load(path).metadata_props}
    assert read_metadata(path) == expected and "psp_deploy.modconv" in expected
