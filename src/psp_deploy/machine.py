"""What this machine is: CPU model, cores, ISA flags, its NVIDIA GPU, library versions (torch-free).

Benchmarks record it beside their figures and engine records carry it, since speed and
even the numbers some kernels produce (BF16, AMX) depend on the CPU, and tuned GPU settings
on the GPU.
"""

from __future__ import annotations

import functools
import os
import platform
import re
import shutil
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

ISA_FLAGS = (
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "avx_vnni",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
)
SMI_QUERY = ("name", "driver_version", "memory.total", "compute_cap")
SMI_KEYS = ("name", "driver", "memory_mib", "compute_capability")
LIBRARIES = ("numpy", "onnxruntime", "onnx", "torch", "openvino", "tensorrt", "opencv-python-headless", "psp-deploy")


@functools.cache
def cpu_info() -> dict[str, Any]:
    """CPU model name, logical cores and the ISA flags that matter for inference kernels."""
    model, flags = platform.processor() or platform.machine(), set()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model in ("", platform.machine(), platform.processor()):
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    return {
        "model": model,
        "logical_cores": os.cpu_count(),
        "flags": [f for f in ISA_FLAGS if f in flags],
    }


def has_native_bf16() -> bool:
    flags = set(cpu_info()["flags"])
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    # The module that runs, not the distribution named onnxruntime: onnxruntime-gpu installs the same module,
    # and a CPU onnxruntime left beside it would be reported instead (seen on an H200: 1.30.0 for 1.31.1).
    # Imported here: this module describes machines that may lack it (make gpu-check's preflight).
    try:
        import onnxruntime
    except ImportError:
        versions.pop("onnxruntime", None)  # a distribution's metadata without a module that imports
        return versions
    versions["onnxruntime"] = onnxruntime.__version__
    return versions


def machine_slug() -> str:
    """A file-name-safe name for the CPU, e.g. 'amd-epyc' or 'intel-xeon-platinum-8480c'."""
    name = cpu_info()["model"].lower()
    for noise in ("(r)", "(tm)", "cpu", "processor", "@"):
        name = name.replace(noise, " ")
    words = [w for w in name.replace("-", " ").split() if not w.endswith("ghz") and w not in ("with", "radeon")]
    return "-".join(words[:5]) or "unknown-cpu"


def _smi(*args: str) -> str:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return ""
    try:
        return subprocess.run([exe, *args], capture_output=True, text=True, timeout=60, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def parse_nvidia_smi(query: str, banner: str) -> dict[str, Any]:
    """nvidia-smi's CSV query (one line per GPU) and its banner → the first GPU's name, driver, memory
    and compute capability, the GPU count, and the newest CUDA the driver supports (the banner's)."""
    gpus = [line.split(",") for line in query.splitlines() if line.strip()]
    if not gpus:
        return {}
    facts: dict[str, Any] = dict(zip(SMI_KEYS, (value.strip() for value in gpus[0]), strict=False))
    facts["count"] = len(gpus)
    if match := re.search(r"CUDA Version:\s*([\d.]+)", banner):
        facts["driver_cuda"] = match[1]
    return facts


@functools.cache
def nvidia_smi() -> dict[str, Any]:
    query = _smi(f"--query-gpu={','.join(SMI_QUERY)}", "--format=csv,noheader,nounits")
    return parse_nvidia_smi(query, _smi() if query else "")
