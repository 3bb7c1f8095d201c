"""The standard benchmark matrix, written to benchmarks/results/<cpu>.json, .md and PNG plots.

FFHQ-encode 1024 (synthetic weights, official shapes); grouped vs scaled modulated conv;
every available CPU backend and precision (INT8 graphs calibrated here; BF16 only where the
CPU has it natively); batch 1 and 4; and the official PyTorch path in the same run.

    .venv/bin/python benchmarks/run_standard.py [--runs 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import sys

from common import RESULTS, bundle, checkpoint, save_json, say

from psp_deploy.benchmark.harness import BenchSettings, run_benchmark
from psp_deploy.benchmark.report import write_report
from psp_deploy.bundle import Bundle
from psp_deploy.machine import has_native_bf16, machine_slug

NOTES = [
    "## How to read this",
    "",
    "- `scaled` and `grouped` are the two exported forms of the modulated convolution (docs/bundle.md); a grouped "
    "graph has a fixed batch, so batch 4 uses a bundle exported with `--batch 4`.",
    "- GFLOP/s counts 2 operations per multiply-add of Conv, ConvTranspose, Gemm and MatMul (from the ONNX shapes); "
    "`of FP32 conv rate` divides by the best single-convolution FP32 rate measured in the same run.",
    "- INT8 and BF16 rows only count where their accuracy reports pass (bundle `reports/`); see the accuracy section.",
    "- `torch-official` is the official algorithm (grouped modconv, reference upfirdn2d, unfused activations, "
    "official PIL/scipy alignment with full-size dlib detection) in eager PyTorch, same threads.",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=3, help="at 1024² ONNX Runtime needs ~3 runs to settle")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--calibration-samples", type=int, default=32)
    args = parser.parse_args()

    ckpt = checkpoint()
    scaled = bundle(ckpt, "scaled")
    if "int8" not in Bundle.open(scaled).manifest.models["encoder"]:
        from psp_deploy.calibration import calibrate_bundle

        say("calibrating INT8 (encoder and synthesis)")
        calibrate_bundle(
            scaled, "int8", synthetic=args.calibration_samples, methods=("minmax", "percentile"), rounds=1, progress=say
        )
    precisions = ["fp32", "int8"] + (["bf16"] if has_native_bf16() else [])
    common = dict(warmup=args.warmup, runs=args.runs, threads=args.threads)

    rows, results = [], None
    settings = BenchSettings(
        backends=["onnxruntime", "openvino"], precisions=["fp32", "int8"], batches=[1, 4], profile=True, **common
    )
    results = run_benchmark(scaled, settings, baseline=ckpt, progress=say)
    rows += results["results"]
    if "bf16" in precisions:
        rows += run_benchmark(
            scaled,
            BenchSettings(backends=["openvino"], precisions=["bf16"], batches=[1, 4], **common),
            limits=False,
            progress=say,
        )["results"]
    for batch in (1, 4):
        grouped = bundle(ckpt, "grouped", batch)
        settings = BenchSettings(
            backends=["onnxruntime", "openvino"],
            precisions=["fp32"],
            batches=[batch],
            stages=["synthesize", "e2e"],
            **common,
        )
        rows += run_benchmark(grouped, settings, limits=False, progress=say)["results"]
    results["results"] = rows
    results["accuracy"] = {p.stem: _summary(p) for p in (scaled / "reports").glob("*.json")}
    path = save_json(results, "")
    command = "python benchmarks/run_standard.py " + " ".join(sys.argv[1:])
    report = write_report(results, RESULTS, machine_slug(), command.strip(), NOTES + _accuracy_lines(results))
    say(f"results: {path}\nreport: {report}")


def _summary(path):
    import json

    data = json.loads(path.read_text())
    return {"passed": data["passed"], "targets": data["targets"], "data": data["data"]}


def _target(t: dict) -> str:
    verdict = "pass" if t["passed"] else f"MISSED by {t['missed_by']:.3g}"
    return f"{t['metric']} {t['value']:.4g} (target {t['target']}, {verdict})"


def _accuracy_lines(results: dict) -> list[str]:
    lines = ["", "## Accuracy of the reduced precisions (held-back samples, vs FP32)", ""]
    for name, summary in results["accuracy"].items():
        targets = "; ".join(_target(t) for t in summary["targets"])
        lines.append(f"- {name}: {targets} — calibrated on {summary['data']}")
    return lines


if __name__ == "__main__":
    main()
