"""Accuracy of a reduced-precision bundle against FP32, on held-back samples."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..files import write_json


@dataclass(frozen=True)
class Target:
    """A bound one accuracy metric must meet, and which side of it passes."""

    metric: str  # "<graph> <GraphAccuracy field>"
    bound: float
    at_least: bool  # passes at or above the bound (PSNR, cosine); else at or below it (non-finite count)
    label: str  # the metric as people name it
    unit: str = ""
    digits: int = 1

    def requirement(self) -> str:
        unit = f" {self.unit}" if self.unit else ""
        return f"{self.label} {'≥' if self.at_least else '≤'} {self.bound:g}{unit}"

    def passes(self, value: float) -> bool:
        return value >= self.bound if self.at_least else value <= self.bound

    def verdict(self, value: float) -> str:
        """E.g. "synthesis PSNR ≥ 40 dB: 41.2 pass" or "...: 38.0 MISSED by 2.0 dB"; a miss too small for
        the usual digits gets two more ("27.980 MISSED by 0.020 dB", not "28.0 MISSED by 0.0 dB")."""
        miss = abs(value - self.bound)
        digits = self.digits if self.passes(value) or round(miss, self.digits) else self.digits + 2
        shown = f"{self.requirement()}: {value:.{digits}f}"
        if self.passes(value):
            return f"{shown} pass"
        return f"{shown} MISSED by {miss:.{digits}f}{f' {self.unit}' if self.unit else ''}"


def _cosine(graph: str) -> Target:
    return Target(f"{graph} cosine_min", 0.99, True, f"{graph} codes cosine (worst sample)", digits=4)


def _psnr(graph: str, bound: float) -> Target:
    return Target(f"{graph} psnr_db", bound, True, f"{graph} PSNR (mean)", "dB")


TARGETS = {
    "fp16": (
        _psnr("synthesis", 40.0),
        Target("synthesis nonfinite", 0, False, "synthesis non-finite values", digits=0),
    ),
    "int8": (_psnr("end-to-end", 28.0), _cosine("encoder")),
    "bf16": (_psnr("end-to-end", 30.0), _cosine("encoder")),
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
    warnings: list[str] = field(default_factory=list)  # what makes these figures less trustworthy
    dropped: list[dict[str, str]] = field(default_factory=list)  # photos left out: {"photo", "reason"} each

    def metric(self, key: str) -> float | None:
        graph, attr = key.split(" ")
        found = next((g for g in self.graphs if g.name == graph), None)
        return None if found is None else getattr(found, attr)

    def targets(self) -> list[dict[str, Any]]:
        """Each target with its measured value, whether it passed and by how much it missed."""
        rows = []
        for target in TARGETS.get(self.precision, ()):
            value = self.metric(target.metric)
            if value is None:
                continue
            passed = target.passes(value)
            rows.append(
                {
                    "metric": target.metric,
                    "requirement": target.requirement(),
                    "value": value,
                    "target": target.bound,
                    "passed": bool(passed),
                    "missed_by": 0.0 if passed else abs(value - target.bound),
                    "verdict": target.verdict(value),
                }
            )
        return rows

    @property
    def passed(self) -> bool:
        return all(t["passed"] for t in self.targets())

    def decision_lines(self) -> list[str]:
        """Per graph, what calibration chose: the winning INT8 method, and the nodes kept in float."""
        lines = []
        for graph, decision in self.decisions.items():
            if "method" in decision:
                scores = ", ".join(f"{t['method']} {t['score']:.4g}" for t in decision["tried"] if not t["kept_float"])
                lines.append(f"{graph}: {decision['method']} calibration won ({decision['score']}: {scores})")
                lines.append(f"{graph}: {_light(decision['light'])}")
                lines.append(f"{graph}: {_kept('float for accuracy', decision['kept_float'])}")
            if "kept_fp32" in decision:
                lines.append(f"{graph}: {_kept('FP32', list(decision['kept_fp32']))}")
        return lines

    def save(self, path: Path) -> None:
        data = {**asdict(self), "targets": self.targets(), "passed": self.passed}
        write_json(path, data, default=float)


SHOWN_NODES = 12  # the rest are in the saved report


def _light(light: dict[str, Any]) -> str:
    return (
        f"{len(light['nodes'])} light nodes in float ({light['flops_share']:.2%} of the multiply-adds, within "
        f"the {light['budget']:.0%} budget)"
    )


def _kept(precision: str, nodes: list[str]) -> str:
    if not nodes:
        return f"no nodes kept in {precision}"
    more = f" and {len(nodes) - SHOWN_NODES} more (see the saved report)" if len(nodes) > SHOWN_NODES else ""
    return f"{len(nodes)} nodes kept in {precision}: {', '.join(nodes[:SHOWN_NODES])}{more}"
