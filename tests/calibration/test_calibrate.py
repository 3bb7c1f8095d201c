"""FP16 and INT8 graphs: decisions, accuracy against FP32, what they protect against."""

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image
from skimage import data

from psp_deploy.bundle import Bundle
from psp_deploy.calibration import calibrate_bundle
from psp_deploy.calibration.calibrate import make_fp16
from psp_deploy.calibration.data import make_calibration_set
from psp_deploy.calibration.fp16 import Fp16Decisions, decide, to_fp16
from psp_deploy.calibration.ranges import GraphRanges, TensorStats
from psp_deploy.errors import CalibrationError
from psp_deploy.export.checks import unsupported_ops
from psp_deploy.runtime import Pipeline


def run(path, feeds):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)[0]


def test_fp16_hits_its_target_and_keeps_the_epsilons(bundle_copy):
    report = calibrate_bundle(bundle_copy, "fp16", synthetic=8, graphs=("mapping", "synthesis"))
    assert report.passed, report.targets()
    synthesis = next(g for g in report.graphs if g.name == "synthesis")
    assert synthesis.psnr_db >= 40 and synthesis.nonfinite == 0

    bundle = Bundle.open(bundle_copy)
    record = bundle.record("synthesis", "fp16")
    reasons = record.notes["kept_fp32"].values()
    assert sum(r.startswith("epsilon guard (") for r in reasons) == 9  # a demodulation per modulated 3×3 conv at 64²
    model = onnx.load(bundle.model_path("synthesis", "fp16"))
    assert any(t.data_type == TensorProto.FLOAT16 for t in model.graph.initializer)
    assert "Cast" in {n.op_type for n in model.graph.node} and not unsupported_ops(model)
    saved = json.loads((bundle_copy / "reports" / "fp16.json").read_text())
    assert saved["passed"] and saved["notes"]

    with Pipeline.from_bundle(bundle_copy, precision="fp16") as pipeline:
        assert pipeline.precisions == {"encoder": "fp32", "mapping": "fp16", "synthesis": "fp16"}
        assert pipeline.run(data.astronaut()).images.shape == (1, 64, 64, 3)


def test_calibrated_fp16_keeps_tiny_energies_that_naive_fp16_loses(bundle_copy):
    """A small-norm z: its squares underflow FP16 (1e-8 < 6e-8), so a naive FP16 PixelNorm divides by
    the wrong energy; the calibrated graph keeps squares, mean, epsilon and root in FP32."""
    bundle = Bundle.open(bundle_copy)
    make_fp16(bundle, "mapping", np.random.default_rng(1).standard_normal((4, 512)).astype(np.float32))
    small = {"z": (1e-4 * np.random.default_rng(0).standard_normal((1, 512))).astype(np.float32)}
    fp32 = run(bundle.model_path("mapping"), small)
    calibrated = run(bundle_copy / "mapping.fp16.onnx", small)
    naive = bundle_copy / "naive.onnx"
    onnx.save(to_fp16(onnx.load(bundle.model_path("mapping")), Fp16Decisions()), naive)
    scale = np.abs(fp32).max()
    assert np.abs(calibrated - fp32).max() < 0.01 * scale
    assert np.abs(run(naive, small) - fp32).max() > 0.2 * scale


