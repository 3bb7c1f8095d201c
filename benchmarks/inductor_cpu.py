"""AOTInductor on the CPU beside ONNX Runtime and OpenVINO: the synthetic FFHQ-encode checkpoint (256² or 1024²),
scaled bundle, FP32, batch 1. Records each inductor package's compile seconds (export + AOTInductor, from its engine
record) and, per backend, the pipeline's seconds per image (``Pipeline.generate`` of one uint8 face: encode,
synthesize, uint8 image), p50 of runs interleaved across the backends, with its encode and synthesize parts.
Writes benchmarks/results/<cpu>-inductor-cpu.{json,md} (at 1024²: <cpu>-inductor-cpu-1024.{json,md}).

    .venv/bin/python benchmarks/inductor_cpu.py [--size 256] [--runs 9] [--warmup 2]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from common import RESULTS, bundle, checkpoint, own_copy, save_json, say
from skimage import data

from psp_deploy.bundle import GRAPHS, Bundle
from psp_deploy.calibration.report import psnr_db
from psp_deploy.engines import build_engines
from psp_deploy.machine import cpu_info, library_versions, machine_slug
from psp_deploy.runtime import Pipeline, RunOptions
from psp_deploy.runtime.backends.options import BuildOptions

BACKENDS = ("inductor", "onnxruntime", "openvino")
STAGES = ("encode", "synthesize")


def packages(root: Path, ckpt: Path) -> dict[str, float]:
    """FP32 inductor packages of the bundle's graphs, built unless there; compile seconds per graph."""
    if any(Bundle.open(root).resolve(graph, "fp32", "inductor").engine is None for graph in GRAPHS):
        build_engines(root, "inductor", "fp32", options=BuildOptions(checkpoint=ckpt), progress=say)
    engines = Bundle.open(root).manifest.engines
    return {e.graph: e.details["compile_seconds"] for e in engines if (e.backend, e.precision) == ("inductor", "fp32")}


def timed(pipelines: dict[str, Pipeline], face: np.ndarray, runs: int, warmup: int) -> dict[str, dict[str, float]]:
    """p50 seconds per backend of the whole generate call and of its stages, runs interleaved (A B C A B C ...)
    so that the machine's drift falls on every backend alike."""
    rows = [RunOptions(align=False)]
    for pipeline in pipelines.values():
        for _ in range(warmup):
            pipeline.generate(face, rows)
    seconds: dict[str, dict[str, list[float]]] = {name: {"e2e": [], **{s: [] for s in STAGES}} for name in pipelines}
    for _ in range(runs):
        for name, pipeline in pipelines.items():
            clock = time.perf_counter()
            done = pipeline.generate(face, rows)
            seconds[name]["e2e"].append(time.perf_counter() - clock)
            for stage in STAGES:
                seconds[name][stage].append(done.timings[stage])
    return {name: {k: float(np.median(v)) for k, v in by.items()} for name, by in seconds.items()}


def agreement(pipelines: dict[str, Pipeline], face: np.ndarray) -> dict[str, float]:
    """Inductor against ONNX Runtime on the timed face: codes max abs difference, synthesis PSNR."""
    reference, fused = pipelines["onnxruntime"], pipelines["inductor"]
    codes = reference.encode(reference.host.normalised(face))
    image = reference.synthesize(codes)[0]
    return {
        "codes max abs": float(np.abs(fused.encode(fused.host.normalised(face)) - codes).max()),
        "image PSNR dB": psnr_db(image, fused.synthesize(codes)[0]),
    }


def load_average() -> str:
    """The machine's 1-, 5- and 15-minute load averages: others' work shows in the figures."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def write_markdown(results: dict, suffix: str) -> Path:
    machine, times = results["machine"], results["seconds per image"]
    versions = results["versions"]
    lines = [
        f"# AOTInductor on the CPU beside ONNX Runtime and OpenVINO ({machine['model']})",
        "",
        f"- CPU: {machine['model']}, {machine['logical_cores']} logical cores, flags {', '.join(machine['flags'])}",
        "- " + ", ".join(f"{name} {versions.get(name)}" for name in ("torch", "onnxruntime", "openvino")),
        "- " + ", ".join(f"{key} {value}" for key, value in results["settings"].items()),
        f"- reproduce: `{results['command'].strip()}`",
        "",
        "Compile seconds per inductor package (torch.export + AOTInductor, from its engine record): "
        + ", ".join(f"{graph} {s:.1f}" for graph, s in results["compile seconds"].items()),
        "",
        "| backend | pipeline s per image | encode s | synthesize s | vs onnxruntime |",
        "|---|---:|---:|---:|---:|",
    ]
    base = times["onnxruntime"]["e2e"]
    lines += [
        f"| {name} | {t['e2e']:.3f} | {t['encode']:.3f} | {t['synthesize']:.3f} | {base / t['e2e']:.2f}× |"
        for name, t in times.items()
    ]
    check = results["inductor against onnxruntime"]
    lines += [
        "",
        f"Inductor against ONNX Runtime on the timed face: codes max abs {check['codes max abs']:.2e}, "
        f"image {check['image PSNR dB']:.1f} dB. Load averages (1, 5, 15 min): "
        + "; ".join(f"{when} {value}" for when, value in results["load average"].items()),
    ]
    path = RESULTS / f"{machine_slug()}{suffix}.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--size", type=int, choices=(256, 1024), default=256, help="the checkpoint's output size")
    args = parser.parse_args()
    ckpt = checkpoint(args.size)
    root = own_copy(bundle(ckpt, "scaled"), ckpt, "inductor")
    load = {"before compiling": load_average()}
    compile_seconds = packages(root, ckpt)
    load["before timing"] = load_average()
    pipelines = {name: Pipeline.from_bundle(root, name, "fp32") for name in BACKENDS}
    face = pipelines["onnxruntime"].prepare_face(data.astronaut(), align=False)[0][None]
    results = {
        "command": "benchmarks/inductor_cpu.py " + " ".join(sys.argv[1:]),
        "machine": cpu_info(),
        "versions": library_versions(),
        "settings": {
            "bundle": root.name,
            "batch": 1,
            "runs": args.runs,
            "warmup": args.warmup,
            "threads": "all",
            "statistic": "p50",
            "precision": "fp32",
        },
        "load average": load,
        "compile seconds": compile_seconds,
        "seconds per image": timed(pipelines, face, args.runs, args.warmup),
        "inductor against onnxruntime": agreement(pipelines, face),
    }
    suffix = "-inductor-cpu" + ("" if args.size == 256 else f"-{args.size}")
    say(f"results: {save_json(results, suffix)}\nreport: {write_markdown(results, suffix)}")


if __name__ == "__main__":
    main()
