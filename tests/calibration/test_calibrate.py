"""FP16 and INT8 graphs: decisions, accuracy against FP32, what they protect against."""

import json
import re

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image
from skimage import data
from typer.testing import CliRunner

from psp_deploy.bundle import GRAPHS, Bundle
from psp_deploy.calibration import calibrate_bundle
from psp_deploy.calibration.calibrate import make_fp16
from psp_deploy.calibration.convert import _int8_score
from psp_deploy.calibration.data import make_calibration_set
from psp_deploy.calibration.fp16 import Fp16Decisions, decide, to_fp16
from psp_deploy.calibration.int8 import QUANTIZED_OPS
from psp_deploy.calibration.ranges import GraphRanges, TensorStats
from psp_deploy.calibration.report import psnr_db
from psp_deploy.cli import app
from psp_deploy.engines import build_engines
from psp_deploy.errors import CalibrationError
from psp_deploy.export.checks import unsupported_ops
from psp_deploy.measure.flops import node_flops
from psp_deploy.runtime import Pipeline

pytestmark = pytest.mark.xdist_group("calibration")  # see tests/conftest.py


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

    photo = bundle_copy.parent / "astronaut.png"
    Image.fromarray(data.astronaut()).save(photo)
    args = ["run", str(bundle_copy), str(photo), "-o", str(bundle_copy.parent / "out"), "--precision", "fp16"]
    result = CliRunner().invoke(app, args)  # the default backend must be one that runs fp16
    assert result.exit_code == 0 and "backend: onnxruntime" in result.output, result.output


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
    told = []
    report = calibrate_bundle(
        bundle_copy,
        "int8",
        synthetic=6,
        graphs=("synthesis",),
        methods=("minmax", "percentile"),
        rounds=1,
        stages=lambda stage, done, total, note="": told.append((stage, done, total, note)),
    )
    int8 = [(done, total, note) for stage, done, total, note in told if stage == "int8 synthesis"]
    # one counted stage: a unit per feed each attempt's calibration pass reads (6 samples, 2 held back: 4), and
    # one for its ranges and score; 2 methods + 1 round = 3 attempts of 5 units
    assert {total for _, total, _ in int8} == {15} and int8[-1][0] == 15
    assert [done for done, _, _ in int8] == sorted(done for done, _, _ in int8)
    assert {"minmax calibration", "percentile calibration"} <= {note for _, _, note in int8}
    assert [stage for stage, *_ in dict.fromkeys((s, 0) for s, *_ in told)] == [
        "synthesizing calibration faces",
        "int8 synthesis",
        "evaluating on held-back samples",
    ]
    end_to_end = next(g for g in report.graphs if g.name == "end-to-end")
    assert end_to_end.psnr_db >= 28, report.graphs
    decision = report.decisions["synthesis"]
    plain = [t for t in decision["tried"] if not t["kept_float"]]
    assert {t["method"] for t in plain} == {"minmax", "percentile"}
    assert decision["method"] == max(plain, key=lambda t: t["score"])["method"]
    assert report.decision_lines()[0].startswith(f"synthesis: {decision['method']} calibration won (")

    bundle = Bundle.open(bundle_copy)
    model = onnx.load(bundle.model_path("synthesis", "int8"))
    ops = {n.op_type for n in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops and not unsupported_ops(model)
    initializers = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    quantizers = [initializers[n.input[2]] for n in model.graph.node if n.op_type == "QuantizeLinear"]
    dequantizers = [initializers[n.input[2]] for n in model.graph.node if n.op_type == "DequantizeLinear"]
    assert quantizers and all(z.dtype == np.int8 and (z == 0).all() for z in quantizers)  # symmetric INT8
    assert all((z == 0).all() for z in dequantizers)  # INT8 weights, INT32 biases: every zero point 0
    # Light nodes stay float: the modulations (Gemm/MatMul, ~0.5 MFLOP) and the 1×1 ToRGB convs; the nodes
    # carrying more than the 5% budget each are quantized unless a sensitivity round kept them for accuracy.
    float_graph = onnx.load(bundle.model_path("synthesis"))
    weights = {t.name: list(t.dims) for t in float_graph.graph.initializer}
    counted = [n for n in float_graph.graph.node if n.op_type in QUANTIZED_OPS]
    light = [n.name for n in counted if n.op_type in ("Gemm", "MatMul") or weights[n.input[1]][2:] == [1, 1]]
    dequantized = {n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    int8_nodes = {n.name for n in model.graph.node if n.op_type in QUANTIZED_OPS and n.input[1] in dequantized}
    assert light and not int8_nodes & set(light)
    flops = node_flops(bundle.model_path("synthesis"), bundle.record("synthesis"))
    heavy = {name for name, f in flops.items() if f > 0.05 * sum(flops.values())}
    assert heavy - set(decision["kept_float"]) <= int8_nodes
    light_share = sum(flops[n] for n in decision["light"]["nodes"]) / sum(flops.values())
    assert light_share == pytest.approx(decision["light"]["flops_share"]) and light_share <= 0.05  # the budget
    with Pipeline.from_bundle(bundle_copy, precision="int8") as int8, Pipeline.from_bundle(bundle_copy) as fp32:
        assert int8.precisions["synthesis"] == "int8"
        codes = fp32.run(data.astronaut()).codes
        quantized, exact = int8.synthesize(codes)[0], fp32.synthesize(codes)[0]
    assert not np.array_equal(quantized, exact) and psnr_db(quantized, exact) >= 28  # the int8 graph ran


def test_engines_are_recorded_at_the_precision_each_graph_runs(bundle_copy):
    """Build and runtime share one rule: graphs calibration left out run, and are built, in FP32."""
    calibrate_bundle(bundle_copy, "int8", synthetic=4, graphs=("synthesis",), methods=("minmax",), rounds=0)
    engines = build_engines(bundle_copy, "onnxruntime", "int8")
    assert {(e.graph, e.precision) for e in engines} == {
        ("encoder", "fp32"),
        ("mapping", "fp32"),
        ("synthesis", "int8"),
    }
    with Pipeline.from_bundle(bundle_copy, precision="int8") as pipeline:
        assert {g: net.path.parent.name for g, net in pipeline.nets.items()} == dict.fromkeys(GRAPHS, "onnxruntime")


def _fixed_codes_encoder(x: str, codes_name: str, codes: np.ndarray) -> onnx.ModelProto:
    """An "encoder" whose output is ``codes`` for every input image (its input only sets the batch)."""
    nodes = [
        helper.make_node("ReduceMean", [x], ["mean"], keepdims=1, axes=[1, 2, 3]),
        helper.make_node("Reshape", ["mean", "shape"], ["per_row"]),
        helper.make_node("Mul", ["per_row", "zero"], ["nothing"]),
        helper.make_node("Add", ["nothing", "fixed"], [codes_name]),
    ]
    constants = [
        numpy_helper.from_array(np.array([-1, 1, 1], np.int64), "shape"),
        numpy_helper.from_array(np.zeros((), np.float32), "zero"),
        numpy_helper.from_array(codes[None].astype(np.float32), "fixed"),
    ]
    inputs = [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["n", 3, 256, 256])]
    outputs = [helper.make_tensor_value_info(codes_name, TensorProto.FLOAT, ["n", *codes.shape])]
    graph = helper.make_graph(nodes, "fixed_codes", inputs, outputs, constants)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_int8_encoder_attempts_are_scored_by_the_images_of_their_codes(bundles, tmp_path):
    """An encoder attempt scores the PSNR of the images the FP32 synthesis makes of its codes (the gate is end
    to end), not the codes' own agreement."""
    bundle = bundles("rgb-scaled")[0]
    photo = data.astronaut()
    with Pipeline.from_bundle(bundle.root) as fp32:
        x = np.stack([fp32.prepare(p, align=False)[0] for p in (photo, photo[:, ::-1].copy())])
        codes = fp32.encode(x)
        shifted = codes[0] + np.random.default_rng(0).standard_normal(codes[0].shape).astype(np.float32) * 0.1
        reference, images = fp32.synthesize(codes)[0], fp32.synthesize(np.stack([shifted, shifted]))[0]
    record = bundle.record("encoder")
    attempt = tmp_path / "attempt.onnx"
    onnx.save(_fixed_codes_encoder(record.inputs[0].name, record.outputs[0].name, shifted), attempt)
    with _int8_score(bundle, "encoder", x) as score:
        expected = np.mean([psnr_db(r, t) for r, t in zip(reference, images, strict=True)])
        assert score(attempt) == pytest.approx(expected, abs=1e-3) and expected < 60


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
        (dict(precision="fp16", synthetic=8, align=False), "is for photos"),
    ],
)
def test_bad_calibration_arguments(bundle_copy, kwargs, message):
    precision = kwargs.pop("precision")
    with pytest.raises(CalibrationError, match=message):
        calibrate_bundle(bundle_copy, precision, **kwargs)


