"""The benchmark harness: FLOP counts by hand, a small real run, the report. No timing asserted."""

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from psp_deploy.benchmark.flops import graph_flops
from psp_deploy.benchmark.timing import measure
from psp_deploy.bundle import ModelRecord, TensorSpec
from psp_deploy.cli import app

pytestmark = pytest.mark.xdist_group("rgb2")


def test_flops_by_hand(tmp_path):
    w = numpy_helper.from_array(np.zeros((8, 4, 3, 3), np.float32), "w")  # Conv 4→8, 3×3
    wt = numpy_helper.from_array(np.zeros((8, 2, 3, 3), np.float32), "wt")  # ConvTranspose 8→2, stride 2
    g = numpy_helper.from_array(np.zeros((2 * 9 * 9, 5), np.float32), "g")
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["a"], pads=[1, 1, 1, 1]),  # [B, 8, 4, 4]
        helper.make_node("ConvTranspose", ["a", "wt"], ["b"], strides=[2, 2]),  # [B, 2, 9, 9]
        helper.make_node("Flatten", ["b"], ["c"]),
        helper.make_node("MatMul", ["c", "g"], ["y"]),  # [B, 5]
    ]
    graph = helper.make_graph(
        nodes,
        "toy",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 5])],
        [w, wt, g],
    )
    path = tmp_path / "toy.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), path)
    record = ModelRecord("toy.onnx", "", "fp32", 18, [TensorSpec("x", ("batch", 4, 4, 4))], [])
    conv = 2 * (8 * 4 * 4) * (4 * 3 * 3)  # each output: C_in · k² multiply-adds
    deconv = 2 * (8 * 4 * 4) * (2 * 3 * 3)  # each input pixel: C_out · k²
    matmul = 2 * 5 * (2 * 9 * 9)
    assert graph_flops(path, record, batch=3) == 3 * (conv + deconv + matmul)


def test_measure_reports_ordered_statistics():
    calls = []
    latency = measure(lambda: calls.append(1), warmup=2, runs=5)
    assert len(calls) == 7 and latency.runs == 5
    assert 0 <= latency.min <= latency.p50 <= latency.p90 <= latency.p99 and latency.min <= latency.mean


def test_bench_command_writes_results_and_report(bundles, tmp_path):
    out = tmp_path / "results.json"
    result = CliRunner().invoke(
        app,
        [
            "bench",
            str(bundles("rgb-scaled")[0].root),
            "--batch",
            "1,2",
            "--runs",
            "1",
            "--warmup",
            "0",
            "--stages",
            "encode,synthesize",
            "--no-limits",
            "--profile",
            "-o",
            str(out),
            "--report",
            str(tmp_path / "report"),
        ],
    )
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert data["machine"]["model"] and "onnxruntime" in data["versions"]
    rows = {(r["batch"], r["stage"]): r for r in data["results"]}
    assert set(rows) == {(1, "encode"), (1, "synthesize"), (2, "encode"), (2, "synthesize")}
    assert rows[(2, "synthesize")]["gflops_per_s"] > 0 and data["gflop_per_image"]["encoder"] > 10
    report = (tmp_path / "report" / "results.md").read_text()
    assert "| onnxruntime fp32 (scaled) | 2 | synthesize |" in report
    assert (tmp_path / "report" / "results-throughput.png").exists()
    synthesis_ops = data["profiles"]["onnxruntime fp32"]["synthesis"]
    assert next(iter(synthesis_ops)) == "Conv" and "| Conv |" in report, synthesis_ops


def test_bench_refuses_unknown_stages(bundles, tmp_path):
    result = CliRunner().invoke(app, ["bench", str(bundles("rgb-scaled")[0].root), "--stages", "warp"])
    assert result.exit_code == 2 and "unknown stages ['warp']" in result.output
