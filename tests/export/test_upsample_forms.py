"""The phase form of the upsampling convs, exported: same numbers as torch's official forms, only
TensorRT-parsable operators, and no dense transposed convolution left in the graph."""

import onnx
import pytest

from psp_deploy.export import writer
from psp_deploy.export.graphs import graph_specs
from psp_deploy.export.parity import TOLERANCE, check_parity
from psp_deploy.models.forms import set_forms


def _transposed_convs(path):
    """(group, weight shape or None when computed at run time) of every ConvTranspose node."""
    model = onnx.load(path)
    shapes = {t.name: list(t.dims) for t in model.graph.initializer}
    group = lambda node: next((a.i for a in node.attribute if a.name == "group"), 1)  # noqa: E731
    return [(group(n), shapes.get(n.input[1])) for n in model.graph.node if n.op_type == "ConvTranspose"]


@pytest.mark.parametrize("modconv,batch", [("scaled", None), ("grouped", 2)])
def test_phase_synthesis_matches_torch_without_dense_transposed_convs(small_psp, tmp_path, modconv, batch):
    set_forms(small_psp, modconv=modconv, fir="depthwise", upsample="phase")
    try:
        spec = graph_specs(small_psp, batch)[2]
        record = writer.write_graph(spec, tmp_path, 18, {})  # refuses operators TensorRT cannot parse
        assert check_parity(spec, tmp_path / record.file, batch or 3).worst <= TOLERANCE
    finally:
        set_forms(small_psp, modconv="grouped", fir="reference", upsample="transpose")
    convs = _transposed_convs(tmp_path / record.file)
    # what is left: the interleaves (one-hot 2×2) and the ToRGB skip's FIR upsampling (4×4), all depthwise
    assert convs and all(shape is not None and shape[1] == 1 and shape[2] in (2, 4) for _, shape in convs), convs
    assert any(shape[2] == 2 for _, shape in convs)


@pytest.mark.parametrize(
    "options,message",
    [
        (dict(upsample="subpixel"), "^upsample must be one of transpose, phase, folded"),  # Python's words
        (dict(modconv="scaled", batch=4), "the scaled form takes any batch: leave batch out"),
    ],
)
def test_bad_export_options_are_refused_before_any_work(small_ckpt, tmp_path, options, message):
    from psp_deploy.errors import ExportError
    from psp_deploy.export import export_bundle

    with pytest.raises(ExportError, match=message):
        export_bundle(small_ckpt, tmp_path / "b", **options)
    assert not (tmp_path / "b").exists()


def _image_error(spec, path, batch):
    """Max abs difference of ONNX Runtime's and OpenVINO's images from torch's official forms, relative to
    the largest pixel."""
    import numpy as np
    import openvino
    import torch

    from psp_deploy.export.parity import ort_session
    from psp_deploy.models.forms import official_forms

    codes = spec.sample(batch, 7)[0]
    with torch.no_grad(), official_forms(spec.module):
        official = spec.module(codes)[0].numpy()
    images = [
        ort_session(path).run(None, {"codes": codes.numpy()})[0],
        openvino.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})(codes.numpy())[0],
    ]
    return [float(np.abs(image - official).max() / np.abs(official).max()) for image in images]


def _upsampling_convs(path):
    """How many ConvTranspose nodes pad by 2: the folded kernels' (the ToRGB skip's FIR upsampling pads by 1)."""
    model = onnx.load(path)
    pads = lambda node: next((list(a.ints) for a in node.attribute if a.name == "pads"), [])  # noqa: E731
    return sum(pads(n) == [2, 2, 2, 2] for n in model.graph.node if n.op_type == "ConvTranspose")


@pytest.mark.parametrize("modconv,batch", [("scaled", None), ("grouped", 2)])
def test_folded_synthesis_matches_the_official_algorithm_without_a_blur_pass(small_psp, tmp_path, modconv, batch):
    """Each blur folded into its transposed conv: the images of ONNX Runtime and OpenVINO within 1e-4 of the
    official algorithm (relative to the largest pixel), no 4×4 blur convolution left, one folded transposed conv
    per upsampling layer."""
    set_forms(small_psp, modconv=modconv, fir="depthwise", upsample="folded", constants="folded")
    try:
        spec = graph_specs(small_psp, batch)[2]
        record = writer.write_graph(spec, tmp_path, 18, {})  # refuses operators TensorRT cannot parse
        errors = _image_error(spec, tmp_path / record.file, batch or 3)
    finally:
        set_forms(small_psp, modconv="grouped", fir="reference", upsample="transpose", constants="apart")
    assert max(errors) <= 1e-4, errors
    model = onnx.load(tmp_path / record.file)
    shapes = {t.name: list(t.dims) for t in model.graph.initializer}
    blurs = [n for n in model.graph.node if n.op_type == "Conv" and shapes.get(n.input[1], [0])[-1] == 4]
    assert not blurs
    assert _upsampling_convs(tmp_path / record.file) == len(small_psp.decoder.to_rgbs)


def _passes(path):
    """Per operator, the elementwise nodes and pads whose output is a feature map (spatial, more than 1×1)."""
    import collections

    model = onnx.load(path)
    values = [*model.graph.value_info, *model.graph.output]
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in values}
    elementwise = {"Add", "Mul", "Div", "Sub", "LeakyRelu", "Pad"}
    spatial = lambda name: len(shapes.get(name, [])) == 4 and shapes[name][2] > 1  # noqa: E731
    return collections.Counter(n.op_type for n in model.graph.node if n.op_type in elementwise and spatial(n.output[0]))


def test_folded_constants_cut_elementwise_passes(small_psp, tmp_path):
    """Scaled form, transposed upsampling: folding the gains and biases removes one Mul per styled conv (its √2) and
    one Add per upsampling conv (its bias, added by the blur's conv) and per ToRGB (by its 1×1 conv); the blur pads
    inside its conv. The images stay within 1e-4 of the official algorithm."""
    counts = {}
    for constants in ("apart", "folded"):
        set_forms(small_psp, modconv="scaled", fir="depthwise", upsample="transpose", constants=constants)
        (tmp_path / constants).mkdir()
        try:
            spec = graph_specs(small_psp, None)[2]
            record = writer.write_graph(spec, tmp_path / constants, 18, {})
            assert max(_image_error(spec, tmp_path / constants / record.file, 2)) <= 1e-4
        finally:
            set_forms(small_psp, modconv="grouped", fir="reference", upsample="transpose", constants="apart")
        counts[constants] = _passes(tmp_path / constants / record.file)
    decoder = small_psp.decoder
    styled, upsampling, to_rgb = len(decoder.convs) + 1, len(decoder.to_rgbs), len(decoder.to_rgbs) + 1
    assert counts["apart"] - counts["folded"] == {"Mul": styled, "Add": upsampling + to_rgb}, counts
    assert counts["folded"]["LeakyRelu"] == styled and counts["folded"]["Pad"] == 0