def _photo_folder(folder):
    """Four photos with a face, one without (p4) and a file that is no image (broken.png)."""
    folder.mkdir()
    face = data.astronaut()
    for i, img in enumerate([face, face[:, ::-1], face[20:, 10:], face[:480, :480], np.full((64, 64, 3), 9, np.uint8)]):
        Image.fromarray(np.ascontiguousarray(img)).save(folder / f"p{i}.png")
    (folder / "broken.png").write_bytes(b"not a PNG")
    return folder


def test_calibration_photos_left_out_are_named_with_their_reason(bundles, tmp_path):
    """Never silently: each unusable photo is named with why; too few usable ones are refused, naming them."""
    photos = _photo_folder(tmp_path / "photos")
    with Pipeline.from_bundle(bundles("rgb-scaled")[0].root) as pipeline:
        calib = make_calibration_set(pipeline, images=photos, holdout=0.25)
        assert len(calib.images) + len(calib.held_images) == 4
        assert calib.images.shape[1:] == (3, 256, 256) and calib.held_codes.shape[1:] == (10, 512)
        assert -1.0 <= calib.images.min() and calib.images.max() <= 1.0
        assert [(d.photo, d.reason) for d in calib.dropped] == [
            (str(photos / "broken.png"), "not an image (or a format Pillow cannot identify)"),
            (str(photos / "p4.png"), "no face found in the photo"),
        ]
        assert calib.source == f"4 of 6 photos from {photos}" and not calib.notes

        for name in ("p0.png", "p1.png"):
            (photos / name).unlink()
        message = r"only 2 of 4 photos usable; calibration needs at least 4 \(left out: .*broken.png: not an image"
        with pytest.raises(CalibrationError, match=message + r".*p4.png: no face found in the photo\)"):
            make_calibration_set(pipeline, images=photos)


