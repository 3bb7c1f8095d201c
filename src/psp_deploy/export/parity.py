"""Exported graphs against the torch reference (official forms), on seeded inputs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from ..errors import ExportError
from ..models.forms import official_forms
from .graphs import GraphSpec

TOLERANCE = 1e-3  # max abs difference, images in [-1, 1] and codes alike


@dataclass(frozen=True)
class ParityResult:
    graph: str
    batch: int
    max_abs_diff: dict[str, float]  # per output name

    @property
    def worst(self) -> float:
        return max(self.max_abs_diff.values())


def ort_session(path: Path) -> ort.InferenceSession:
    """A plain CPU session: basic optimizations build in a fraction of the time of full ones."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def compare(spec: GraphSpec, session: ort.InferenceSession, batch: int, seed: int = 1234) -> ParityResult:
    inputs = spec.sample(batch, seed)
    with torch.no_grad(), official_forms(spec.module):
        expected = spec.module(*inputs)
    expected = expected if isinstance(expected, tuple) else (expected,)
    feeds = {t.name: x.numpy() for t, x in zip(spec.inputs, inputs, strict=True)}
    got = session.run([t.name for t in spec.outputs], feeds)
    diffs = {t.name: float(np.abs(g - e.numpy()).max()) for t, g, e in zip(spec.outputs, got, expected, strict=True)}
    return ParityResult(spec.name, batch, diffs)


def check_parity(spec: GraphSpec, path: Path, batch: int, tolerance: float = TOLERANCE) -> ParityResult:
    """Raise ExportError when ONNX Runtime and torch differ by more than ``tolerance``."""
    result = compare(spec, ort_session(path), batch)
    if not result.worst <= tolerance:  # also catches NaN
        raise ExportError(
            f"{spec.name} graph does not match the torch reference at batch {batch}: "
            f"max abs diff {result.max_abs_diff} > {tolerance}"
        )
    return result
