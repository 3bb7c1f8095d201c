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
        (dict(upsample="subpixel"), "^upsample must be one of transpose, phase"),  # Python's words, not a flag
        (dict(modconv="scaled", batch=4), "the scaled form takes any batch: leave batch out"),
    ],
)
def test_bad_export_options_are_refused_before_any_work(small_ckpt, tmp_path, options, message):
    from psp_deploy.errors import ExportError
    from psp_deploy.export import export_bundle

    with pytest.raises(ExportError, match=message):
        export_bundle(small_ckpt, tmp_path / "b", **options)
    assert not (tmp_path / "b").exists()
