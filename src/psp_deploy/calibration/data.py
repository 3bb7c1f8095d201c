"""Calibration data: encoder inputs and synthesis codes, from photos or from the bundle itself.

Without photos, synthetic faces come from the bundle's own generator: z → mapping →
synthesis → the pooled 256² image, preprocessed for the encoder's task. Synthesis is
calibrated on W+ codes with every style from its own z (style-mixed, as real codes
vary per style). Everything is seeded; a share of the samples is held back for the
accuracy report and never used to calibrate.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config import STYLE_DIM
from ..errors import CalibrationError, PspDeployError
from ..graph_io import ENCODER, GRAPH_IO, MAPPING, SYNTHESIS
from ..runtime import Pipeline
from ..runtime.batch import collect_inputs
from ..runtime.io import read_image
from ..runtime.preprocess import preprocess, to_gray

Progress = Callable[[str, int, int], None]  # (what, done, total)


@dataclass
class CalibrationSet:
    """Encoder inputs [N, C, 256, 256] and synthesis codes [N, n_styles, 512], split in two."""

    images: np.ndarray
    codes: np.ndarray
    held_images: np.ndarray
    held_codes: np.ndarray
    source: str

    def feeds(self, graph: str, held: bool = False) -> Iterator[dict[str, np.ndarray]]:
        """One-sample feeds for ``graph``: the calibration split, or the held-back one."""
        if graph == ENCODER.graph:
            return ({ENCODER.input: x[None]} for x in (self.held_images if held else self.images))
        if graph == SYNTHESIS.graph:
            return ({SYNTHESIS.input: c[None]} for c in (self.held_codes if held else self.codes))
        rng = np.random.default_rng(len(self.codes) + int(held))
        return ({MAPPING.input: rng.standard_normal((1, STYLE_DIM)).astype(np.float32)} for _ in range(len(self.codes)))

    def samples(self, graph: str, held: bool = False) -> np.ndarray:
        """The same samples as one array of ``graph``'s input."""
        return np.concatenate([feed[GRAPH_IO[graph].input] for feed in self.feeds(graph, held)])


class FeedReader:
    """onnxruntime.quantization's CalibrationDataReader protocol over a list of feeds."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]) -> None:
        self.feeds = feeds
        self._it = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)

    def __len__(self) -> int:
        return len(self.feeds)

    def set_range(self, start_index: int, end_index: int) -> None:
        """Read only feeds[start_index:end_index] (quantize_static's strided calibration)."""
        self._it = iter(self.feeds[start_index:end_index])

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:  # qdq_loss_debug iterates readers
        return iter(self.feeds)


def style_mixed_codes(pipeline: Pipeline, n: int, rng: np.random.Generator) -> np.ndarray:
    z = rng.standard_normal((n * pipeline.config.n_styles, STYLE_DIM)).astype(np.float32)
    return pipeline.mapping(z).reshape(n, pipeline.config.n_styles, STYLE_DIM)


def _as_encoder_input(pooled: np.ndarray, pipeline: Pipeline, rng: np.random.Generator) -> np.ndarray:
    """A synthesized face (uint8 RGB) as the encoder of this task sees its input."""
    kind, config = pipeline.config.input_kind, pipeline.config
    if kind == "rgb":
        return preprocess(pooled, config)
    gray = to_gray(pooled)
    if kind == "sketch":
        return preprocess(gray, config)
    # label maps: luminance bands, each band a class, classes shuffled per image
    bands = np.minimum(gray.astype(np.int64) * config.label_nc // 256, config.label_nc - 1)
    return preprocess(rng.permutation(config.label_nc)[bands], config)


def synthetic_inputs(pipeline: Pipeline, n: int, rng: np.random.Generator, progress: Progress) -> np.ndarray:
    from ..runtime.preprocess import to_uint8

    inputs = []
    for i in range(n):
        progress("synthesizing calibration faces", i, n)
        pooled = pipeline.synthesize(style_mixed_codes(pipeline, 1, rng))[1]
        inputs.append(_as_encoder_input(to_uint8(pooled)[0], pipeline, rng))
    progress("synthesizing calibration faces", n, n)
    return np.stack(inputs)


def photo_inputs(pipeline: Pipeline, folder: Path, progress: Progress) -> np.ndarray:
    items = collect_inputs([folder])
    mode = "RGB" if pipeline.config.input_kind == "rgb" else "L"
    inputs = []
    for i, item in enumerate(items):
        progress("aligning calibration photos", i, len(items))
        try:
            inputs.append(pipeline.prepare(read_image(item.source, mode))[0])
        except PspDeployError:
            continue  # unusable photos are skipped; too few usable ones fail below
    if len(inputs) < 4:
        raise CalibrationError(f"{folder}: only {len(inputs)} usable photos; calibration needs at least 4")
    return np.stack(inputs)


def make_calibration_set(
    pipeline: Pipeline,
    *,
    images: Path | None = None,
    synthetic: int | None = None,
    holdout: float = 0.25,
    seed: int = 0,
    progress: Progress | None = None,
) -> CalibrationSet:
    """Photos from ``images`` (aligned as the runtime does) or ``synthetic`` generated faces."""
    say = progress or (lambda *_: None)
    if (images is None) == (synthetic is None):
        raise CalibrationError("give either a folder of photos (--images) or a number of synthetic faces (--synthetic)")
    if not 0.0 < holdout < 1.0:
        raise CalibrationError(f"holdout must be a fraction between 0 and 1, got {holdout}")
    rng = np.random.default_rng(seed)
    if images is not None:
        inputs, source = photo_inputs(pipeline, Path(images), say), f"photos from {images}"
    else:
        if synthetic < 4:
            raise CalibrationError(f"--synthetic needs at least 4 samples, got {synthetic}")
        inputs, source = synthetic_inputs(pipeline, synthetic, rng, say), f"{synthetic} synthetic faces (seed {seed})"
    n_held = max(1, int(round(len(inputs) * holdout)))
    codes = style_mixed_codes(pipeline, len(inputs), rng)
    return CalibrationSet(inputs[n_held:], codes[n_held:], inputs[:n_held], codes[:n_held], source)
