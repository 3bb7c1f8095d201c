"""Exported graphs: parity with the torch reference, the op list, the bundle contract."""

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from typer.testing import CliRunner

from psp_deploy.cli import app
from psp_deploy.errors import ExportError, OutputError
from psp_deploy.export import export_bundle, writer
from psp_deploy.export.checks import check_graph, unsupported_ops
from psp_deploy.export.graphs import graph_specs
from psp_deploy.export.oplist import TENSORRT_ONNX_OPS
from psp_deploy.export.parity import TOLERANCE, check_parity, compare, ort_session
from psp_deploy.export.to_onnx import export_graph
from psp_deploy.files import sha256_file


def test_scaled_bundle_matches_torch(bundles):
    bundle, results = bundles("rgb-scaled")
    by_graph = {(r.graph, r.batch): r for r in results}
    assert set(by_graph) == {("encoder", 1), ("mapping", 1), ("mapping", 3), ("synthesis", 1), ("synthesis", 3)}
    for r in results:
        assert r.worst <= TOLERANCE, r
    assert bundle.record("synthesis").batch is None and bundle.record("encoder").batch is None


@pytest.mark.parametrize("batch", [1, 3])
def test_grouped_synthesis_matches_torch(grouped_synthesis, batch):
    path, spec, _ = grouped_synthesis(batch)
    assert check_parity(spec, path, batch).worst <= TOLERANCE
    model = onnx.load(path)
    groups = {
        a.i
        for n in model.graph.node
        if n.op_type in ("Conv", "ConvTranspose")
        for a in n.attribute
        if a.name == "group"
    }
    assert batch in groups  # the modulated convs: ONE grouped conv each, group = batch
    assert unsupported_ops(model) == set()


def test_scaled_synthesis_runs_any_batch(bundles, synthetic):
    bundle, _ = bundles("rgb-scaled")
    net, _ = synthetic("rgb")
    spec = graph_specs(net, None)[2]
    session = ort_session(bundle.model_path("synthesis"))
    for batch in (1, 2, 5):
        result = compare(spec, session, batch, seed=batch)
        assert result.worst <= TOLERANCE, result


def test_grouped_graph_refuses_another_batch(grouped_synthesis):
    path, spec, _ = grouped_synthesis(3)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with pytest.raises(Exception, match=r"index: 0 Got: 2 Expected: 3"):
        session.run(None, {"codes": np.zeros((2, 10, 512), np.float32)})


def test_every_op_is_in_the_tensorrt_list(bundles):
    bundle, _ = bundles("rgb-scaled")
    for graph in ("encoder", "mapping", "synthesis"):
        model = onnx.load(bundle.model_path(graph))
        assert unsupported_ops(model) == set(), graph
        assert {"Conv", "Gemm"} & {n.op_type for n in model.graph.node}


def test_dynamic_batch_graphs_compute_no_shapes(bundles):
    """Nothing in the encoder reads a tensor's shape at run time, and the scaled synthesis does not repeat
    its constant input over the batch (on an H200 such shape arithmetic kept ONNX Runtime's NHWC CUDA
    sessions out of CUDA graphs); their batch is dynamic. (This 64² model's synthesis still computes shapes
    to repeat pixels up to its 256² output; a 1024² model average-pools instead.)"""
    bundle, _ = bundles("rgb-scaled")
    encoder, synthesis = (onnx.load(bundle.model_path(graph)) for graph in ("encoder", "synthesis"))
    assert not {"Shape", "Size", "Tile", "Expand"} & {n.op_type for n in encoder.graph.node}
    assert "Tile" not in {n.op_type for n in synthesis.graph.node}
    for model in (encoder, synthesis):
        assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param


def test_op_list_check_refuses_unknown_ops():
    node = onnx.helper.make_node("NonZero", ["x"], ["y"])
    graph = onnx.helper.make_graph(
        [node],
        "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.INT64, [1, None])],
    )
    with pytest.raises(ExportError, match=r"does not support: \['NonZero'\]"):
        check_graph(onnx.helper.make_model(graph), "toy")
    assert "NonZero" not in TENSORRT_ONNX_OPS


