"""How a batch of rows is cut into the batches a graph runs: pure functions, the same for every backend.

A graph with a fixed batch (grouped synthesis) runs exactly that many rows; a CUDA graph replays
only the shapes it was captured at, so with CUDA graphs a batch is padded up to one of a few
bucket sizes. Padding repeats the last real row (real data: no NaNs or denormals from garbage), and
the padded rows' outputs are dropped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

import numpy as np
from numpy.typing import NDArray

Scalar = TypeVar("Scalar", bound=np.generic)


@dataclass(frozen=True)
class Chunk:
    start: int  # first row
    rows: int  # real rows
    batch: int  # rows run: ``rows``, or padded up to a fixed batch or a bucket


def buckets(limit: int) -> tuple[int, ...]:
    """The batch sizes CUDA graphs are captured at: the powers of two below ``limit``, and ``limit``."""
    if limit < 1:
        raise ValueError(f"a batch limit must be at least 1, got {limit}")
    return (*(1 << k for k in range(limit.bit_length()) if 1 << k < limit), limit)


def plan(total: int, limit: int, fixed: int | None = None, bucketed: bool = False) -> list[Chunk]:
    """Rows 0..total in chunks of ``fixed`` rows (a fixed-batch graph) or at most ``limit``. The last
    chunk may be partial: padded to ``fixed``, or with ``bucketed`` to the smallest bucket holding
    it; else run as it is."""
    size = fixed or limit
    chunks = []
    for start in range(0, total, size):
        rows = min(size, total - start)
        batch = fixed or (next(b for b in buckets(size) if b >= rows) if bucketed else rows)
        chunks.append(Chunk(start, rows, batch))
    return chunks


def padded(x: NDArray[Scalar], batch: int) -> NDArray[Scalar]:
    """``x`` with copies of its last row appended up to ``batch`` rows."""
    if len(x) >= batch:
        return x
    return np.concatenate([x, np.repeat(x[-1:], batch - len(x), axis=0)])
