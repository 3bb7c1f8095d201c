"""What this machine is: CPU model, cores, ISA flags, library versions (torch-free).

Benchmarks record it beside their figures and engine records carry it, since speed and
even the numbers some kernels produce (BF16, AMX) depend on the CPU.
"""

from __future__ import annotations

import functools
import os
import platform
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
    return versions


def machine_slug() -> str:
    """A file-name-safe name for the CPU, e.g. 'amd-epyc' or 'intel-xeon-platinum-8480c'."""
    name = cpu_info()["model"].lower()
    for noise in ("(r)", "(tm)", "cpu", "processor", "@"):
        name = name.replace(noise, " ")
    words = [w for w in name.replace("-", " ").split() if not w.endswith("ghz") and w not in ("with", "radeon")]
    return "-".join(words[:5]) or "unknown-cpu"
