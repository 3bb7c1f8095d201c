"""Where the GPU time goes: each graph's CUDA kernels, grouped by what they compute.

    python3 benchmarks/gpu_profile.py BUNDLE [--batch 1 8] [--precision fp32 fp16] [--runs 5]

Opens the bundle as `psp-deploy run --device cuda` does (the bundle's measured CUDA settings
applied), runs each graph alone with its inputs and outputs bound on the GPU, and records every
CUDA kernel with torch's profiler: CUPTI sees the kernels of every library in the process, ONNX
Runtime's and cuDNN's included, so the times are the GPU's own. Kernels are grouped by family: the
ONNX Runtime op an elementwise kernel is named for, cuDNN and cuBLAS kernels by name.

For contrast, each graph is also timed in a session with ONNX Runtime's default CUDA settings
(which include TF32), so a reader can tell the project's settings from the runtime's.

Writes BUNDLE/reports/gpu-profile.json and prints the largest families. Needs an NVIDIA GPU,
onnxruntime-gpu and torch with CUDA (the same Python as `make gpu-check`).
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

STAGE = {"encoder": "encode", "synthesis": "synthesize"}
TOP = 12
# Kernel families by a piece of the kernel's name, first match wins (names lower-cased).
FAMILIES = [
    ("memcpy", ("memcpy",)),
    ("memset", ("memset",)),
    ("cast", ("cast",)),
    ("transpose", ("transpose",)),
    ("batchnorm", ("bn_fw", "batchnorm")),
    ("conv dgrad (ConvTranspose)", ("dgrad",)),
    ("conv wgrad", ("wgrad",)),
    ("conv fprop", ("fprop", "implicit_convolve", "conv", "winograd", "fft")),
    ("gemm", ("gemm", "gemv")),
    # cuDNN's elementwise op-tensor kernel (its signature names a "reducedDivisorArray": not a reduction)
    ("cuDNN op tensor (elementwise)", ("op_generic_tensor",)),
    ("reduce", ("reduce_", "reduction")),
]
ORT_FUNCTOR = re.compile(r"OP_(\w+?)<")


def kernel_family(name: str) -> str:
    """What a kernel computes, from its (demangled) name."""
    if match := ORT_FUNCTOR.search(name):
        return f"elementwise {match.group(1)}"
    lowered = name.lower()
    for family, pieces in FAMILIES:
        if any(piece in lowered for piece in pieces):
            return family
    return "other"


def kernel_times(run: Any, runs: int) -> dict[str, dict[str, float]]:
    """GPU time per kernel name (ms per call) and launches per call, over ``runs`` calls of ``run``."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    run()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(runs):
            run()
        torch.cuda.synchronize()
    kernels: dict[str, dict[str, float]] = {}
    for event in prof.key_averages():
        device_us = getattr(event, "device_time_total", None) or getattr(event, "cuda_time_total", 0)
        if device_us:
            kernels[event.key] = {"ms": device_us / 1e3 / runs, "launches": event.count / runs}
    return kernels


