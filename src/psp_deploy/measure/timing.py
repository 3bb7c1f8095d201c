"""Wall-clock latency statistics of a callable."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class Latency:
    min: float
    p50: float
    p90: float
    p99: float
    max: float
    mean: float
    runs: int

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def measure(fn: Callable[[], object], warmup: int, runs: int, sync: Callable[[], object] | None = None) -> Latency:
    """Seconds per call over ``runs`` calls after ``warmup`` untimed ones. ``sync`` (a device-wide
    synchronise) runs inside each timed call, so work a call left queued on a GPU is counted; without
    it, wall clock is the whole latency only of calls that return host results."""
    finish = sync or (lambda: None)
    for _ in range(warmup):
        fn()
        finish()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        finish()
        times.append(time.perf_counter() - start)
    t = np.array(times)
    percentiles = (float(np.percentile(t, q)) for q in (50, 90, 99))
    return Latency(float(t.min()), *percentiles, float(t.max()), float(t.mean()), runs)
