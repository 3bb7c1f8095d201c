"""The device-resident pipeline on ONNX Runtime: data crosses the bus once each way.

uint8 faces go up into a host buffer and are normalised on the device (io_graphs.normalise); the
encoder's codes stay on the device and feed the synthesis (they also come down: they are small);
the synthesis output becomes uint8 NHWC on the device (io_graphs.to_uint8) and comes down once,
into reused host buffers, page-locked where ONNX Runtime offers them. Every tensor passed between
sessions is a Buffer bound by address (ort_buffers.py). With style mixing the codes are mixed on
the host and uploaded again: a few kB per image.

With CUDA graphs the encoder and synthesis run at bucket sizes (chunks.py), each run naming its
bucket's captured graph. On CPU the same code runs with host buffers: that is how it is tested.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnxruntime as ort
from numpy.typing import NDArray

from ....errors import EngineError
from ....graph_io import CODES, IMAGE
from ...chunks import Chunk, padded, plan
from ...preprocess import PIXEL_CHANNELS
from ..base import check_feeds
from . import RUN_ERRORS, OnnxRuntimeBackend, open_session, run_options
from .buffers import Buffer, Buffers
from .io_graphs import (
    FACES,
    FLOATS,
    NORMALISED,
    PIXELS,
    TENSORS,
    UPLOADED,
    normalise_graph,
    to_uint8_graph,
    upload_graph,
)


@dataclass(frozen=True)
class Stager:
    """The small graph that takes one input dtype from a host buffer to the encoder's device buffer."""

    session: ort.InferenceSession
    graph: str
    source: str  # its input's name
    result: str  # its output's name


