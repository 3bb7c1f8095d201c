"""Every output size the loader accepts exports, verifies and runs: 256 and 512 here, 64 in the
shared bundles, 1024 in test_full_size. Small synthetic models (channel_multiplier 1) keep it cheap."""

import numpy as np
import onnx
import pytest
import torch

from psp_deploy.config import PspConfig
from psp_deploy.errors import ExportError
from psp_deploy.export import export_net, writer
from psp_deploy.export.graphs import graph_specs
from psp_deploy.export.parity import TOLERANCE, check_parity
from psp_deploy.models.forms import set_forms
from psp_deploy.models.psp import Psp
from psp_deploy.models.synthetic import synthetic_psp
from psp_deploy.runtime import Pipeline
from tests.directions.test_sefa import check_sefa


def test_256_bundle_exports_verifies_and_runs(tmp_path):
    """At 256² no pooling is needed: image_256 must still be an output of its own. The encoder is
    the W+ backbone (the cheapest to export), so this export also checks that type against torch."""
    config = PspConfig(encoder_type="BackboneEncoderUsingLastLayerIntoWPlus", output_size=256, channel_multiplier=1)
    net = synthetic_psp(config, seed=3)
    source = {"checkpoint": "w-plus-256", "sha256": "-"}
    bundle, results = export_net(net, tmp_path / "b", source=source)  # the CLI's defaults: grouped, batch 1
    assert {r.graph for r in results} == {"encoder", "mapping", "synthesis"}
    assert all(r.worst <= TOLERANCE for r in results), results
    synthesis = bundle.record("synthesis")
    assert [(t.name, t.shape) for t in synthesis.outputs] == [
        ("image", (1, 3, 256, 256)),
        ("image_256", (1, 3, 256, 256)),
    ]
    assert [o.name for o in onnx.load(bundle.model_path("synthesis")).graph.output] == ["image", "image_256"]
    assert not {"Shape", "Size"} & {n.op_type for n in onnx.load(bundle.model_path("encoder")).graph.node}

    face = np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    with Pipeline.from_bundle(bundle.root) as pipeline:
        result = pipeline.run(face, align=False)
        image, pooled = pipeline.synthesize(result.codes)
    assert result.images.shape == (1, 256, 256, 3) and result.codes.shape == (1, 14, 512)
    assert 10 < result.images.std() < 120
    np.testing.assert_array_equal(image, pooled)
    check_sefa(bundle.root, net, range(14), "0-13")  # every style, the last read by the last to_rgb


def test_scaled_512_synthesis_exports_and_matches_torch(tmp_path):
    """512²: one 2×2 average pool to image_256. Only the synthesis graph: the encoder does not
    depend on the output size beyond n_styles, and exporting it is the expensive part. Default
    initialisation: synthetic_psp's statistics would cost more than the export, for parity alone."""
    torch.manual_seed(4)
    net = Psp(PspConfig(output_size=512, channel_multiplier=1)).eval()
    set_forms(net, modconv="scaled", fir="depthwise")
    try:
        spec = graph_specs(net, None)[2]
        record = writer.write_graph(spec, tmp_path, 18, {})
    finally:
        set_forms(net, modconv="grouped", fir="reference")
    assert [t.shape for t in record.outputs] == [("batch", 3, 512, 512), ("batch", 3, 256, 256)]
    assert check_parity(spec, tmp_path / record.file, 1).worst <= TOLERANCE


def _values(specs, names):
    return [
        onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, list(t.shape))
        for t, name in zip(specs, names, strict=True)
    ]


def _passthrough(spec, _opset):
    """A stand-in export with the spec's I/O, except that the last output's name is every output's:
    what the exporter produced at 256² (one tensor, two outputs named image_256)."""
    inputs = _values(spec.inputs, [t.name for t in spec.inputs])
    outputs = _values(spec.outputs, [spec.outputs[-1].name] * len(spec.outputs))
    node = onnx.helper.make_node("Identity", [spec.inputs[0].name], [spec.outputs[-1].name])
    return onnx.helper.make_model(onnx.helper.make_graph([node], spec.name, inputs, outputs))


def test_structural_checks_run_without_verify(small_psp, tmp_path, monkeypatch):
    """--no-verify skips the comparison with torch, never the I/O check: no bundle with a broken graph."""
    monkeypatch.setattr(writer, "export_graph", _passthrough)
    monkeypatch.setattr(writer, "check_graph", lambda *_: None)  # the stand-ins' shapes do not add up
    duplicated = r"synthesis graph outputs are image_256 float32\[.*\], image_256 float32\[.*would say image "
    with pytest.raises(ExportError, match=duplicated):
        export_net(small_psp, tmp_path / "b", source={}, verify=False)
    assert list(tmp_path.iterdir()) == []
