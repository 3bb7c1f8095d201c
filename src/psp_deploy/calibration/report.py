"""Accuracy of a reduced-precision bundle against FP32, on held-back samples."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..runtime.io import atomic_file

# Targets: FP16 synthesis ≥ 40 dB with nothing non-finite; INT8 end to end ≥ 28 dB, codes cosine ≥ 0.99.
TARGETS = {
    "fp16": {"synthesis psnr_db": 40.0, "synthesis nonfinite": 0},
    "int8": {"end-to-end psnr_db": 28.0, "encoder cosine_min": 0.99},
    "bf16": {"end-to-end psnr_db": 30.0, "encoder cosine_min": 0.99},
}
IMAGE_PEAK_TO_PEAK = 2.0  # images live in [−1, 1]


def psnr_db(reference: np.ndarray, test: np.ndarray) -> float:
    mse = float(np.mean((reference.astype(np.float64) - test.astype(np.float64)) ** 2))
    if not np.isfinite(mse):
        return float("-inf")
    return float("inf") if mse == 0 else 10 * np.log10(IMAGE_PEAK_TO_PEAK**2 / mse)


def cosines(reference: np.ndarray, test: np.ndarray) -> np.ndarray:
    a, b = reference.reshape(len(reference), -1), test.reshape(len(test), -1)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)


@dataclass
class GraphAccuracy:
    name: str  # encoder, synthesis, mapping or end-to-end
    samples: int
    max_abs_err: float
    nonfinite: int
    psnr_db: float | None = None  # images: mean over samples
    psnr_db_min: float | None = None
    cosine_mean: float | None = None  # codes: cosine of (codes − latent_avg), the encoder's own output
    cosine_min: float | None = None


def image_accuracy(name: str, reference: np.ndarray, test: np.ndarray) -> GraphAccuracy:
    per = [psnr_db(r, t) for r, t in zip(reference, test, strict=True)]
    return GraphAccuracy(
        name,
        len(reference),
        float(np.nanmax(np.abs(reference - test))),
        int((~np.isfinite(test)).sum()),
        float(np.mean(per)),
        float(np.min(per)),
    )


def code_accuracy(reference: np.ndarray, test: np.ndarray, latent_avg: np.ndarray) -> GraphAccuracy:
    cos = cosines(reference - latent_avg, test - latent_avg)
    return GraphAccuracy(
        "encoder",
        len(reference),
        float(np.nanmax(np.abs(reference - test))),
        int((~np.isfinite(test)).sum()),
        cosine_mean=float(cos.mean()),
        cosine_min=float(cos.min()),
    )


def vector_accuracy(name: str, reference: np.ndarray, test: np.ndarray) -> GraphAccuracy:
    cos = cosines(reference, test)
    return GraphAccuracy(
        name,
        len(reference),
        float(np.nanmax(np.abs(reference - test))),
        int((~np.isfinite(test)).sum()),
        cosine_mean=float(cos.mean()),
        cosine_min=float(cos.min()),
    )


@dataclass
class AccuracyReport:
    precision: str
    backend: str
    data: str  # where the calibration samples came from
    held_back: int
    graphs: list[GraphAccuracy]
    decisions: dict[str, Any] = field(default_factory=dict)  # per graph: what stayed FP32 / method, exclusions
    notes: list[str] = field(default_factory=list)

    def metric(self, key: str) -> float | None:
        graph, attr = key.split(" ")
        found = next((g for g in self.graphs if g.name == graph), None)
        return None if found is None else getattr(found, attr)

    def targets(self) -> list[dict[str, Any]]:
        """Each target with its measured value, whether it passed and by how much it missed."""
        rows = []
        for key, target in TARGETS.get(self.precision, {}).items():
            value = self.metric(key)
            if value is None:
                continue
            lower_is_better = key.endswith("nonfinite")
            passed = value <= target if lower_is_better else value >= target
            rows.append(
                {
                    "metric": key,
                    "value": value,
                    "target": target,
                    "passed": bool(passed),
                    "missed_by": 0.0 if passed else abs(value - target),
                }
            )
        return rows

    @property
    def passed(self) -> bool:
        return all(t["passed"] for t in self.targets())

    def save(self, path: Path) -> None:
        data = {**asdict(self), "targets": self.targets(), "passed": self.passed}
        with atomic_file(path) as f:
            f.write((json.dumps(data, indent=2, default=float) + "\n").encode())
