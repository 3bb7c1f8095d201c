"""The benchmark harness: FLOP counts by hand, a small real run with graphs alone bound on the CPU, the report,
the GPU facts and refusals that a CPU machine can check. No timing asserted."""

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from psp_deploy.benchmark.gpu import cuda_problem, gpu_slug
from psp_deploy.benchmark.harness import busy_rows
from psp_deploy.benchmark.report import graphs_section, latency_table, speedup_section, tf32_line, warnings_section
from psp_deploy.benchmark.rows import Row
from psp_deploy.bundle import Bundle, ModelRecord, TensorSpec
from psp_deploy.cli import app
from psp_deploy.machine import parse_nvidia_smi
from psp_deploy.measure.flops import graph_flops
from psp_deploy.measure.timing import measure
from psp_deploy.runtime.backends.onnxruntime import OnnxRuntimeBackend
from psp_deploy.runtime.backends.onnxruntime.bound import BoundGraph

REPO = Path(__file__).resolve().parents[2]
NO_CUDA = cuda_problem()  # None where ONNX Runtime runs on a GPU: there the refusals below cannot happen

pytestmark = pytest.mark.xdist_group("benchmark")  # see tests/conftest.py


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


def test_measure_reports_ordered_statistics_and_synchronises_every_call():
    calls, syncs = [], []
    latency = measure(lambda: calls.append(1), warmup=2, runs=5, sync=lambda: syncs.append(len(calls)))
    assert len(calls) == 7 and latency.runs == 5
    assert syncs == [1, 2, 3, 4, 5, 6, 7]  # after each call, before the next starts
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
    assert data["machine"]["model"] and "onnxruntime" in data["versions"] and "gpu" not in data
    rows = {(r["batch"], r["stage"], r["part"]): r for r in data["results"]}
    parts = ("pipeline", "graphs", "host")  # graphs alone: bound with "cpu" OrtValues, as on a GPU
    assert set(rows) == {(b, s, p) for b in (1, 2) for s in ("encode", "synthesize") for p in parts}
    assert all(r["device"] == "cpu" and r["tf32"] is False for r in data["results"])
    assert data["pipelines"]["onnxruntime fp32"]["device"] == "cpu" and data["synchronised_by"] is None
    assert rows[(2, "synthesize", "pipeline")]["gflops_per_s"] > 0 and data["gflop_per_image"]["encoder"] > 10
    host, pipeline, alone = (rows[(2, "synthesize", p)]["latency_s"] for p in ("host", "pipeline", "graphs"))
    assert host["mean"] == pytest.approx(pipeline["mean"] - alone["mean"]) and alone["mean"] > 0
    assert "benchmarking: 1/4 onnxruntime fp32 batch 1: encode" in result.output
    assert "benchmarking: 4/4 onnxruntime fp32 batch 2: synthesize" in result.output
    assert f"results: {out}" in result.output and not (tmp_path / "bench-results.json").exists()
    report = (tmp_path / "report" / "bench-results.md").read_text()
    assert "| onnxruntime fp32 (scaled) | 2 | synthesize | pipeline |" in report
    assert "| onnxruntime fp32 (scaled) | 2 | synthesize | graphs alone |" in report
    # a share of the pipeline, or "≈0 (within noise)" where the graphs alone timed slower (two cores, noisy)
    host_row = r"\| onnxruntime fp32 \(scaled\) \| 2 \| synthesize \| host overhead (\(\d+% of|≈0 \(within)"
    assert re.search(host_row, report)
    assert "against the official path" not in report and "machine's limit" not in report  # no empty tables
    # the bundle's own record of its source, never a blanket "synthetic weights"
    source = Bundle.open(bundles("rgb-scaled")[0].root).manifest.source
    assert data["bundle"]["source"] == source and "synthetic weights" not in report
    assert f"exported from {source['checkpoint']} (sha256 {source['sha256'][:12]}…)" in report
    assert (tmp_path / "report" / "bench-results-throughput.png").exists()
    synthesis_ops = data["profiles"]["onnxruntime fp32"]["synthesis"]
    assert next(iter(synthesis_ops)) == "Conv" and "| Conv |" in report, synthesis_ops

    again = CliRunner().invoke(app, ["bench", str(bundles("rgb-scaled")[0].root), "--report", str(out.parent)])
    assert again.exit_code == 2 and f"{out} exists: pass --force" in again.output, again.output
    assert json.loads(out.read_text()) == data  # nothing overwritten