class ResidentChain:
    """Encoder → synthesis on one device with ONE set of buffers: ``lock`` serializes calls. A Chain
    (runtime/chain.py), as ``OnnxRuntimeBackend.chain`` gives it."""

    def __init__(self, encoder: OnnxRuntimeBackend, synthesis: OnnxRuntimeBackend, kind: str, limit: int) -> None:
        options = encoder.options
        self.encoder, self.synthesis = encoder, synthesis
        self.size, self.fixed = synthesis.record.batch or limit, synthesis.record.batch
        self.capturing = encoder.captures or synthesis.captures  # then chunks are padded to captured sizes

        # The small graphs run as written (no graph optimizations): their formulas must stay exact. Inputs
        # are staged in a host buffer, then normalised (uint8 faces) or copied (float32 tensors) onto the device.
        def small(graph: bytes, name: str) -> ort.InferenceSession:
            return open_session(graph, name, options, optimize=False)

        channels = encoder.record.inputs[0].row_shape[0]
        self.stagers: dict[np.dtype[Any], Stager] = {
            np.dtype(np.float32): Stager(small(upload_graph(channels), "upload"), "upload", TENSORS, UPLOADED)
        }
        if kind in PIXEL_CHANNELS:
            normalise = small(normalise_graph(kind), "normalise")
            self.stagers[np.dtype(np.uint8)] = Stager(normalise, "normalise", FACES, NORMALISED)
        self.to_uint8 = small(to_uint8_graph(), "to_uint8")
        self.buffers = Buffers(options.device)
        self.lock = threading.Lock()

    def check(self, x: NDArray[Any]) -> NDArray[Any]:
        """Encoder tensors checked here, not by the backend: this chain binds their memory by address."""
        return check_feeds({IMAGE: x}, self.encoder.inputs, "encoder")[IMAGE]

    def describe(self) -> dict[str, Any]:
        return {"resident": True, "pinned_host": self.buffers.pinned}

    def _chunks(self, total: int) -> list[Chunk]:
        return plan(total, self.size, self.fixed, self.capturing)

    def encode(self, x: NDArray[Any]) -> NDArray[np.float32]:
        """Faces (uint8 [N, 256, 256, C]) or encoder tensors (float32 [N, C, 256, 256]) → codes [N, n_styles, 512]."""
        with self.lock:
            return np.concatenate([self._encode(x, chunk) for chunk in self._chunks(len(x))])

    def synthesize(self, codes: NDArray[np.float32], outputs: Sequence[str]) -> dict[str, NDArray[np.uint8]]:
        """Codes [N, n_styles, 512] → the named outputs as uint8 [N, H, W, 3]."""
        with self.lock:
            pixels = self._pixels(len(codes), outputs)
            for chunk in self._chunks(len(codes)):
                self._codes.fill(padded(codes[chunk.start : chunk.start + chunk.rows], chunk.batch))
                self._synthesize(chunk, pixels)
            return pixels

    def chained(
        self, x: NDArray[Any], outputs: Sequence[str], timings: dict[str, float]
    ) -> tuple[NDArray[np.float32], dict[str, NDArray[np.uint8]]]:
        """Encode and synthesize, each chunk's codes passed on the device; seconds per stage added to ``timings``."""
        codes = []
        with self.lock:
            pixels = self._pixels(len(x), outputs)
            for chunk in self._chunks(len(x)):
                clock = time.perf_counter()
                codes.append(self._encode(x, chunk))
                middle = time.perf_counter()
                self._synthesize(chunk, pixels)
                end = time.perf_counter()
                timings["encode"] = timings.get("encode", 0.0) + middle - clock
                timings["synthesize"] = timings.get("synthesize", 0.0) + end - middle
        return np.concatenate(codes), pixels

    def _encode(self, x: NDArray[Any], chunk: Chunk) -> NDArray[np.float32]:
        """One chunk up and through the encoder; its codes left in the device codes buffer, and returned."""
        stager = self.stagers[x.dtype]  # uint8 faces only in a photo or sketch pipeline (Pipeline checks)
        staged = self.buffers.on_host(f"{x.dtype}_inputs", (self.size, *x.shape[1:]), x.dtype)
        staged.view()[: chunk.batch] = padded(x[chunk.start : chunk.start + chunk.rows], chunk.batch)
        image = self._device("encoder_input", self.encoder.record.inputs[0].row_shape)
        self._run(stager.session, stager.graph, {stager.source: staged}, {stager.result: image}, chunk.batch)
        self._run(
            self.encoder.session, "encoder", {IMAGE: image}, {CODES: self._codes}, chunk.batch, self.encoder.captures
        )
        return self._codes.rows(chunk.rows)

    def _pixels(self, total: int, outputs: Sequence[str]) -> dict[str, NDArray[np.uint8]]:
        """The caller's uint8 [N, H, W, 3] arrays, one per named output, which the chunks fill in place:
        each image is copied once on the host, out of the reused (page-locked) buffer."""
        shapes = {spec.name: spec.row_shape for spec in self.synthesis.record.outputs}  # [3, H, W]
        return {name: np.empty((total, *shapes[name][1:], shapes[name][0]), np.uint8) for name in outputs}

    def _synthesize(self, chunk: Chunk, pixels: dict[str, NDArray[np.uint8]]) -> None:
        """The codes buffer through the synthesis, then the named outputs to uint8 on the device, down
        into the host buffer, and into the chunk's rows of ``pixels``."""
        floats = {spec.name: self._device(spec.name, spec.row_shape) for spec in self.synthesis.record.outputs}
        self._run(
            self.synthesis.session, "synthesis", {CODES: self._codes}, floats, chunk.batch, self.synthesis.captures
        )
        for name, out in pixels.items():
            host = self.buffers.on_host(f"{name}_uint8", (self.size, *out.shape[1:]), np.uint8)
            self._run(self.to_uint8, "to_uint8", {FLOATS: floats[name]}, {PIXELS: host}, chunk.rows)
            out[chunk.start : chunk.start + chunk.rows] = host.view()[: chunk.rows]

    @property
    def _codes(self) -> Buffer:
        return self._device(CODES, self.encoder.record.outputs[0].row_shape)

    def _device(self, role: str, row_shape: tuple[int, ...]) -> Buffer:
        return self.buffers.on_device(role, (self.size, *row_shape), np.float32)

    def _run(
        self,
        session: ort.InferenceSession,
        graph: str,
        inputs: dict[str, Buffer],
        outputs: dict[str, Buffer],
        rows: int,
        captured: bool = False,
    ) -> None:
        """One session over the first ``rows`` rows of its buffers; a captured graph replays its bucket's CUDA graph."""
        try:
            binding = session.io_binding()
            for name, buffer in inputs.items():
                buffer.bind_input(binding, name, rows)
            for name, buffer in outputs.items():
                buffer.bind_output(binding, name, rows)
            session.run_with_iobinding(binding, run_options(rows) if captured else None)
        except RUN_ERRORS as err:
            raise EngineError(f"{graph}: ONNX Runtime failed on the device-resident path: {err}") from err
