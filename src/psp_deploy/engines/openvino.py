"""OpenVINO "engines": graphs compiled once into the bundle's cache, so a later start is fast.

OpenVINO keys its cache blobs by model, device and configuration and recompiles on any
mismatch, so the record is informative (what CPU, which precision) rather than a lock.
"""

from __future__ import annotations

from typing import Any

from ..bundle import Bundle
from ..machine import cpu_info
from ..runtime.backends.openvino import CACHE_DIR, OpenVINOBackend, import_openvino


def compile_cached(bundle: Bundle, graph: str, precision: str, force_bf16: bool = False) -> tuple[str, dict[str, Any]]:
    """Compile one graph into the cache; return the source graph file and the record's details."""
    backend = OpenVINOBackend.from_bundle(bundle, graph, precision, force_bf16=force_bf16)
    details = {
        "openvino": import_openvino().__version__,
        "cpu": cpu_info()["model"],
        "cpu_flags": cpu_info()["flags"],
        "inference_precision": backend.config["INFERENCE_PRECISION_HINT"],
        "cache_dir": str(CACHE_DIR),
    }
    return backend.path.name, details
