"""`make gpu-check`: psp-deploy's GPU runtime checked and measured on this machine, from nothing.

    make gpu-check [PYTHON=python3]          or          python3 benchmarks/gpu_check.py [--runs 5]

Runs with the Python and torch installed here and installs nothing (psp-deploy runs from src/:
installing it would pull the CPU onnxruntime package over onnxruntime-gpu). Steps:

  1. preflight: an NVIDIA GPU, onnxruntime-gpu whose CUDA provider starts, torch with CUDA, the
     packages the steps import; exit 2 with the reason where one is missing
  2. a synthetic 1024² FFHQ-encode checkpoint (official format, seeded; no weights downloaded)
  3. its scaled bundle, exported and checked against torch
  4. FP16 graphs: psp-deploy calibrate BUNDLE --precision fp16 --synthetic 4
  5. the GPU tests: pytest -m gpu tests/gpu tests/engines/test_inductor.py
  6. each graph's CUDA settings, FP32 and FP16, measured at batch 8 and recorded in the bundle:
     psp-deploy build BUNDLE --backend onnxruntime --device cuda --precision P --opt-batch 8; and the
     AOTInductor packages, FP32 and FP16, for batches 1 to 32 (CUDA graphs timed at batch 8):
     psp-deploy build BUNDLE --backend inductor --device cuda --precision P --checkpoint CKPT --max-batch 32
  7. accuracy at full size on three faces: GPU FP32 against CPU FP32 (codes, images), GPU FP16
     against GPU FP32 (images from the same codes, and end to end), and NaN/Inf in any output
  8. the benchmark matrix: ONNX Runtime CUDA (and inductor, when step 6 built its packages), FP32 and FP16 ×
     batch 1, 8, 32 (pipeline, graphs alone, host overhead; TF32 off for FP32 graphs) and the official path
     on the same GPU, eager and under torch.compile (FP32, FP16 autocast; compile time apart), every row held
     against compiled torch → benchmarks/results/<gpu>.json, <gpu>.md (with
     step 7's figures) and plots

Steps 5 to 7 do not stop the check when they fail: the matrix is still measured and the failures are
listed at the end. The checkpoint and bundle are kept in benchmarks/.work and reused. Exit codes: 0
done; 1 a step failed; 2 this machine cannot run the check.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SRC = REPO / "src"
STEPS = 8
TUNING_BATCH = 8  # the middle of the matrix's batches
BATCHES = [1, 8, 32]
# What the steps import, beyond the standard library: module → what to install.
NEEDED = {
    "numpy": "numpy",
    "onnxruntime": "onnxruntime-gpu",
    "onnx": "onnx",
    "onnxscript": "onnxscript",
    "onnxconverter_common": "onnxconverter-common",
    "torch": "torch",
    "cv2": "opencv-python-headless",
    "PIL": "pillow",
    "typer": "typer",
    "rich": "rich",
    "skimage": "scikit-image",
    "matplotlib": "matplotlib",
    "pytest": "pytest",
    "xdist": "pytest-xdist",
    "filelock": "filelock",
}
NOTES = [
    "## How to read this",
    "",
    "- `pipeline` rows time psp-deploy's Pipeline as a user calls it (host arrays in and out); `graphs alone` times "
    "the same graphs' ONNX Runtime sessions with inputs and outputs bound on the GPU (I/O binding); `host overhead` "
    "is their difference: what the pipeline spends outside the graphs (copies, pre- and post-processing).",
    "- Every timed call ends with a device-wide CUDA synchronise. FP32 is IEEE FP32 (TF32 off) for ONNX Runtime "
    "and torch alike. ONNX Runtime's FP16 graphs run with its use_tf32 on, which FP16 tensor-core convolutions "
    "need there: the FP32 nodes they keep may run TF32.",
    "- `torch-official` is the official algorithm (grouped modconv, reference upfirdn2d, unfused activations) in "
    "eager torch on the same GPU; its fp16 rows run the FP32 model under torch.autocast(float16).",
    "- FP16 graphs were calibrated on 4 synthetic faces (`psp-deploy calibrate --precision fp16 --synthetic 4`); "
    "their accuracy against FP32 is in the bundle's reports/fp16.json.",
]


def say(message: str) -> None:
    print(f"gpu-check: {message}", file=sys.stderr, flush=True)


def missing_packages() -> list[str]:
    return [package for module, package in NEEDED.items() if importlib.util.find_spec(module) is None]


def preflight() -> str | None:
    """Why this machine cannot run the check, or None. The GPU comes first: it is what most machines lack."""
    from psp_deploy.benchmark.gpu import cuda_problem, nvidia_gpu_present

    if not nvidia_gpu_present():
        return cuda_problem()
    if missing := missing_packages():
        return f"missing Python packages for {sys.executable}: pip install {' '.join(missing)}"
    if problem := cuda_problem():
        return problem
    import torch

    if not torch.cuda.is_available():
        built = f"built for CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        return f"torch {torch.__version__} here cannot use the GPU ({built}): the torch baseline needs it"
    return None


@contextlib.contextmanager
def step(number: int, title: str) -> Iterator[None]:
    say(f"[{number}/{STEPS}] {title}")
    start = time.perf_counter()
    yield
    say(f"[{number}/{STEPS}] done in {time.perf_counter() - start:.0f} s")


class StepFailed(Exception):
    """A step's command failed; its own output says why."""