@pytest.mark.parametrize(
    "args, message",
    [
        (["--stages", "warp"], "unknown stages ['warp']"),
        (["--tf32"], "--tf32 is a mode of NVIDIA tensor cores: it needs --device cuda"),
        (["--device", "cuda", "--stages", "align"], "align is CPU work (dlib) whatever the device"),
        pytest.param(
            ["--device", "cuda"],
            f"--device cuda needs an NVIDIA GPU with onnxruntime-gpu: {NO_CUDA}",
            marks=pytest.mark.skipif(NO_CUDA is None, reason="ONNX Runtime runs on this machine's GPU"),
        ),
    ],
)
def test_bench_refuses_what_it_cannot_measure(bundles, args, message):
    result = CliRunner().invoke(app, ["bench", str(bundles("rgb-scaled")[0].root), *args])
    assert result.exit_code == 2 and message in result.output, result.output


def test_bench_refuses_every_combination_before_measuring_any(bundles, tmp_path):
    """A backend or precision that cannot run is refused before the ones that can are measured (no
    "loading" step), and a mistyped bundle path is named as missing."""
    root = str(bundles("rgb-scaled")[0].root)  # FP32 graphs only
    cases = [
        (["--backend", "onnxruntime", "--precision", "fp32,bf16"], "onnxruntime does not run bf16"),
        (["--backend", "onnxruntime,openvinoo"], "unknown backend 'openvinoo'"),
        (["--backend", "onnxruntime", "--precision", "fp32,int8"], "int8"),
        (["--batch", "1,0"], "batch sizes must be at least 1, got [1, 0]"),
    ]
    for args, message in cases:
        result = CliRunner().invoke(app, ["bench", root, "--stages", "encode", "--runs", "1", *args])
        assert result.exit_code == 2 and message in result.output and "loading" not in result.output, result.output
    missing = CliRunner().invoke(app, ["bench", str(tmp_path / "nowhere")])
    assert missing.exit_code == 2 and "no such bundle folder" in missing.output, missing.output


@pytest.mark.skipif(NO_CUDA is None, reason="this machine can run make gpu-check: the refusal is for the others")
def test_make_gpu_check_refuses_a_machine_without_a_cuda_gpu():
    run = subprocess.run(["make", "gpu-check", f"PYTHON={sys.executable}"], cwd=REPO, capture_output=True, text=True)
    assert run.returncode == 2, run.stderr  # make passes the script's exit code 2 on as its own
    assert f"gpu-check: this machine cannot run the GPU check: {NO_CUDA}" in run.stderr
    assert "[1/8] preflight" in run.stderr and "[2/8]" not in run.stderr


