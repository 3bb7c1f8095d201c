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


def measure(fn: Callable[[], object], warmup: int, runs: int) -> Latency:
    """Seconds per call over ``runs`` calls after ``warmup`` untimed ones. Backends synchronize
    inside their calls (results are host arrays), so wall clock is the whole latency."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    t = np.array(times)
    percentiles = (float(np.percentile(t, q)) for q in (50, 90, 99))
    return Latency(float(t.min()), *percentiles, float(t.max()), float(t.mean()), runs)
