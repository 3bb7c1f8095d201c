"""OpenVINO on the 1024² scaled bundle: each graph compiled for any batch (dynamic shapes) against
compiled for the one batch it runs (static shapes), FP32 and (where native) BF16, batch 1 and 4, p50
seconds. This is the measurement behind the OpenVINO backend's FIXED_BATCHES. Writes
benchmarks/results/<cpu>-openvino-fixed-batch.{json,md}.

    .venv/bin/python benchmarks/openvino_fixed_batch.py [--runs 7] [--batches 1,4]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
from common import RESULTS, bundle, checkpoint, save_json, say

from psp_deploy.benchmark.op_profile import RUNS
from psp_deploy.bundle import Bundle
from psp_deploy.machine import cpu_info, has_native_bf16, library_versions, machine_slug
from psp_deploy.measure.timing import measure
from psp_deploy.runtime.backends.openvino import OpenVINOBackend, layer_seconds


def resident_mb() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def top_ops(seconds: dict[str, float], top: int = 6) -> dict[str, float]:
    return {k: round(1e3 * v, 1) for k, v in sorted(seconds.items(), key=lambda kv: -kv[1])[:top]}


def timed(models: list, feeds: dict[str, np.ndarray], runs: int) -> list[float]:
    """p50 seconds of each model, their runs interleaved (A B A B ...) so that the machine's drift
    during the measurement falls on both alike."""
    requests = [m.create_infer_request() for m in models]
    times: list[list[float]] = [[] for _ in models]
    for _ in range(runs):
        for request, own in zip(requests, times, strict=True):
            own.append(measure(lambda r=request: r.infer(feeds), warmup=0 if own else 2, runs=1).p50)
    return [float(np.median(t)) for t in times]


def write_markdown(results: dict) -> None:
    machine = results["machine"]
    lines = [
        f"# OpenVINO: compiled for any batch against compiled for the batch it runs ({machine['model']})",
        "",
        f"- CPU: {machine['model']}, {machine['logical_cores']} logical cores, flags {', '.join(machine['flags'])}",
        f"- OpenVINO {results['versions']['openvino']}; {results['settings']}",
        f"- reproduce: `{results['command'].strip()}`",
        "",
        "| graph | precision | batch | any batch s | fixed batch s | change | fixed-batch model, MB resident |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r['graph']} | {r['precision']} | {r['batch']} | {r['any batch s']:.3f} | {r['fixed batch s']:.3f} "
        f"| {100 * r['change']:+.0f}% | {r['compiled MB']:.0f} |"
        for r in results["rows"]
    ]
    lines += ["", "OpenVINO's per-layer counters, one FP32 batch-1 synthesis, ms per layer type (top 6):", ""]
    for name, ops in results["synthesis fp32 batch 1 ms per op type"].items():
        lines.append(f"- compiled for {name}: " + ", ".join(f"{op} {ms}" for op, ms in ops.items()))
    (RESULTS / f"{machine_slug()}-openvino-fixed-batch.md").write_text("\n".join(lines) + "\n")


def profiles(root: Path) -> dict[str, dict[str, float]]:
    """OpenVINO's per-layer counters for one FP32 batch-1 synthesis, compiled for any batch and for one."""
    bundle = Bundle.open(root)
    record = bundle.resolve("synthesis", "fp32", "openvino").record
    path = bundle.model_path("synthesis", record.precision)
    profiled = OpenVINOBackend(path, record, "synthesis", profile=True)
    feeds = {"codes": np.random.default_rng(0).standard_normal([1, *record.inputs[0].shape[1:]]).astype(np.float32)}
    models = {"any batch": None, "fixed batch": 1}
    return {
        name: top_ops(layer_seconds(profiled.compile_model(path, batch), feeds, RUNS)) for name, batch in models.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--batches", default="1,4", help="comma-separated batch sizes")
    args = parser.parse_args()
    root = bundle(checkpoint(1024), "scaled")
    rows = []
    for precision in ("fp32", "bf16") if has_native_bf16() else ("fp32",):
        for graph in ("encoder", "synthesis"):
            backend = OpenVINOBackend.from_bundle(Bundle.open(root), graph, precision)
            for batch in map(int, args.batches.split(",")):
                rng = np.random.default_rng(0)
                feeds = {s.name: rng.standard_normal([batch, *s.shape[1:]]).astype(np.float32) for s in backend.inputs}
                before = resident_mb()
                fixed_model = backend.compile_model(backend.path, batch)
                grown = resident_mb() - before  # the fixed-batch model's own memory, before it runs
                any_batch, fixed = timed([backend.compiled, fixed_model], feeds, args.runs)
                del fixed_model
                row = {"graph": graph, "precision": precision, "batch": batch, "any batch s": any_batch}
                rows.append({**row, "fixed batch s": fixed, "change": fixed / any_batch - 1, "compiled MB": grown})
                say(str(rows[-1]))
    results = {
        "synthesis fp32 batch 1 ms per op type": profiles(root),
        "command": "benchmarks/openvino_fixed_batch.py " + " ".join(sys.argv[1:]),
        "machine": cpu_info(),
        "versions": library_versions(),
        "settings": {"runs": args.runs, "threads": "all", "bundle": root.name, "statistic": "p50"},
        "rows": rows,
    }
    say(f"results: {save_json(results, '-openvino-fixed-batch')}")
    write_markdown(results)


if __name__ == "__main__":
    main()