def test_manifest_describes_the_bundle(bundles, synthetic):
    bundle, _ = bundles("rgb-scaled")
    net, _ = synthetic("rgb")
    data = json.loads((bundle.root / "manifest.json").read_text())
    assert data["schema_version"] == 1
    assert data["config"]["n_styles"] == 10 and data["config"]["output_size"] == 64
    assert data["modconv"] == {"form": "scaled", "batch": None, "upsample": "transpose"}
    assert data["preprocess"]["kind"] == "rgb" and data["preprocess"]["mean"] == [0.5, 0.5, 0.5]
    synthesis = data["models"]["synthesis"]["fp32"]
    assert synthesis["inputs"] == [{"name": "codes", "shape": ["batch", 10, 512], "dtype": "float32"}]
    assert [o["name"] for o in synthesis["outputs"]] == ["image", "image_256"]
    assert data["models"]["encoder"]["fp32"]["inputs"][0]["shape"] == ["batch", 3, 256, 256]
    for graph in ("encoder", "mapping", "synthesis"):
        record = data["models"][graph]["fp32"]
        assert sha256_file(bundle.root / record["file"]) == record["sha256"]
        assert record["opset"] == 18
    np.testing.assert_array_equal(bundle.latent_avg(), net.latent_avg.numpy())


def test_parity_failure_is_loud(bundles, synthetic):
    bundle, _ = bundles("rgb-scaled")
    net, _ = synthetic("rgb")
    spec = graph_specs(net, None)[1]
    with pytest.raises(ExportError, match=r"mapping graph does not match the torch reference at batch 2"):
        check_parity(spec, bundle.model_path("mapping"), 2, tolerance=1e-12)


def test_refuses_non_empty_output_without_force_in_each_interfaces_words(small_ckpt, tmp_path):
    """Python names its parameter (force=True), the command its flag (--force)."""
    out = tmp_path / "bundle"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ExportError, match=r"not empty and holds no bundle this psp-deploy reads; pass force=True to"):
        export_bundle(small_ckpt, out)
    result = CliRunner().invoke(app, ["export", str(small_ckpt), "-o", str(out)])
    assert result.exit_code == 2 and "pass --force to replace it" in result.output, result.output
    assert "force=True" not in result.output and "Traceback" not in result.output
    assert (out / "keep.txt").read_text() == "mine"


def _as_if_exported_from(checkpoint, bundle_dir):
    """The shared test bundle was exported from the in-memory net (export_net, no file to hash): record the
    checkpoint file the same net was saved to as its source, as export_bundle would have."""
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    manifest["source"] = {"checkpoint": checkpoint.name, "sha256": sha256_file(checkpoint)}
    (bundle_dir / "manifest.json").write_text(json.dumps(manifest))


def test_a_rerun_keeps_the_same_export_and_what_was_added_to_it(small_ckpt, bundle_copy, monkeypatch):
    """The README's Python example reruns as written: the folder already holds this very export (same
    checkpoint, forms, opset, psp-deploy), so it is kept, calibrated graphs and engines included, and
    nothing is read or exported; another export there is refused, naming the difference."""
    _as_if_exported_from(small_ckpt, bundle_copy)
    (bundle_copy / "reports").mkdir()
    (bundle_copy / "reports" / "int8.json").write_text("{}")  # what calibrate added since
    before = {p: p.stat().st_mtime_ns for p in bundle_copy.rglob("*")}

    def no_export(*_args, **_kwargs):
        raise AssertionError("the checkpoint was read again")

    monkeypatch.setattr(writer, "build_psp", no_export)
    bundle, results = export_bundle(small_ckpt, bundle_copy, modconv="scaled")
    assert bundle.root == bundle_copy and results == [] and bundle.record("synthesis").batch is None
    assert {p: p.stat().st_mtime_ns for p in bundle_copy.rglob("*")} == before

    result = CliRunner().invoke(app, ["export", str(small_ckpt), "-o", str(bundle_copy), "--modconv", "scaled"])
    assert result.exit_code == 0 and "already holds this export" in result.output, result.output

    with pytest.raises(ExportError, match=r"holds another export \(modconv scaled, not grouped; batch any, not 1\); "):
        export_bundle(small_ckpt, bundle_copy)  # grouped, the default
    with pytest.raises(ExportError, match=r"holds another export \(opset 18, not 19\); pass force=True"):
        export_bundle(small_ckpt, bundle_copy, modconv="scaled", opset=19)
    (bundle_copy / "mapping.onnx").write_bytes(b"edited")
    with pytest.raises(ExportError, match=r"holds this export, damaged \(.*mapping.onnx: contents do not match"):
        export_bundle(small_ckpt, bundle_copy, modconv="scaled")