def test_already_aligned_crops_are_used_as_they_are_with_no_align(bundles, tmp_path):
    """align=False (--no-align): `psp-deploy align`'s 256² crops go in as they are, not aligned a second time;
    aligning them anyway is pointed out."""
    from psp_deploy.runtime.align import FaceAligner
    from psp_deploy.runtime.io import read_image
    from psp_deploy.runtime.preprocess import preprocess

    crops = tmp_path / "aligned"
    crops.mkdir()
    aligner, face = FaceAligner(), data.astronaut()
    for i, photo in enumerate([face, face[:, ::-1], face[20:, 10:], face[:480, :480]]):
        Image.fromarray(aligner.align(np.ascontiguousarray(photo)).image).save(crops / f"c{i}.png")
    with Pipeline.from_bundle(bundles("rgb-scaled")[0].root) as pipeline:
        as_they_are = make_calibration_set(pipeline, images=crops, align=False, holdout=0.25)
        realigned = make_calibration_set(pipeline, images=crops, holdout=0.25)
    expected = np.stack([preprocess(read_image(crops / f"c{i}.png"), pipeline.config) for i in range(4)])
    np.testing.assert_array_equal(np.concatenate([as_they_are.held_images, as_they_are.images]), expected)
    assert as_they_are.source.endswith("(already aligned: used as they are)") and not as_they_are.notes
    assert not np.array_equal(np.concatenate([realigned.held_images, realigned.images]), expected)
    assert realigned.notes and "pass --no-align (align=False)" in realigned.notes[0]


def test_progress_lines_carry_the_time_so_far_and_an_eta():
    from psp_deploy.calibration.progress import as_lines

    lines, now = [], iter([0.0, 0.0, 30.0, 60.0, 60.0])
    report = as_lines(lines.append, clock=lambda: next(now))
    for done in (0, 1, 2, 2):  # a repeat is said once
        report("int8 synthesis", done, 4, "minmax calibration")
    report("int8 synthesis", 4, 4, "minmax won")
    assert lines == [
        "int8 synthesis: minmax calibration 0/4",
        "int8 synthesis: minmax calibration 1/4 (0:00:30, eta 0:01:30)",
        "int8 synthesis: minmax calibration 2/4 (0:01:00, eta 0:01:00)",
        "int8 synthesis: minmax won 4/4",
    ]


def _cli(*args):
    return CliRunner().invoke(app, ["calibrate", *map(str, args)])


