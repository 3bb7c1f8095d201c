"""The encoder → synthesis chain a Pipeline runs: one interface, one implementation per way of moving data.

``HostChain`` is the reference every backend can run: numpy arrays in and out of each backend's ``infer``,
faces normalised and images made uint8 on the host. A backend with a faster way (ONNX Runtime's
device-resident chain, backends/onnxruntime/resident.py) returns its own chain from ``Backend.chain``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from numpy.typing import NDArray

from ..config import PspConfig
from ..graph_io import CODES, IMAGE, IMAGE_256
from .chunks import padded, plan
from .preprocess import preprocess, to_uint8

if TYPE_CHECKING:
    from .backends.base import Backend


class Chain(Protocol):
    """Encoder and synthesis together. Inputs are uint8 faces [N, 256, 256, C] (``Pipeline.prepare_face``)
    or encoder tensors float32 [N, C, 256, 256] (``Pipeline.prepare``); images come out as uint8 [N, H, W, 3]."""

    def check(self, x: NDArray[Any]) -> NDArray[Any]:
        """Encoder tensors as this chain needs them checked before its first call (faces: checked by the Pipeline)."""
        ...

    def encode(self, x: NDArray[Any]) -> NDArray[np.float32]:
        """Inputs → W+ codes [N, n_styles, 512]."""
        ...

    def synthesize(self, codes: NDArray[np.float32], outputs: Sequence[str]) -> dict[str, NDArray[np.uint8]]:
        """Codes → the named synthesis outputs as uint8 [N, H, W, 3]."""
        ...

    def chained(
        self, x: NDArray[Any], outputs: Sequence[str], timings: dict[str, float]
    ) -> tuple[NDArray[np.float32], dict[str, NDArray[np.uint8]]]:
        """Encode then synthesize (codes and the named outputs); seconds per stage added to ``timings``."""
        ...

    def describe(self) -> dict[str, Any]:
        """What to record of how data moves: ``resident`` (stays on the device) and ``pinned_host``."""
        ...


def run_batched(
    fn: Callable[[NDArray[Any]], list[NDArray[Any]]], x: NDArray[Any], fixed: int | None, max_batch: int
) -> list[NDArray[Any]]:
    """Run ``fn`` over ``x`` in chunks. A fixed-batch graph gets full batches: the last partial one
    is padded with copies of its last row and the padding trimmed from the outputs."""
    pieces = [
        [out[: c.rows] for out in fn(padded(x[c.start : c.start + c.rows], c.batch))]
        for c in plan(len(x), max_batch, fixed)
    ]
    return [np.concatenate(parts) for parts in zip(*pieces, strict=True)]


class HostChain:
    """Every array on the host: each graph run through its backend's ``infer`` in chunks of ``max_batch``."""

    def __init__(self, encoder: Backend, synthesis: Backend, config: PspConfig, max_batch: int) -> None:
        self.encoder, self.synthesis, self.config, self.max_batch = encoder, synthesis, config, max_batch

    def check(self, x: NDArray[Any]) -> NDArray[Any]:
        return x  # each backend's infer checks what it is given

    def encode(self, x: NDArray[Any]) -> NDArray[np.float32]:
        run = lambda chunk: [self.encoder.infer({IMAGE: chunk})[CODES]]  # noqa: E731
        return run_batched(run, self.normalised(x), self.encoder.record.batch, self.max_batch)[0]

    def floats(self, codes: NDArray[np.float32]) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
        """Codes → (image [N, 3, R, R], image_256 [N, 3, 256, 256]) as the synthesis gives them."""

        def run(chunk: NDArray[np.float32]) -> list[NDArray[np.float32]]:
            out = self.synthesis.infer({CODES: chunk})
            return [out[IMAGE], out[IMAGE_256]]

        image, pooled = run_batched(run, np.asarray(codes, np.float32), self.synthesis.record.batch, self.max_batch)
        return image, pooled

    def synthesize(self, codes: NDArray[np.float32], outputs: Sequence[str]) -> dict[str, NDArray[np.uint8]]:
        image, pooled = self.floats(codes)
        return {name: to_uint8(image if name == IMAGE else pooled) for name in outputs}

    def chained(
        self, x: NDArray[Any], outputs: Sequence[str], timings: dict[str, float]
    ) -> tuple[NDArray[np.float32], dict[str, NDArray[np.uint8]]]:
        clock = time.perf_counter()
        codes = self.encode(x)
        middle = time.perf_counter()
        pixels = self.synthesize(codes, outputs)
        timings["encode"], timings["synthesize"] = middle - clock, time.perf_counter() - middle
        return codes, pixels

    def describe(self) -> dict[str, Any]:
        return {"resident": False, "pinned_host": False}

    def normalised(self, x: NDArray[Any]) -> NDArray[np.float32]:
        """Encoder tensors of uint8 faces, normalised on the host; tensors as they are."""
        if x.dtype != np.uint8:
            return np.asarray(x, np.float32)
        return np.stack([preprocess(face if face.shape[2] == 3 else face[..., 0], self.config) for face in x])
