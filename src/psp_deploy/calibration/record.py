"""The calibrated graphs in the bundle's manifest, and the accuracy report beside them."""

from __future__ import annotations

from pathlib import Path

from ..bundle import Bundle, ModelRecord, sha256_file
from .convert import target_path
from .report import AccuracyReport


def register(bundle: Bundle, graph: str, precision: str, decision: dict) -> None:
    """The new ``<graph>.<precision>.onnx`` in the manifest (in memory: saved by ``record``), so the
    backends open it for evaluation exactly as the runtime will."""
    base, path = bundle.record(graph), target_path(bundle, graph, precision)
    bundle.manifest.models[graph][precision] = ModelRecord(
        path.name, sha256_file(path), precision, base.opset, base.inputs, base.outputs, notes=decision
    )


def record(bundle: Bundle, report: AccuracyReport, graphs: list[str], saved: Path) -> None:
    """Save ``report`` at ``saved`` (in the bundle) and the manifest, each registered graph's notes
    naming the report and whether it passed."""
    saved.parent.mkdir(exist_ok=True)
    report.save(saved)
    for graph in graphs:
        entry = bundle.manifest.models[graph][report.precision]
        entry.notes = {**entry.notes, "report": str(saved.relative_to(bundle.root)), "passed": report.passed}
    bundle.save_manifest()
