"""OpenVINO "engines": each graph compiled once and exported into the bundle, so a later start
imports the blob instead of compiling.

A blob is specific to OpenVINO's version, the CPU's instruction set and the compile settings;
all three are recorded, and the runtime compiles from the ONNX graph when they differ.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..bundle import Bundle
from ..files import atomic_file
from ..machine import cpu_info
from ..runtime.backends.openvino import OpenVINOBackend, machine_key


def export_compiled(
    bundle: Bundle, graph: str, precision: str, target: Path, force_bf16: bool = False
) -> dict[str, Any]:
    """Compile one graph afresh and export it to ``target``. Never through a cache, nor from an
    earlier blob: OpenVINO exports a model loaded from its cache as a blob it cannot import."""
    resolved = bundle.resolve(graph, precision, "openvino")
    path = bundle.model_path(graph, resolved.record.precision)
    backend = OpenVINOBackend(path, resolved.record, graph, precision=resolved.precision, force_bf16=force_bf16)
    backend.compile(path)
    with atomic_file(target) as f:
        f.write(backend.compiled.export_model().getvalue())
    return {**machine_key(backend.config), "cpu": cpu_info()["model"], "source": path.name}