def test_an_unwritable_output_folder_is_refused_before_any_work(small_ckpt, tmp_path, unwritable_dir, monkeypatch):
    """A read-only or immutable folder, or one inside it: "cannot write to …", exit 2, before the checkpoint
    is read (no traceback after the export's minutes of work), and nothing left behind."""

    def no_export(*_args, **_kwargs):
        raise AssertionError("the checkpoint was read")

    monkeypatch.setattr(writer, "build_psp", no_export)
    for out in (unwritable_dir, unwritable_dir / "bundle"):
        result = CliRunner().invoke(app, ["export", str(small_ckpt), "-o", str(out)])
        assert result.exit_code == 2, result.output
        assert f"error: cannot write to {unwritable_dir}" in result.output and "Traceback" not in result.output
        with pytest.raises(OutputError, match=f"cannot write to {unwritable_dir}"):
            export_bundle(small_ckpt, out)
    assert list(unwritable_dir.iterdir()) == [] and [p.name for p in tmp_path.iterdir()] == ["locked"]


def test_interrupted_export_leaves_nothing(small_ckpt, tmp_path, monkeypatch):
    def interrupted(*_args, **_kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(writer, "export_graph", interrupted)
    with pytest.raises(KeyboardInterrupt):
        export_bundle(small_ckpt, tmp_path / "bundle")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(modconv="fused"), "^modconv must be one of grouped, scaled"),
        (dict(batch=0), "^batch must be at least 1"),
        (dict(batch=2, modconv="scaled"), "^batch fixes the grouped form's batch; .*: leave batch out"),
        (dict(opset=11), "^opset must be one of"),
    ],
)
def test_bad_arguments_fail_before_any_work(small_ckpt, tmp_path, kwargs, message):
    with pytest.raises(ExportError, match=message):
        export_bundle(small_ckpt, tmp_path / "b", **kwargs)


@pytest.mark.parametrize("name", ["e4e", "w"])  # the W+ backbone: in test_output_sizes' 256 bundle
def test_other_encoder_types_export_with_parity(synthetic, tmp_path, name):
    net, _ = synthetic(name)
    spec = graph_specs(net, None)[0]
    path = tmp_path / "encoder.onnx"
    model = export_graph(spec, 18)
    check_graph(model, "encoder")
    assert not {"Shape", "Size"} & {n.op_type for n in model.graph.node}  # no shapes read at run time
    path.write_bytes(model.SerializeToString())
    result = check_parity(spec, path, 1)
    assert result.worst <= TOLERANCE
    # every head keeps the same contract: codes [B, n_styles, 512]
    out = ort_session(path).run(None, {"image": spec.sample(1)[0].numpy()})[0]
    assert out.shape == (1, 10, 512)


def test_epsilons_survive_export(bundles, synthetic):
    """PixelNorm and demodulation keep their 1e-8: a zero input gives zero, not NaN (as in torch)."""
    bundle, _ = bundles("rgb-scaled")
    net, _ = synthetic("rgb")
    zero = np.zeros((1, 512), np.float32)
    w = ort_session(bundle.model_path("mapping")).run(None, {"z": zero})[0]
    with torch.no_grad():
        expected = net.mapping(torch.from_numpy(zero)).numpy()
    assert np.isfinite(w).all() and np.abs(w - expected).max() <= TOLERANCE
    model = onnx.load(bundle.model_path("synthesis"))
    producer = {o: n for n in model.graph.node for o in n.output}
    roots = [n for n in model.graph.node if n.op_type == "Sqrt"]
    assert roots and all(producer[n.input[0]].op_type == "Add" for n in roots)  # rsqrt(energy + eps)
