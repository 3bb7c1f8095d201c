"""The synthesis graph's forms on this CPU: transposed vs phase vs folded upsampling convs, scaled vs grouped
modulated convs, FP32 on each CPU backend (and OpenVINO BF16 where the CPU has it natively), batch 1
(and 4 for the scaled form); written to benchmarks/results/<cpu>-forms.{json,md}.

FFHQ-encode 1024 (synthetic weights, official shapes; --size 256 or 512 for a quicker look, written as
<cpu>-forms-SIZE). The encoder is the same graph in every form,
so it is timed once per backend on the scaled bundle; the rest times synthesis and end to end.

    .venv/bin/python benchmarks/cpu_forms.py [--runs 5] [--threads 2] [--size 1024]
"""

from __future__ import annotations

import argparse
import sys

from common import RESULTS, bundle, checkpoint, save_json, say

from psp_deploy.benchmark.harness import BenchSettings, busy_rows, run_benchmark
from psp_deploy.benchmark.report import write_report
from psp_deploy.benchmark.roofline import machine_limits
from psp_deploy.benchmark.rows import Row
from psp_deploy.machine import has_native_bf16, machine_slug

NOTES = [
    "## How to read this",
    "",
    "- `transpose` runs each upsampling conv as one ConvTranspose (the official form); `phase` as four Convs on "
    "the low-resolution input plus a one-hot depthwise interleave (same multiply-adds; models/modconv.py); "
    "`folded` as one ConvTranspose of the 3×3 taps convolved with the 4×4 blur (6×6: no blur pass, four times "
    "the transposed conv's multiply-adds).",
    "- GFLOP/s counts each bundle's own graphs: the phase form's interleave adds ~2% of counted (one-hot) "
    "multiply-adds to the synthesis, so compare the forms by their times.",
    "- `scaled` keeps the conv weights static (any batch); `grouped` folds each sample's style into its weights "
    "(batch fixed at export, here 1).",
    "- `of … conv rate` divides by the same backend's single 512→512 3×3 conv rate at the same precision, "
    "measured in the same run.",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=3, help="at 1024² ONNX Runtime needs ~3 runs to settle")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--size", type=int, default=1024, choices=(256, 512, 1024), help="output size")
    args = parser.parse_args()

    ckpt = checkpoint(args.size)
    name = "-forms" if args.size == 1024 else f"-forms-{args.size}"
    common = dict(warmup=args.warmup, runs=args.runs, threads=args.threads)
    precisions = ["fp32"] + (["bf16"] if has_native_bf16() else [])
    say("scaled, transpose: encoder, synthesis, end to end; the machine's conv rates")
    results = run_benchmark(
        bundle(ckpt, "scaled"),
        BenchSettings(
            backends=["onnxruntime", "openvino"],
            precisions=["fp32"],
            batches=[1, 4],
            stages=["encode", "synthesize", "e2e"],
            **common,
        ),
        progress=say,
    )
    rows = results["results"]
    for modconv, upsample in (
        ("scaled", "phase"),
        ("scaled", "folded"),
        ("grouped", "transpose"),
        ("grouped", "phase"),
    ):
        say(f"{modconv}, {upsample}")
        batches = [1, 4] if modconv == "scaled" else [1]
        settings = BenchSettings(
            backends=["onnxruntime", "openvino"],
            precisions=["fp32"],
            batches=batches,
            stages=["synthesize", "e2e"],
            **common,
        )
        rows += run_benchmark(bundle(ckpt, modconv, 1, upsample), settings, limits=False, progress=say)["results"]
    for upsample in ("transpose", "phase", "folded") if "bf16" in precisions else ():
        say(f"openvino bf16, scaled, {upsample}")
        settings = BenchSettings(
            backends=["openvino"], precisions=["bf16"], batches=[1, 4], stages=["encode", "synthesize", "e2e"], **common
        )
        rows += run_benchmark(bundle(ckpt, "scaled", 1, upsample), settings, limits=False, progress=say)["results"]
    merge(results, rows, precisions)
    if "bf16" in precisions:  # the first run measured the FP32 rates only; BF16 rows are read against BF16's
        say("measuring openvino's single-conv BF16 rate")
        results["conv_gflops_per_s"]["bf16"] = machine_limits({"openvino"}, {"bf16"}, args.threads, False)["bf16"]
    path = save_json(results, name)
    command = "python benchmarks/cpu_forms.py " + " ".join(sys.argv[1:])
    report = write_report(results, RESULTS, machine_slug() + name, command.strip(), NOTES)
    say(f"results: {path}\nreport: {report}")


def merge(results: dict, rows: list[dict], precisions: list[str]) -> None:
    """The first run's results with every run's rows: their precisions and their busy-machine warnings."""
    results["results"] = rows
    results["settings"]["precisions"] = precisions
    results["warnings"] = busy_rows([Row.from_json(row) for row in rows])


if __name__ == "__main__":
    main()