def test_gpu_check_refuses_cleanly_where_onnxruntime_is_missing():
    # make gpu-check runs with the system's Python, which may have no onnxruntime at all: exit 2, not a traceback
    hide = "import runpy, sys; sys.modules['onnxruntime'] = None; sys.argv = ['gpu_check.py']; "
    run = subprocess.run(
        [sys.executable, "-c", hide + "runpy.run_path('benchmarks/gpu_check.py', run_name='__main__')"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 2 and "gpu-check: this machine cannot run the GPU check:" in run.stderr, run.stderr


def test_gpu_profile_refuses_bad_input_before_any_gpu_work(bundles, tmp_path):
    script = [sys.executable, str(REPO / "benchmarks" / "gpu_profile.py")]
    bundle = str(bundles("rgb-scaled")[0].root)  # FP32 only
    cases = [([str(tmp_path)], "not a bundle"), ([bundle, "--runs", "0"], "at least 1"), ([bundle], "has no fp16")]
    for args, message in cases:
        run = subprocess.run([*script, *args], capture_output=True, text=True)
        assert run.returncode == 2 and message in run.stderr, (args, run.stderr)


def test_tf32_line_says_what_ran_as_each_row_recorded_it():
    fp32, fp16 = _row("onnxruntime", "fp32", "e2e", None), {**_row("onnxruntime", "fp16", "e2e", None), "tf32": True}
    asked_off, asked_on = {"tf32": False}, {"tf32": True}
    assert tf32_line({"settings": asked_off, "results": [fp32]}) == "off for FP32 graphs (IEEE FP32)"
    assert tf32_line({"settings": asked_off, "results": [fp32, fp16]}) == (
        "off for FP32 graphs (IEEE FP32); as they ran, TF32 was on (the FP32 nodes they keep may run TF32) in "
        "onnxruntime fp16"
    )
    assert tf32_line({"settings": asked_on, "results": [{**fp32, "tf32": True}, fp16]}) == "on"
    assert tf32_line({"settings": asked_on, "results": [fp32]}) == "on; as they ran, TF32 was off in onnxruntime fp32"


def test_graphs_bound_once_compute_what_the_backend_does(bundles):
    bundle = bundles("rgb-scaled")[0]
    codes = np.random.default_rng(0).standard_normal((2, bundle.config.n_styles, 512)).astype(np.float32)
    with OnnxRuntimeBackend.from_bundle(bundle, "synthesis", "fp32") as net:
        expected = net.infer({"codes": codes})
        bound = BoundGraph(net.session, {"codes": codes}, net.record.outputs, "cpu")
        bound()
        written = [value.data_ptr() for value in bound.binding.get_outputs()]
    assert written == [value.data_ptr() for value in bound.outputs.values()]  # into the buffers allocated once
    for name, value in bound.outputs.items():
        np.testing.assert_allclose(value.numpy(), expected[name], atol=1e-5)


def test_nvidia_smi_facts_and_file_name():
    query = "NVIDIA H100 80GB HBM3, 550.54.15, 81559, 9.0\nNVIDIA H100 80GB HBM3, 550.54.15, 81559, 9.0\n"
    banner = "| NVIDIA-SMI 550.54.15    Driver Version: 550.54.15    CUDA Version: 12.4     |"
    facts = parse_nvidia_smi(query, banner)
    assert facts == {
        "name": "NVIDIA H100 80GB HBM3",
        "driver": "550.54.15",
        "memory_mib": "81559",
        "compute_capability": "9.0",
        "count": 2,
        "driver_cuda": "12.4",
    }
    assert parse_nvidia_smi("", "") == {} and gpu_slug(facts["name"]) == "nvidia-h100-80gb-hbm3"


def test_tf32_mode_is_set_inside_and_restored_after():
    import torch

    from psp_deploy.benchmark.baseline import tf32_mode

    conv, matmul = torch.backends.cudnn.conv, torch.backends.cuda.matmul
    before = (conv.fp32_precision, matmul.fp32_precision)
    for enabled, mode in ((True, "tf32"), (False, "ieee")):
        with tf32_mode(enabled):
            assert (conv.fp32_precision, matmul.fp32_precision) == (mode, mode)
        assert (conv.fp32_precision, matmul.fp32_precision) == before


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


def test_end_to_end_is_held_against_the_official_path_at_the_same_precision_where_it_ran():
    official = [_row("torch-official", p, "e2e", None, min_s=s) for p, s in (("fp32", 4.0), ("fp16", 2.0))]
    ours = [_row("onnxruntime", "fp16", "e2e", None, min_s=0.5), _row("onnxruntime", "int8", "e2e", None, min_s=1.0)]
    table = speedup_section({"results": [*ours, *official]})
    assert "| onnxruntime fp16 (scaled) | 1 | 0.500 | torch fp16 | 2.000 | 4.0× |" in table  # not against fp32
    assert "| onnxruntime int8 (scaled) | 1 | 1.000 | torch fp32 | 4.000 | 4.0× |" in table  # no torch int8


def test_encode_plus_synthesize_is_the_work_of_both_over_their_time_against_the_conv_rate():
    rows = [_row("openvino", "bf16", "encode", 300.0, min_s=1.0)]
    rows += [_row("openvino", "bf16", "synthesize", 100.0, min_s=3.0)]
    rows += [_row("openvino", "bf16", "e2e", 150.0), _row("openvino", "fp32", "encode", 100.0)]  # no synthesize row
    table = graphs_section({"results": rows, "conv_gflops_per_s": {"bf16": {"openvino": 200.0}}})
    # (300 GFLOP + 300 GFLOP) in 4 s = 150 GFLOP/s, 75% of 200; e2e (with alignment) is not part of it
    assert table[4:] == ["| openvino bf16 (scaled) | 1 | 4.000 | 150.0 | 75% |", ""]


def test_a_busy_machine_is_warned_about_naming_the_rows():
    rows = [_row("onnxruntime", "fp32", "encode", None), _row("openvino", "int8", "e2e", None, min_s=1.0, max_s=2.4)]
    warnings = busy_rows([Row.from_json(r) for r in rows])
    assert len(warnings) == 1
    assert warnings[0].startswith("openvino int8 batch 1 e2e: the slowest run took 2.4× the fastest")
    assert warnings_section({"warnings": warnings}) == ["## Warnings", "", f"- {warnings[0]}", ""]


def _host_row(p50, mean, share):
    row = _row("onnxruntime", "fp32", "e2e", None)
    latency = {"p50": p50, "mean": mean}
    return {**row, "part": "host", "latency_s": latency, "share_of_pipeline": share, "images_per_s": None}


def test_a_host_overhead_below_zero_is_reported_as_noise_never_as_a_negative_measurement(tmp_path):
    """Pipeline − graphs alone below zero (the graphs alone timed slower): noise, not a negative cost."""
    from psp_deploy.benchmark.report import host_overhead, write_report

    noisy, real = _host_row(-0.099, -0.01, -0.11), _host_row(0.012, 0.013, 0.03)
    table = latency_table({"results": [noisy, real]})
    assert table[2] == "| onnxruntime fp32 (scaled) | 1 | e2e | host overhead ≈0 (within noise) | ≈0 |  | ≈0 |  |  |  |"
    assert (
        table[3]
        == "| onnxruntime fp32 (scaled) | 1 | e2e | host overhead (3% of pipeline) | 0.012 |  | 0.013 |  |  |  |"
    )
    assert host_overhead(Row.from_json(noisy)) == "host overhead p50 ≈0 (within noise)"
    assert host_overhead(Row.from_json(real)) == "host overhead p50 0.012s (3% of the pipeline)"

    results = {
        "results": [noisy],
        "settings": {"warmup": 1, "runs": 5},
        "machine": {"model": "test CPU", "logical_cores": 2, "flags": ["avx2"]},
        "versions": {"onnxruntime": "1"},
        "bundle": {"config": {"task": "ffhq_encode", "output_size": 64}},
        "gflop_per_image": {"encoder": 1.0, "synthesis": 1.0},
    }
    report = write_report(results, tmp_path, "bench", "psp-deploy bench b").read_text()
    assert "within noise" in report and not re.search(r"[-−]0\.\d|[-−]\d+%", report), report


def test_the_roofline_draws_limits_of_the_precisions_measured_only(monkeypatch):
    """torch's BF16 single-conv rate (a CPU with native BF16) is no bound on FP32 bars: no BF16 line without
    a BF16 row, and no BF16 rate measured for a run that asks no BF16."""
    from psp_deploy.benchmark import roofline
    from psp_deploy.benchmark.report import roofline_limits

    fp32, int8 = _row("onnxruntime", "fp32", "synthesize", 50.0), _row("openvino", "int8", "synthesize", 90.0)
    rows = [Row.from_json(fp32), Row.from_json(int8)]
    rates = {"fp32": {"onnxruntime": 100.0, "openvino": 120.0}, "int8": {"openvino": 300.0}, "bf16": {"torch": 900.0}}
    assert roofline_limits(rows, rates) == {"fp32": 100.0, "int8": 300.0}  # fp32: the backend that ran it
    bf16 = Row.from_json(_row("openvino", "bf16", "synthesize", 200.0))
    assert roofline_limits([*rows, bf16], rates)["bf16"] == 900.0

    monkeypatch.setattr(roofline, "has_native_bf16", lambda: True)
    monkeypatch.setattr(roofline, "best_rate", lambda fn, **_: 1.0)
    assert set(roofline.machine_limits({"onnxruntime"}, {"fp32"}, torch_too=True)) == {"fp32"}
    assert set(roofline.machine_limits({"onnxruntime"}, {"fp32", "bf16"}, torch_too=True)) == {"fp32", "bf16"}


def test_a_row_round_trips_through_the_results_json_with_the_keys_readers_index():
    """Rates are always there (null for a host row, whose time is a difference), optional fields only with a
    value; a row of an older results file (no part, device or tf32) reads with their defaults."""
    pipeline = Row.from_json(_row("onnxruntime", "fp32", "e2e", 10.0))
    host = Row.from_json({**_host_row(0.01, 0.01, 0.05), "includes_alignment": True})
    assert Row.from_json(pipeline.as_json()) == pipeline and Row.from_json(host.as_json()) == host
    assert host.as_json()["images_per_s"] is None and host.as_json()["gflops_per_s"] is None
    assert "compile_s" not in pipeline.as_json() and "share_of_pipeline" not in pipeline.as_json()
    assert (pipeline.part, pipeline.device, pipeline.tf32) == ("pipeline", "cpu", False)
    assert pipeline.config == "onnxruntime fp32 (scaled)"
