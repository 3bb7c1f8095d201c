"""One benchmark measurement: the harness makes it, the results JSON stores it, the report reads it back."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

PARTS = ("pipeline", "graphs", "host")  # through the Pipeline; the graphs alone, bound on the device; the difference


@dataclass(frozen=True)
class Row:
    backend: str  # a backend's REGISTRY name, or the official path (baseline.EAGER, baseline.COMPILED)
    precision: str
    modconv: str  # the bundle's forms as harness.forms_label writes them; the official path runs 'grouped'
    batch: int
    stage: str  # align, encode, synthesize, e2e
    latency_s: Mapping[str, float]  # min, p50, p90, p99, max, mean, runs; a host row has p50 and mean only
    images_per_s: float | None = None  # None: a host row (a difference of times has no rate)
    gflops_per_s: float | None = None  # None: a stage that does no counted work (align) or a host row
    part: str = "pipeline"  # one of PARTS; results from before graphs-alone timing have pipeline rows only
    device: str = "cpu"  # as it ran (Pipeline.describe)
    tf32: bool = False  # as it ran (Pipeline.describe), not as asked
    graphs: Mapping[str, str] | None = None  # the precision each graph ran at (Pipeline.precisions)
    compile_s: float | None = None  # torch.compile's first calls at this batch, timed apart from the runs
    share_of_pipeline: float | None = None  # a host row's p50 over its pipeline row's
    includes_alignment: bool = False  # a host row of e2e on photos: the alignment is host work too

    @property
    def config(self) -> str:
        """'onnxruntime fp32 (scaled)': how tables, plots and warnings name what ran."""
        return f"{self.backend} {self.precision} ({self.modconv})"

    @property
    def key(self) -> dict[str, Any]:
        """What identifies the configuration, to find its other rows with ``find``."""
        return {"backend": self.backend, "precision": self.precision, "modconv": self.modconv}

    def as_json(self) -> dict[str, Any]:
        """The row as the results JSON holds it: the rates always (null where there is none), the other fields
        only where they have a value."""
        return {k: v for k, v in asdict(self).items() if v is not None or k in _ALWAYS}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Row:
        """A row of a results JSON, this version's or an older one's (fields it lacks take their defaults)."""
        return cls(**{k: v for k, v in data.items() if k in _FIELDS})


_FIELDS = {f.name for f in fields(Row)}
_ALWAYS = {"images_per_s", "gflops_per_s"}


def rows_of(results: Mapping[str, Any]) -> list[Row]:
    """The rows of a results JSON (as `bench` writes it)."""
    return [Row.from_json(r) for r in results["results"]]


def find(rows: list[Row], **where: Any) -> Row | None:
    """The first row whose fields equal ``where``."""
    return next((r for r in rows if all(getattr(r, k) == v for k, v in where.items())), None)