def command(*args: str) -> None:
    """Run a command with this Python, psp-deploy importable from src/, its output passed through."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")]))}
    code = subprocess.run([sys.executable, *args], cwd=REPO, env=env).returncode
    if code != 0:
        what = "no GPU tests were collected" if args[:2] == ("-m", "pytest") and code == 5 else f"exit code {code}"
        raise StepFailed(f"{' '.join(args)}: {what}")


BUILD = ("-m", "psp_deploy.cli", "build", "--backend", "onnxruntime", "--device", "cuda")
BUILD_INDUCTOR = ("-m", "psp_deploy.cli", "build", "--backend", "inductor", "--device", "cuda")


def calibrate_fp16(bundle: Path) -> None:
    from psp_deploy.bundle import Bundle

    if "fp16" in Bundle.open(bundle).manifest.models["encoder"]:
        say("FP16 graphs already there: reused")
        return
    command("-m", "psp_deploy.cli", "calibrate", str(bundle), "--precision", "fp16", "--synthetic", "4")


def gpu_accuracy(bundle: Path) -> dict[str, float | bool]:
    """The full-size graphs on three faces: GPU FP32 against CPU FP32, GPU FP16 against GPU FP32."""
    import numpy as np
    from skimage import data

    from psp_deploy.calibration.report import psnr_db
    from psp_deploy.runtime import Pipeline
    from psp_deploy.runtime.backends import BackendOptions

    photo = data.astronaut()
    photos = [photo, photo[:, ::-1].copy(), photo[::2, ::2].copy()]
    cuda = BackendOptions(device="cuda")
    with Pipeline.from_bundle(bundle) as cpu:
        x = np.stack([cpu.prepare(p, align=False)[0] for p in photos])
        codes = cpu.encode(x)
        image = cpu.synthesize(codes)[0]
    with Pipeline.from_bundle(bundle, options=cuda) as gpu:
        gpu_codes, gpu_image = gpu.encode(x), gpu.synthesize(codes)[0]
        e2e = gpu.synthesize(gpu_codes)[0]
    with Pipeline.from_bundle(bundle, precision="fp16", options=cuda) as half:
        half_image, half_e2e = half.synthesize(codes)[0], half.synthesize(half.encode(x))[0]
    outputs = [gpu_codes, gpu_image, e2e, half_image, half_e2e]
    return {
        "fp32_codes_max_abs_vs_cpu": float(np.abs(gpu_codes - codes).max()),
        "fp32_image_psnr_db_vs_cpu": psnr_db(image, gpu_image),
        "fp16_image_psnr_db_vs_fp32": psnr_db(gpu_image, half_image),
        "fp16_e2e_psnr_db_vs_fp32": psnr_db(e2e, half_e2e),
        "all_finite": all(bool(np.isfinite(out).all()) for out in outputs),
    }


def accuracy_lines(accuracy: dict[str, float | bool]) -> list[str]:
    return [
        "## Accuracy at full size (three faces)",
        "",
        f"- GPU FP32 against CPU FP32: codes max abs {accuracy['fp32_codes_max_abs_vs_cpu']:.2e}, images "
        f"{accuracy['fp32_image_psnr_db_vs_cpu']:.1f} dB (from the same codes)",
        f"- GPU FP16 against GPU FP32: images {accuracy['fp16_image_psnr_db_vs_fp32']:.1f} dB from the same codes, "
        f"{accuracy['fp16_e2e_psnr_db_vs_fp32']:.1f} dB end to end",
        f"- every output finite (no NaN/Inf): {'yes' if accuracy['all_finite'] else 'NO'}",
        "",
    ]


def bench_matrix(
    checkpoint: Path, bundle: Path, backends: list[str], warmup: int, runs: int, accuracy: dict | None
) -> Path:
    """The matrix, written as benchmarks/results/<gpu>.json and .md with plots; returns the report's path."""
    from common import RESULTS

    from psp_deploy.benchmark.gpu import gpu_slug
    from psp_deploy.benchmark.harness import BenchSettings, run_benchmark
    from psp_deploy.benchmark.report import write_report
    from psp_deploy.files import write_json

    stages = ["encode", "synthesize", "e2e"]
    settings = BenchSettings(
        backends=backends,
        precisions=["fp32", "fp16"],
        batches=BATCHES,
        stages=stages,
        warmup=warmup,
        runs=runs,
        device="cuda",
    )
    results = run_benchmark(bundle, settings, baseline=checkpoint, limits=False, progress=say)
    stem = gpu_slug(results["gpu"]["name"])
    if accuracy is not None:
        results["accuracy"] = accuracy
    write_json(RESULTS / f"{stem}.json", results)
    return write_report(
        results, RESULTS, stem, "make gpu-check", (accuracy_lines(accuracy) if accuracy else []) + NOTES
    )


