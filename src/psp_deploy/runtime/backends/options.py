"""One typed options object for every backend: the CLI and the server build it once; each
backend reads the fields it needs and ignores the rest."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class BackendOptions:
    device: str = "cpu"  # onnxruntime: cpu or cuda
    threads: int | None = None  # CPU threads per graph (None: the backend's default, all cores)
    engines: bool = True  # onnxruntime: use optimized models saved by `psp-deploy build`
    force_bf16: bool = False  # openvino: bf16 on a CPU without native BF16
    hint: str = "latency"  # openvino performance hint: latency or throughput
    cache_dir: Path | None = None  # openvino: compiled-model caches (None: the user cache folder)
