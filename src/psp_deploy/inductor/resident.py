"""The device-resident pipeline on CUDA with AOTInductor packages: data crosses the bus once each way.

ONNX Runtime's resident chain (backends/onnxruntime/resident.py) in torch: inputs go up from a reused
page-locked buffer, uint8 faces are normalised on the device by the float32 operations of
runtime/preprocess.py in numpy's order, the encoder's codes stay on the device for the synthesis (and
come down: they are small), and images become uint8 NHWC on the device and come down once into reused
page-locked buffers. Where the packages were measured to gain from it (or ``cuda_graph`` asks), each runs
as a CUDA graph per batch bucket (chunks.py), captured at the bucket's first use.

Not exercised on the CPU: the tests marked ``gpu`` run it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from ..errors import EngineError
from ..graph_io import IMAGE
from ..runtime.backends.base import check_feeds
from ..runtime.chunks import Chunk, padded, plan
from .backend import InductorBackend

Run = Callable[[Sequence[torch.Tensor]], list[torch.Tensor]]


class Captured:
    """One run of a package captured in a CUDA graph for one input shape: the input is copied into a static
    tensor and the outputs are read from static tensors, valid until the next replay."""

    def __init__(self, run: Run, example: torch.Tensor) -> None:
        self.input = example.clone()
        side = torch.cuda.Stream()  # type: ignore[no-untyped-call]  # warm up off the capturing stream, as torch's CUDA graph notes prescribe
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            run([self.input])
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.outputs = run([self.input])

    def __call__(self, x: torch.Tensor) -> list[torch.Tensor]:
        self.input.copy_(x)
        self.graph.replay()
        return self.outputs


def normalised(faces: torch.Tensor, kind: str) -> torch.Tensor:
    """uint8 [N, 256, 256, C] → float32 [N, C, 256, 256]: ``(x / 255 − 0.5) / 0.5`` (RGB) or ``x / 255``. The 255
    is a device tensor: torch's CUDA kernels divide by a Python number as a multiplication by its reciprocal,
    which can round the last bit otherwise than numpy's division (dividing by 0.5 and 2 is exact either way)."""
    x = faces.permute(0, 3, 1, 2).float() / torch.tensor(255.0, device=faces.device)
    return (x - 0.5) / 0.5 if kind == "rgb" else x


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """float32 [N, 3, H, W] → uint8 [N, H, W, 3]: ``trunc(clip((x + 1) / 2, 0, 1) · 255)`` (floor: x ≥ 0)."""
    scaled = ((images + 1.0) / 2.0).clamp(0.0, 1.0) * 255.0
    return scaled.floor().to(torch.uint8).permute(0, 2, 3, 1).contiguous()


