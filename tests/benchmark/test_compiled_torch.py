"""`bench --baseline`: the official path under torch.compile beside eager torch in one run. Real compiles of the
small model's synthesis (inductor, this CPU's C++ compiler; seconds once inductor's cache holds them, about a
minute on two busy cores before), the compiled image against eager's, compile time kept out of the timed runs,
the report's "× compiled torch" column against the JSON, and a machine where torch.compile cannot run."""

import json
import os
import subprocess
import sys

import torch
from typer.testing import CliRunner

from psp_deploy.benchmark.baseline import channels_last_copy, compiled_graphs
from psp_deploy.benchmark.harness import COMPILED_NOTE
from psp_deploy.cli import app

# synthesize alone: the encoder (IR-SE-50) would add about a minute of compiling on two cores
BENCH = ["--backend", "onnxruntime", "--batch", "1", "--stages", "synthesize", "--warmup", "0", "--no-limits"]
PARTS = {"pipeline": "pipeline", "graphs": "graphs alone", "host": "host overhead"}


def _codes(net) -> torch.Tensor:
    with torch.no_grad():
        return net.encode(torch.rand(1, net.config.input_nc, 256, 256, generator=torch.Generator().manual_seed(0)))


def _table_line(report: str, row: dict) -> list[str]:
    """The cells of the report's line for a result row, found by its configuration, batch, stage and part."""
    start = f"| {row['backend']} {row['precision']} ({row['modconv']}) | {row['batch']} | {row['stage']} | "
    lines = [line for line in report.splitlines() if line.startswith(start + PARTS[row["part"]])]
    assert len(lines) == 1, (start, report)
    return [cell.strip() for cell in lines[0].strip("|").split("|")]


def test_bench_baseline_times_eager_and_compiled_torch_in_one_run(bundles, small_ckpt, tmp_path):
    out = tmp_path / "report"
    root = str(bundles("rgb-scaled")[0].root)
    args = ["bench", root, *BENCH, "--runs", "2", "--baseline", str(small_ckpt), "--report", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    data = json.loads((out / "bench-results.json").read_text())
    rows = {(r["backend"], r["part"]): r for r in data["results"]}
    ours = {("onnxruntime", part) for part in PARTS}
    assert set(rows) == ours | {("torch-official", "pipeline"), ("torch-compile", "pipeline")}
    compiled, eager = rows[("torch-compile", "pipeline")], rows[("torch-official", "pipeline")]
    assert compiled["modconv"] == eager["modconv"] == "grouped" and compiled["latency_s"]["runs"] == 2
    # the first call (the compile: dynamo's trace at least, even from inductor's cache) is not a timed run
    assert compiled["compile_s"] > compiled["latency_s"]["max"] and "compile_s" not in eager
    assert COMPILED_NOTE in data["notes"] and data["settings"]["torch_compile"] is True and not data["warnings"]
    assert "benchmarking: 3/3 official torch path under torch.compile fp32, batch 1" in result.output
    assert f"(compile {compiled['compile_s']:.1f}s, untimed)" in result.output

    report = (out / "bench-results.md").read_text()
    assert "| of the conv rate, same backend and precision | × compiled torch |" in report
    assert _table_line(report, compiled)[3] == f"pipeline (compile {compiled['compile_s']:.1f} s, untimed)"
    for row in data["results"]:  # images/s over compiled torch's, by hand; none for itself or a difference of times
        peer = row is compiled or row["part"] == "host"
        expected = "" if peer else f"{row['images_per_s'] / compiled['images_per_s']:.2f}×"
        assert _table_line(report, row)[-1] == expected, row


def test_compiled_official_synthesis_draws_what_eager_draws(small_psp):
    codes = _codes(small_psp)
    with torch.no_grad():
        eager = small_psp.synthesize(codes)
        compiled = compiled_graphs(small_psp, channels_last=False).synthesize(codes)
    assert compiled.shape == eager.shape == (1, 3, 64, 64)
    torch.testing.assert_close(compiled, eager, atol=1e-4, rtol=1e-4)


def test_the_channels_last_copy_computes_what_the_net_does_and_leaves_it_as_it_was(small_psp):
    """The layout compiled FP16 runs in on a GPU, checked here eagerly: NHWC 4-D weights (the encoder's convs,
    the synthesis' constant input), the modulated convs' 5-D weights untouched, the same codes and image."""
    copy = channels_last_copy(small_psp)
    weight = copy.encoder.input_layer[0].weight
    assert weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()
    assert small_psp.encoder.input_layer[0].weight.is_contiguous()  # the original keeps its layout
    assert copy.decoder.conv1.conv.weight.dim() == 5 and copy.decoder.conv1.conv.weight.is_contiguous()
    x = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        codes, image = small_psp.encode(x), small_psp.synthesize(_codes(small_psp))
        nhwc = copy.encode(x.contiguous(memory_format=torch.channels_last))
        torch.testing.assert_close(nhwc, codes, atol=1e-4, rtol=1e-4)  # other convolution kernels: FP32 rounding
        torch.testing.assert_close(copy.synthesize(_codes(small_psp)), image, atol=1e-4, rtol=1e-4)


def test_bench_goes_on_without_compiled_torch_where_torch_compile_cannot_run(bundles, small_ckpt, tmp_path):
    """No C++ compiler (CXX names none; an empty inductor cache, so nothing compiled before is reused): a
    warning naming the cause, the eager rows, exit 0, no traceback."""
    out = tmp_path / "bench.json"
    env = {**os.environ, "CXX": str(tmp_path / "no-compiler"), "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "cache")}
    root = str(bundles("rgb-scaled")[0].root)
    command = ["bench", root, *BENCH, "--runs", "1", "--baseline", str(small_ckpt), "-o", str(out)]
    run = subprocess.run([sys.executable, "-m", "psp_deploy.cli", *command], env=env, capture_output=True, text=True)
    assert run.returncode == 0 and "Traceback" not in run.stderr, run.stderr
    data = json.loads(out.read_text())
    assert {r["backend"] for r in data["results"]} == {"onnxruntime", "torch-official"}
    [warning] = data["warnings"]
    assert warning.startswith("torch.compile failed here: InvalidCxxCompiler: No working C++ compiler found")
    assert warning.endswith(": the official path under torch.compile fp32 is left out")
    assert f"warning: {warning}" in " ".join((run.stdout + run.stderr).split()), run.stdout


def test_no_compile_times_the_official_path_eagerly_only(bundles, small_ckpt, tmp_path):
    out = tmp_path / "bench.json"
    args = ["bench", str(bundles("rgb-scaled")[0].root), *BENCH, "--runs", "1", "--baseline", str(small_ckpt)]
    result = CliRunner().invoke(app, [*args, "--no-compile", "-o", str(out)])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert {r["backend"] for r in data["results"]} == {"onnxruntime", "torch-official"}
    assert data["settings"]["torch_compile"] is False and COMPILED_NOTE not in data["notes"]