def _toy_graph():
    """x → Mul(x, x) → ReduceMean → Add(1e-8) → Sqrt → Reciprocal → Mul(x, ·) → Add(zero bias) → Mul(big) → y."""
    eps = numpy_helper.from_array(np.array(1e-8, np.float32), "eps")
    zero = numpy_helper.from_array(np.zeros((1, 4), np.float32), "bias")
    big = numpy_helper.from_array(np.array(1e5, np.float32), "big")
    nodes = [
        helper.make_node("Mul", ["x", "x"], ["sq"], name="square"),
        helper.make_node("ReduceMean", ["sq"], ["mean"], name="mean", keepdims=1, axes=[1]),
        helper.make_node("Add", ["mean", "eps"], ["guarded"], name="add_eps"),
        helper.make_node("Sqrt", ["guarded"], ["root"], name="sqrt"),
        helper.make_node("Reciprocal", ["root"], ["inv"], name="reciprocal"),
        helper.make_node("Mul", ["x", "inv"], ["normed"], name="normalize"),
        helper.make_node("Add", ["normed", "bias"], ["biased"], name="add_bias"),
        helper.make_node("Mul", ["biased", "big"], ["y"], name="amplify"),
    ]
    graph = helper.make_graph(
        nodes,
        "toy",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        [eps, zero, big],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_fp16_decisions_by_hand():
    model = _toy_graph()
    ranges = GraphRanges(producers={"y": "amplify", "normed": "normalize"})
    ranges.tensors["y"] = TensorStats(max_abs=1.5e5, nonzero=4)  # beyond FP16's 65504
    ranges.tensors["normed"] = TensorStats(max_abs=1.5, nonzero=4)
    kept = decide(model, ranges).kept_fp32
    assert set(kept) == {"square", "mean", "add_eps", "sqrt", "reciprocal", "amplify"}
    assert "epsilon" in kept["add_eps"] and "1.5e+05" in kept["amplify"]
    assert "add_bias" not in kept  # a zero bias is not an epsilon guard


def test_int8_synthesis_quantizes_symmetrically_and_picks_the_better_method(bundle_copy):
    report = calibrate_bundle(
        bundle_copy, "int8", synthetic=6, graphs=("synthesis",), methods=("minmax", "percentile"), rounds=1
    )
    end_to_end = next(g for g in report.graphs if g.name == "end-to-end")
    assert end_to_end.psnr_db >= 28, report.graphs
    decision = report.decisions["synthesis"]
    plain = [t for t in decision["tried"] if not t["kept_float"]]
    assert {t["method"] for t in plain} == {"minmax", "percentile"}
    assert decision["method"] == max(plain, key=lambda t: t["score"])["method"]

    bundle = Bundle.open(bundle_copy)
    model = onnx.load(bundle.model_path("synthesis", "int8"))
    ops = {n.op_type for n in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops and not unsupported_ops(model)
    initializers = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    quantizers = [initializers[n.input[2]] for n in model.graph.node if n.op_type == "QuantizeLinear"]
    dequantizers = [initializers[n.input[2]] for n in model.graph.node if n.op_type == "DequantizeLinear"]
    assert quantizers and all(z.dtype == np.int8 and (z == 0).all() for z in quantizers)  # symmetric INT8
    assert all((z == 0).all() for z in dequantizers)  # INT8 weights, INT32 biases: every zero point 0
    with Pipeline.from_bundle(bundle_copy, precision="int8") as pipeline:
        assert pipeline.precisions["synthesis"] == "int8"
        assert np.isfinite(pipeline.run(data.astronaut()).codes).all()


def test_int8_refuses_a_grouped_synthesis(bundle_copy):
    manifest = json.loads((bundle_copy / "manifest.json").read_text())
    manifest["modconv"] = {"form": "grouped", "batch": 1}
    (bundle_copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CalibrationError, match="export the bundle with --modconv scaled"):
        calibrate_bundle(bundle_copy, "int8", synthetic=8)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(precision="int4", synthetic=8), "precision must be one of fp16, int8"),
        (dict(precision="fp16"), "either a folder of photos"),
        (dict(precision="fp16", synthetic=2), "at least 4 samples"),
        (dict(precision="fp16", synthetic=8, graphs=("decoder",)), r"unknown graphs \['decoder'\]"),
    ],
)
def test_bad_calibration_arguments(bundle_copy, kwargs, message):
    precision = kwargs.pop("precision")
    with pytest.raises(CalibrationError, match=message):
        calibrate_bundle(bundle_copy, precision, **kwargs)


def test_calibration_set_from_photos(bundles, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    face = data.astronaut()
    for i, img in enumerate([face, face[:, ::-1], face[20:, 10:], face[:480, :480], np.full((64, 64, 3), 9, np.uint8)]):
        Image.fromarray(np.ascontiguousarray(img)).save(photos / f"p{i}.png")
    with Pipeline.from_bundle(bundles("rgb-scaled")[0].root) as pipeline:
        calib = make_calibration_set(pipeline, images=photos, holdout=0.25)
    assert len(calib.images) + len(calib.held_images) == 4  # the faceless photo is skipped
    assert calib.images.shape[1:] == (3, 256, 256) and calib.held_codes.shape[1:] == (10, 512)
    assert -1.0 <= calib.images.min() and calib.images.max() <= 1.0