def test_cli_names_the_photos_it_left_out_and_shows_progress_bars_with_an_eta(bundle_copy, monkeypatch):
    """On a terminal, each long stage is a bar with run's columns (done/total, elapsed, ETA), not a line per
    photo; the photos left out are listed after it, each with its reason."""
    from psp_deploy.cli import common

    photos = _photo_folder(bundle_copy.parent / "photos")
    monkeypatch.setattr(common.console, "_force_terminal", True)
    result = _cli(bundle_copy, "--precision", "fp16", "--images", photos, "--graphs", "mapping")
    assert result.exit_code == 0, result.output
    out = result.output
    assert re.search(r"aligning calibration photos .*6/6 +0:00:\d\d eta", out), out
    assert re.search(r"fp16 mapping: converted .*4/4 +0:00:\d\d eta", out), out
    assert re.search(r"evaluating on held-back samples .*eta", out), out
    assert "calibrating: aligning calibration photos 1/6" not in out  # no line per photo
    assert "left out 2 photos (used for neither calibration nor the accuracy figures):" in out
    assert f"✗ {photos / 'broken.png'}: not an image" in out and f"✗ {photos / 'p4.png'}: no face found" in out
    assert f"(4 of 6 photos from {photos})" in out
    saved = json.loads((bundle_copy / "reports" / "fp16.json").read_text())
    assert [d["photo"] for d in saved["dropped"]] == [str(photos / "broken.png"), str(photos / "p4.png")]


def test_cli_summary_reads_unambiguously_with_progress_lines_off_a_terminal(bundle_copy):
    """Not a terminal (CliRunner): progress comes as lines. Targets say which side passes, the nodes kept in
    FP32 are listed, and 1 held-back sample out of 5 is warned about."""
    result = _cli(bundle_copy, "--precision", "fp16", "--synthetic", 5, "--graphs", "synthesis", "--holdout", 0.2)
    assert result.exit_code == 0, result.output
    out = result.output
    assert "calibrating: synthesizing calibration faces 5/5" in out and "calibrating: fp16 synthesis" in out
    assert "calibrating: evaluating on held-back samples" in out
    assert re.search(r"synthesis PSNR \(mean\) ≥ 40 dB: \d+\.\d pass", out), out
    assert "synthesis non-finite values ≤ 0: 0 pass" in out and "≥/≤" not in out
    assert re.search(r"synthesis: \d+ nodes kept in FP32: node_\w+, ", out), out
    assert "warning: only 1 held-back sample (holdout 0.2)" in out
    assert f"report: {bundle_copy / 'reports' / 'fp16.json'}" in out


def test_target_verdicts_name_the_passing_side():
    from psp_deploy.calibration.report import AccuracyReport, GraphAccuracy

    graphs = [
        GraphAccuracy("end-to-end", 4, 0.1, 0, psnr_db=26.5),
        GraphAccuracy("encoder", 4, 0.1, 0, cosine_min=0.995),
    ]
    decisions = {
        "synthesis": {
            "method": "entropy",
            "light": {"nodes": ["se_fc", "head"], "budget": 0.05, "flops_share": 0.0123},
            "kept_float": ["conv_a", "conv_b"],
            "tried": [
                {"method": "minmax", "kept_float": [], "score": 25.0},
                {"method": "entropy", "kept_float": [], "score": 26.0},
                {"method": "entropy", "kept_float": ["conv_a", "conv_b"], "score": 26.5},
            ],
            "score": "mean image PSNR (dB)",
        }
    }
    report = AccuracyReport("int8", "onnxruntime-cpu", "test", 4, graphs, decisions)
    assert [t["verdict"] for t in report.targets()] == [
        "end-to-end PSNR (mean) ≥ 28 dB: 26.5 MISSED by 1.5 dB",
        "encoder codes cosine (worst sample) ≥ 0.99: 0.9950 pass",
    ]
    graphs[0].psnr_db = 27.98  # a miss the usual digits would round to nothing
    assert report.targets()[0]["verdict"] == "end-to-end PSNR (mean) ≥ 28 dB: 27.980 MISSED by 0.020 dB"
    assert report.decision_lines() == [
        "synthesis: entropy calibration won (mean image PSNR (dB): minmax 25, entropy 26)",
        "synthesis: 2 light nodes in float (1.23% of the multiply-adds, within the 5% budget)",
        "synthesis: 2 nodes kept in float for accuracy: conv_a, conv_b",
    ]


def test_cli_fp16_conversion_failure_is_an_error_not_a_traceback(bundle_copy, monkeypatch):
    """A converter that leaves a node reading a tensor nothing produces (a dangling input)."""
    import onnxconverter_common.float16 as float16

    real = float16.convert_float_to_float16

    def broken(model, **kwargs):
        converted = real(model, **kwargs)
        converted.graph.node.append(helper.make_node("Identity", ["lost"], ["orphan"], name="stray"))
        return converted

    monkeypatch.setattr(float16, "convert_float_to_float16", broken)
    result = _cli(bundle_copy, "--precision", "fp16", "--synthetic", 4, "--graphs", "mapping")
    assert result.exit_code == 2, result.output
    assert "error: the FP16 graph" in result.output
    assert "node 'stray' (Identity) reads ['lost'], which no node produces" in result.output