class ResidentChain:
    """Encoder → synthesis on one GPU with ONE set of host buffers and captured graphs: ``lock`` serialises
    calls. A Chain (runtime/chain.py), as ``InductorBackend.chain`` gives it."""

    def __init__(self, encoder: InductorBackend, synthesis: InductorBackend, kind: str, limit: int) -> None:
        self.encoder, self.synthesis, self.kind = encoder, synthesis, kind
        self.size, self.fixed = synthesis.record.batch or limit, synthesis.record.batch
        self.capturing = encoder.captures or synthesis.captures  # then chunks are padded to captured sizes
        self.host: dict[str, torch.Tensor] = {}  # page-locked, by role
        self.captured: dict[tuple[str, int], Captured] = {}
        self.lock = threading.Lock()

    def check(self, x: NDArray[Any]) -> NDArray[Any]:
        return check_feeds({IMAGE: x}, self.encoder.inputs, "encoder")[IMAGE]

    def describe(self) -> dict[str, Any]:
        return {"resident": True, "pinned_host": True}

    def _chunks(self, total: int) -> list[Chunk]:
        return plan(total, self.size, self.fixed, self.capturing)

    def encode(self, x: NDArray[Any]) -> NDArray[np.float32]:
        with self.lock:
            return np.concatenate([self._encode(x, chunk)[1] for chunk in self._chunks(len(x))])

    def synthesize(self, codes: NDArray[np.float32], outputs: Sequence[str]) -> dict[str, NDArray[np.uint8]]:
        with self.lock:
            pixels = self._pixels(len(codes), outputs)
            for chunk in self._chunks(len(codes)):
                rows = padded(np.asarray(codes[chunk.start : chunk.start + chunk.rows], np.float32), chunk.batch)
                self._synthesize(self._up("codes", rows), chunk, pixels)
            return pixels

    def chained(
        self, x: NDArray[Any], outputs: Sequence[str], timings: dict[str, float]
    ) -> tuple[NDArray[np.float32], dict[str, NDArray[np.uint8]]]:
        codes = []
        with self.lock:
            pixels = self._pixels(len(x), outputs)
            for chunk in self._chunks(len(x)):
                clock = time.perf_counter()
                on_device, on_host = self._encode(x, chunk)
                codes.append(on_host)
                middle = time.perf_counter()
                self._synthesize(on_device, chunk, pixels)
                end = time.perf_counter()
                timings["encode"] = timings.get("encode", 0.0) + middle - clock
                timings["synthesize"] = timings.get("synthesize", 0.0) + end - middle
        return np.concatenate(codes), pixels

    def _encode(self, x: NDArray[Any], chunk: Chunk) -> tuple[torch.Tensor, NDArray[np.float32]]:
        """One chunk up and through the encoder: its codes on the device (all rows run), and the real rows' on
        the host."""
        staged = self._up(f"{x.dtype}_inputs", padded(x[chunk.start : chunk.start + chunk.rows], chunk.batch))
        image = normalised(staged, self.kind) if x.dtype == np.uint8 else staged
        codes = self._run(self.encoder, image)[0]
        return codes, codes[: chunk.rows].cpu().numpy()

    def _synthesize(self, codes: torch.Tensor, chunk: Chunk, pixels: dict[str, NDArray[np.uint8]]) -> None:
        """Codes through the synthesis; the named outputs to uint8 on the device, down into the page-locked
        buffer, and into the chunk's rows of ``pixels``."""
        images = dict(zip((s.name for s in self.synthesis.outputs), self._run(self.synthesis, codes), strict=True))
        for name, out in pixels.items():
            host = self._host(f"{name}_uint8", (self.size, *out.shape[1:]), torch.uint8)
            host[: chunk.rows].copy_(to_uint8(images[name][: chunk.rows]), non_blocking=True)
            torch.cuda.current_stream().synchronize()
            out[chunk.start : chunk.start + chunk.rows] = host[: chunk.rows].numpy()

    def _pixels(self, total: int, outputs: Sequence[str]) -> dict[str, NDArray[np.uint8]]:
        """The caller's uint8 [N, H, W, 3] arrays, one per named output, filled chunk by chunk."""
        shapes = {spec.name: [int(d) for d in spec.shape[1:]] for spec in self.synthesis.record.outputs}
        return {name: np.empty((total, *shapes[name][1:], shapes[name][0]), np.uint8) for name in outputs}

    def _host(self, role: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """The page-locked buffer of ``role``, made at its first use (every chunk has the same shape)."""
        if role not in self.host:
            self.host[role] = torch.empty(shape, dtype=dtype, pin_memory=True)
        return self.host[role]

    def _up(self, role: str, rows: NDArray[Any]) -> torch.Tensor:
        """``rows`` through the role's page-locked buffer onto the device. The buffer is reused only after the
        chunk's results came down (a synchronisation), so the asynchronous copy has read it by then."""
        dtype = torch.uint8 if rows.dtype == np.uint8 else torch.float32  # faces, or encoder tensors and codes
        host = self._host(role, (self.size, *rows.shape[1:]), dtype)
        host[: len(rows)].numpy()[...] = rows
        return host[: len(rows)].to(self.encoder.torch_device, non_blocking=True)

    def _run(self, backend: InductorBackend, x: torch.Tensor) -> list[torch.Tensor]:
        """One package on one chunk: replayed from its bucket's CUDA graph when the backend captures."""
        if not backend.captures:
            return backend.run([x])
        key = (backend.graph, len(x))
        if key not in self.captured:
            try:
                self.captured[key] = Captured(backend.run, x)
            except RuntimeError as err:
                raise EngineError(
                    f"{backend.graph}: capturing its package in a CUDA graph failed ({err}); run it without "
                    "CUDA graphs (rebuild, or leave cuda_graph off)"
                ) from err
        return self.captured[key](x)
