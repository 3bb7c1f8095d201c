"""The benchmark harness: FLOP counts by hand, a small real run, the report. No timing asserted."""

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from psp_deploy.benchmark.flops import graph_flops
from psp_deploy.benchmark.harness import busy_rows
from psp_deploy.benchmark.report import latency_table, warnings_section
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
    assert 0 <= latency.min <= latency.p50 <= latency.p90 <= latency.p99 <= latency.max
    assert latency.min <= latency.mean <= latency.max


def test_bench_command_writes_results_and_report(bundles, tmp_path):
    """No --output: the JSON goes beside the report. Not a terminal (CliRunner): progress comes as lines."""
    out = tmp_path / "report" / "bench-results.json"
    result = CliRunner().invoke(
        app,
        [
            "bench",
            str(bundles("rgb-scaled")[0].root),
            "--backend",
            "onnxruntime",
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
    assert "benchmarking: 1/4 onnxruntime fp32 batch 1: encode" in result.output
    assert "benchmarking: 4/4 onnxruntime fp32 batch 2: synthesize" in result.output
    assert f"results: {out}" in result.output and not (tmp_path / "bench-results.json").exists()
    report = (tmp_path / "report" / "bench-results.md").read_text()
    assert "| onnxruntime fp32 (scaled) | 2 | synthesize |" in report
    assert "against the official path" not in report and "machine's limit" not in report  # no empty tables
    assert (tmp_path / "report" / "bench-results-throughput.png").exists()
    synthesis_ops = data["profiles"]["onnxruntime fp32"]["synthesis"]
    assert next(iter(synthesis_ops)) == "Conv" and "| Conv |" in report, synthesis_ops


def test_bench_refuses_unknown_stages(bundles, tmp_path):
    result = CliRunner().invoke(app, ["bench", str(bundles("rgb-scaled")[0].root), "--stages", "warp"])
    assert result.exit_code == 2 and "unknown stages ['warp']" in result.output


def _row(backend, precision, stage, gflops, min_s=1.0, max_s=1.1):
    latency = {"min": min_s, "p50": min_s, "p90": max_s, "p99": max_s, "max": max_s, "mean": min_s, "runs": 5}
    return {
        "backend": backend,
        "precision": precision,
        "modconv": "scaled",
        "batch": 1,
        "stage": stage,
        "latency_s": latency,
        "images_per_s": 1 / min_s,
        "gflops_per_s": gflops,
    }


def test_each_rate_is_held_against_the_conv_rate_of_its_own_precision():
    results = {
        "results": [_row("onnxruntime", "fp32", "synthesize", 50.0), _row("onnxruntime", "int8", "synthesize", 150.0)],
        "conv_gflops_per_s": {"fp32": {"onnxruntime": 100.0, "torch": 400.0}, "int8": {"onnxruntime": 300.0}},
    }
    fp32, int8 = latency_table(results)[2:]
    assert fp32.endswith("| 50.0 | 50% |") and int8.endswith("| 150.0 | 50% |")  # not "150% of FP32"


def test_a_busy_machine_is_warned_about_naming_the_rows():
    rows = [_row("onnxruntime", "fp32", "encode", None), _row("openvino", "int8", "e2e", None, min_s=1.0, max_s=2.4)]
    warnings = busy_rows(rows)
    assert len(warnings) == 1
    assert warnings[0].startswith("openvino int8 batch 1 e2e: the slowest run took 2.4× the fastest")
    assert warnings_section({"warnings": warnings}) == ["## Warnings", "", f"- {warnings[0]}", ""]