@contextlib.contextmanager
def tolerated(failures: list[str]) -> Iterator[None]:
    """A step whose failure is listed rather than stopping the check (the later steps do not need it)."""
    try:
        yield
    except Exception as err:  # any failure of the step is reported, and the check goes on
        say(f"failed: {err!r}")
        failures.append(f"{type(err).__name__}: {err}")


def run(warmup: int, runs: int) -> tuple[Path, list[str]]:
    """The steps after the preflight; returns the report and the failures of the steps that went on."""
    from common import bundle, checkpoint

    failures: list[str] = []
    accuracy = None
    backends = ["onnxruntime", "inductor"]

    with step(2, "a synthetic 1024² FFHQ-encode checkpoint"):
        ckpt = checkpoint(1024)
    with step(3, "its scaled bundle, exported and checked against torch"):
        scaled = bundle(ckpt, "scaled")
    with step(4, "FP16 graphs: psp-deploy calibrate --precision fp16 --synthetic 4"):
        calibrate_fp16(scaled)
    with step(5, "the GPU tests: pytest -m gpu tests/gpu tests/engines/test_inductor.py"), tolerated(failures):
        command("-m", "pytest", "-m", "gpu", "tests/gpu", "tests/engines/test_inductor.py")
    with step(6, f"engines: onnxruntime's CUDA settings measured at batch {TUNING_BATCH}, inductor's packages"):
        for precision in ("fp32", "fp16"):
            with tolerated(failures):
                command(*BUILD, str(scaled), "--precision", precision, "--opt-batch", str(TUNING_BATCH))
            before = len(failures)
            with tolerated(failures):
                batches = ("--opt-batch", str(TUNING_BATCH), "--max-batch", str(max(BATCHES)))
                command(*BUILD_INDUCTOR, str(scaled), "--precision", precision, "--checkpoint", str(ckpt), *batches)
            if len(failures) > before:  # the matrix refuses, before measuring anything, a backend without engines
                backends = ["onnxruntime"]
    with step(7, "accuracy at full size: GPU FP32 against CPU FP32, GPU FP16 against GPU FP32"), tolerated(failures):
        accuracy = gpu_accuracy(scaled)
        say(" ".join(f"{name}={value:.4g}" for name, value in accuracy.items()))
    matrix = f"{', '.join(backends)}, FP32 and FP16 × batch {', '.join(map(str, BATCHES))}, torch baseline"
    with step(8, f"the benchmark matrix: {matrix}"):
        return bench_matrix(ckpt, scaled, backends, warmup, runs, accuracy), failures


def main() -> int:
    summary, details = __doc__.split("\n\n", 1)
    parser = argparse.ArgumentParser(description=summary, epilog=details, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls before each measurement (default 2)")
    parser.add_argument("--runs", type=int, default=5, help="timed calls per measurement (default 5)")
    args = parser.parse_args()
    if args.runs < 1 or args.warmup < 0:
        parser.error("--runs must be at least 1 and --warmup at least 0")  # exits 2, as bad input does
    sys.path.insert(0, str(SRC))  # psp-deploy from this checkout, installed or not
    say(f"[1/{STEPS}] preflight: an NVIDIA GPU, onnxruntime-gpu, torch with CUDA, the packages the steps import")
    if problem := preflight():
        say(f"this machine cannot run the GPU check: {problem}")
        return 2
    from psp_deploy.errors import PspDeployError

    try:
        report, failures = run(args.warmup, args.runs)
    except (StepFailed, PspDeployError) as err:
        say(f"failed: {err}")
        return 1
    say(f"report: {report}")
    for failure in failures:
        say(f"failed step: {failure}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
