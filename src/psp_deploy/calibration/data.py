"""Calibration data: encoder inputs and synthesis codes, from photos or from the bundle itself.

Without photos, synthetic faces come from the bundle's own generator: z → mapping →
synthesis → the pooled 256² image, preprocessed for the encoder's task. Synthesis is
calibrated on W+ codes with every style from its own z (style-mixed, as real codes
vary per style). Everything is seeded; a share of the samples is held back for the
accuracy report and never used to calibrate.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..config import STYLE_DIM
from ..errors import CalibrationError, InputError
from ..graph_io import ENCODER, GRAPH_IO, MAPPING, SYNTHESIS
from ..runtime import Pipeline
from ..runtime.batch import collect_inputs
from ..runtime.io import read_image
from ..runtime.preprocess import preprocess, to_gray
from .progress import Progress, quiet

MIN_SAMPLES = 4  # calibration and its held-back evaluation need at least this many faces
ALIGNED_SIZE = 256  # what `psp-deploy align` writes by default
LISTED = 10  # photos left out that a refusal names (the rest are counted)


@dataclass
class Dropped:
    """A photo calibration could not use, and why (no face found, unreadable, …)."""

    photo: str
    reason: str


@dataclass
class CalibrationSet:
    """Encoder inputs [N, C, 256, 256] and synthesis codes [N, n_styles, 512], split in two."""

    images: np.ndarray
    codes: np.ndarray
    held_images: np.ndarray
    held_codes: np.ndarray
    source: str
    dropped: list[Dropped] = field(default_factory=list)  # photos left out, each with its reason
    notes: list[str] = field(default_factory=list)  # what the user should know about the samples

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
    """onnxruntime.quantization's CalibrationDataReader protocol over a list of feeds; ``on_read`` is told
    each feed handed out (a calibration pass's progress)."""

    def __init__(self, feeds: list[dict[str, np.ndarray]], on_read: Callable[[], None] | None = None) -> None:
        self.feeds = feeds
        self._it = iter(feeds)
        self.on_read = on_read

    def get_next(self) -> dict[str, np.ndarray] | None:
        feed = next(self._it, None)
        if feed is not None and self.on_read is not None:
            self.on_read()
        return feed

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


def _reason(err: InputError, source: Path) -> str:
    """An error's message without the file name most of them start with (the line names the file)."""
    message = str(err)
    for prefix in (f"{source}: ", f"{source.name}: "):
        message = message.removeprefix(prefix)
    return message


def photo_inputs(
    pipeline: Pipeline, folder: Path, progress: Progress, align: bool | None = None
) -> tuple[np.ndarray, list[Dropped], list[str]]:
    """Each photo of ``folder`` as the encoder's input, aligned as the runtime does unless ``align`` is False
    (already-aligned crops, used as they are); the photos that could not be used, each with its reason; and
    notes. Too few usable photos are refused, naming the dropped ones."""
    items = collect_inputs([folder])
    mode = "RGB" if pipeline.config.input_kind == "rgb" else "L"
    aligning = pipeline.wants_alignment(align)
    stage = "aligning calibration photos" if aligning else "reading calibration photos"
    inputs, dropped, crop_sized = [], [], 0
    for i, item in enumerate(items):
        progress(stage, i, len(items))
        try:
            image = read_image(item.source, mode)
            inputs.append(pipeline.prepare(image, align)[0])
        except InputError as err:  # no face, unreadable: named in the report, never silently skipped
            dropped.append(Dropped(str(item.source), _reason(err, item.source)))
            continue
        crop_sized += image.shape[:2] == (ALIGNED_SIZE, ALIGNED_SIZE)
    progress(stage, len(items), len(items))
    if len(inputs) < MIN_SAMPLES:
        listed = "; ".join(f"{d.photo}: {d.reason}" for d in dropped[:LISTED])
        more = f"; and {len(dropped) - LISTED} more" if len(dropped) > LISTED else ""
        raise CalibrationError(
            f"{folder}: only {len(inputs)} of {len(items)} photos usable; calibration needs at least {MIN_SAMPLES}"
            + (f" (left out: {listed}{more})" if dropped else "")
        )
    notes = []
    if aligning and crop_sized == len(inputs):
        notes.append(
            f"every photo is {ALIGNED_SIZE}×{ALIGNED_SIZE}: if they are aligned crops (psp-deploy align), they were "
            "aligned a second time; pass --no-align (align=False) to use them as they are"
        )
    return np.stack(inputs), dropped, notes


def check_source(images: Path | None, synthetic: int | None, holdout: float, align: bool | None) -> None:
    """Refuse a calibration source that cannot work, before anything is loaded."""
    if (images is None) == (synthetic is None):
        raise CalibrationError("give either a folder of photos (--images) or a number of synthetic faces (--synthetic)")
    if not 0.0 < holdout < 1.0:
        raise CalibrationError(f"holdout must be a fraction between 0 and 1, got {holdout}")
    if synthetic is not None and synthetic < MIN_SAMPLES:
        raise CalibrationError(f"--synthetic needs at least {MIN_SAMPLES} samples, got {synthetic}")
    if synthetic is not None and align is not None:
        raise CalibrationError("--align/--no-align (align=) is for photos (--images): synthetic faces are made aligned")


def make_calibration_set(
    pipeline: Pipeline,
    *,
    images: Path | None = None,
    synthetic: int | None = None,
    holdout: float = 0.25,
    seed: int = 0,
    align: bool | None = None,
    progress: Progress = quiet,
) -> CalibrationSet:
    """Photos from ``images`` (aligned as the runtime does; ``align=False``: already-aligned crops, used as
    they are) or ``synthetic`` generated faces. Photos that cannot be used (no face, unreadable) are listed
    in ``dropped`` with their reasons; fewer than MIN_SAMPLES usable ones are refused."""
    check_source(images, synthetic, holdout, align)
    rng = np.random.default_rng(seed)
    dropped: list[Dropped] = []
    notes: list[str] = []
    if images is not None:
        inputs, dropped, notes = photo_inputs(pipeline, Path(images), progress, align)
        used = f"{len(inputs)} of {len(inputs) + len(dropped)}" if dropped else f"{len(inputs)}"
        as_is = "" if pipeline.wants_alignment(align) else " (already aligned: used as they are)"
        source = f"{used} photos from {images}{as_is}"
    else:
        inputs = synthetic_inputs(pipeline, synthetic, rng, progress)
        source = f"{synthetic} synthetic faces (seed {seed})"
    n_held = max(1, int(round(len(inputs) * holdout)))
    codes = style_mixed_codes(pipeline, len(inputs), rng)
    return CalibrationSet(inputs[n_held:], codes[n_held:], inputs[:n_held], codes[:n_held], source, dropped, notes)