def by_family(kernels: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    families: dict[str, dict[str, float]] = defaultdict(lambda: {"ms": 0.0, "launches": 0.0})
    for name, kernel in kernels.items():
        family = families[kernel_family(name)]
        family["ms"] += kernel["ms"]
        family["launches"] += kernel["launches"]
    return dict(sorted(families.items(), key=lambda item: -item[1]["ms"]))


def default_settings_ms(net: Any, feed: np.ndarray, runs: int, sync: Any) -> float:
    """The graph's p50 in a session with ONNX Runtime's default CUDA settings, bound on the GPU."""
    import onnxruntime as ort

    from psp_deploy.measure.timing import measure
    from psp_deploy.runtime.backends.onnxruntime.bound import BoundGraph

    session = ort.InferenceSession(str(net.path), providers=["CUDAExecutionProvider"])
    bound = BoundGraph(session, {net.record.inputs[0].name: feed}, net.record.outputs, "cuda")
    return measure(bound, warmup=2, runs=runs, sync=sync).p50 * 1e3


def profile_precision(bundle: Path, precision: str, batches: list[int], runs: int) -> dict[str, Any]:
    from psp_deploy.benchmark.device import stage_graphs
    from psp_deploy.benchmark.gpu import cuda_synchronizer
    from psp_deploy.benchmark.harness import benchmark_face, benchmark_photo
    from psp_deploy.measure.timing import measure
    from psp_deploy.runtime import Pipeline
    from psp_deploy.runtime.backends import BackendOptions

    sync = cuda_synchronizer()[1]
    found: dict[str, Any] = {}
    options = BackendOptions(device="cuda")
    with Pipeline.from_bundle(bundle, precision=precision, options=options, max_batch=max(batches)) as pipeline:
        face = pipeline.prepare(benchmark_face(benchmark_photo()), align=False)[0]
        settings = pipeline.describe()
        for batch in batches:
            x = np.repeat(face[None], batch, axis=0)
            feeds = {"encoder": x, "synthesis": pipeline.encode(x)}
            for graph, stage in STAGE.items():
                run = stage_graphs(pipeline.nets, stage, feeds, batch)
                kernels = kernel_times(run, runs)
                found[f"{graph} batch {batch}"] = {
                    "p50_ms": measure(run, warmup=2, runs=runs, sync=sync).p50 * 1e3,
                    "kernel_ms": sum(k["ms"] for k in kernels.values()),
                    "default_settings_p50_ms": default_settings_ms(pipeline.nets[graph], feeds[graph], runs, sync),
                    "families": by_family(kernels),
                    "top_kernels": dict(sorted(kernels.items(), key=lambda item: -item[1]["ms"])[:TOP]),
                }
                print_entry(precision, f"{graph} batch {batch}", found[f"{graph} batch {batch}"])
    return {"pipeline": settings, "graphs": found}


def print_entry(precision: str, what: str, entry: dict[str, Any]) -> None:
    print(
        f"\n{precision} {what}: {entry['p50_ms']:.2f} ms p50 bound, kernels {entry['kernel_ms']:.2f} ms, "
        f"ONNX Runtime's default settings {entry['default_settings_p50_ms']:.2f} ms",
        flush=True,
    )
    for family, times in list(entry["families"].items())[:TOP]:
        print(f"  {times['ms']:8.3f} ms {times['launches']:6.0f}×  {family}")
    for name, times in list(entry["top_kernels"].items())[:6]:
        print(f"  {times['ms']:8.3f} ms {times['launches']:6.0f}×  {name[:150]}")


def missing_precisions(bundle: Any, precisions: list[str]) -> list[str]:
    """The precisions asked for that the bundle's encoder or synthesis lacks (FP32 is always there)."""
    return [p for p in precisions if any(p not in bundle.manifest.models[graph] for graph in STAGE)]


def main() -> int:
    summary, details = __doc__.split("\n\n", 1)
    parser = argparse.ArgumentParser(description=summary, epilog=details, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8], help="batch sizes (default 1 8)")
    parser.add_argument("--precision", nargs="+", default=["fp32", "fp16"], help="precisions (default fp32 fp16)")
    parser.add_argument("--runs", type=int, default=5, help="profiled and timed calls per graph (default 5)")
    args = parser.parse_args()
    if args.runs < 1 or min(args.batch) < 1:
        parser.error("--runs and --batch must be at least 1")  # exits 2, as bad input does
    from psp_deploy.benchmark.gpu import cuda_problem
    from psp_deploy.bundle import Bundle
    from psp_deploy.errors import PspDeployError
    from psp_deploy.files import write_json
    from psp_deploy.machine import library_versions

    try:
        missing = missing_precisions(Bundle.open(args.bundle), args.precision)
    except PspDeployError as err:
        print(f"gpu_profile: {err}", file=sys.stderr)
        return 2
    if missing:
        print(f"gpu_profile: {args.bundle} has no {', '.join(missing)} graphs: psp-deploy calibrate", file=sys.stderr)
        return 2
    if problem := cuda_problem():
        print(f"gpu_profile: this machine cannot profile on a GPU: {problem}", file=sys.stderr)
        return 2
    profiles = {
        precision: profile_precision(args.bundle, precision, args.batch, args.runs) for precision in args.precision
    }
    out = args.bundle / "reports" / "gpu-profile.json"
    write_json(out, {"versions": library_versions(), "runs": args.runs, "profiles": profiles})
    print(f"\nwritten: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
