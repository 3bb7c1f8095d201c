"""ONNX Runtime "engines": the session-optimized model saved per graph and precision.

Full optimizations (fusions, CPU-specific layouts) take seconds per session on large
graphs; saving the result once makes later starts fast. The result is specific to the
ONNX Runtime version and the CPU's instruction set, both recorded and checked.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import onnxruntime as ort

from ..machine import cpu_info
from ..runtime.backends.onnxruntime import machine_key


def build_optimized(onnx_path: Path, out_path: Path) -> dict[str, Any]:
    out_path.parent.mkdir(parents=True, exist_ok=True)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.optimized_model_filepath = str(out_path)
    ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    return {**machine_key(), "cpu": cpu_info()["model"], "source": onnx_path.name}
