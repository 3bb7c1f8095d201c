"""A video through the pipeline: every frame's faces tracked and smoothed over time, run in batches,
pasted back, and the frames encoded again with the source's rate, rotation and audio.

Memory stays flat for any length: frames are decoded ahead through a bounded queue (video.prefetched),
the centred smoother holds a few frames, and a batch holds at most ``batch`` faces' frames. A stop
(Ctrl-C, SIGTERM: ``stop`` returns True) ends the output after the frames done, playable, and says so.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from ..errors import InputError
from .paste import MASKS, paste_all
from .pipeline import Pipeline, RunOptions
from .preprocess import face_pixels
from .smoothing import SMOOTHING
from .video import FrameFaces, VideoWriter, prefetched, probe, read_frames, track_faces

DEFAULT_SMOOTHING = (
    "centred"  # a file is read whole: no lag (runtime/smoothing.py; measured in tests/runtime/test_video.py)
)


@dataclass(frozen=True)
class VideoOptions:
    """How `psp-deploy video` treats a video: which faces, how steady, how pasted, how many faces a batch."""

    smoothing: str = DEFAULT_SMOOTHING  # "centred" (files), "causal" (streams) or "none"
    every: bool = False  # every face of a frame; else the one the aligner's policy picks
    min_face: float = 0.0  # faces whose crop is smaller (photo pixels across) are left as they are
    mask: str = "face"  # "face" (soft, from the landmarks) or "square"
    batch: int = 8  # faces per synthesis batch
    row: RunOptions = field(default_factory=lambda: RunOptions(align=False))

    def __post_init__(self) -> None:
        if self.smoothing not in SMOOTHING:
            raise InputError(f"smoothing must be one of {', '.join(SMOOTHING)}, got {self.smoothing!r}")
        if self.mask not in MASKS:
            raise InputError(f"mask must be one of {', '.join(MASKS)}, got {self.mask!r}")
        if self.batch < 1 or self.min_face < 0:
            raise InputError(f"batch must be at least 1 and min_face at least 0, got {self.batch} and {self.min_face}")


@dataclass
class VideoSummary:
    output: Path
    frames: int = 0  # frames written
    total: int | None = None  # frames the source holds, when its container says
    frames_without_face: int = 0  # passed through unchanged
    faces: int = 0
    skipped_faces: int = 0  # under min_face
    seconds: float = 0.0
    stopped: bool = False
    stage_seconds: dict[str, float] = field(default_factory=dict)  # decode + align, generate, paste, encode

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds else 0.0


def check_video_pipeline(pipeline: Pipeline) -> None:
    if pipeline.config.input_kind != "rgb":
        raise InputError(
            f"a {pipeline.config.input_kind} model takes no photos: video runs face models (encode, toonify, "
            "frontalization, super-resolution)"
        )


def run_video(
    pipeline: Pipeline,
    source: str | Path,
    output: str | Path,
    options: VideoOptions = VideoOptions(),
    *,
    progress: Callable[[VideoSummary], None] | None = None,
    stop: Callable[[], bool] = lambda: False,
) -> VideoSummary:
    """``source`` through ``pipeline`` into ``output`` (a new file: the input is never replaced).
    ``progress`` is called after each batch with the summary so far."""
    check_video_pipeline(pipeline)
    info = probe(source)
    summary = VideoSummary(Path(output), total=info.frames)
    clock = time.perf_counter()
    frames = prefetched(read_frames(source))
    tracked = track_faces(
        frames,
        pipeline.aligner,
        float(info.fps),
        smoothing=options.smoothing,
        every=options.every,
        min_face=options.min_face,
    )
    with VideoWriter(output, like=info) as writer:
        for group in _groups(_timed(tracked, summary.stage_seconds), options.batch):
            _write(pipeline, writer, group, options, summary)
            summary.seconds = time.perf_counter() - clock
            if progress:
                progress(summary)
            if stop():
                summary.stopped = True
                break
    summary.seconds = time.perf_counter() - clock
    return summary


def _timed(items: Iterator[FrameFaces], seconds: dict[str, float]) -> Iterator[FrameFaces]:
    """``items``, the time spent producing them (decode and alignment) added up under "decode+align"."""
    while True:
        clock = time.perf_counter()
        item = next(items, None)
        seconds["decode+align"] = seconds.get("decode+align", 0.0) + time.perf_counter() - clock
        if item is None:
            return
        yield item


def _groups(tracked: Iterable[FrameFaces], faces: int) -> Iterator[list[FrameFaces]]:
    """Consecutive frames whose faces add up to at most ``faces`` (a frame with more comes alone)."""
    group: list[FrameFaces] = []
    count = 0
    for item in tracked:
        if group and count + len(item.faces) > faces:
            yield group
            group, count = [], 0
        group.append(item)
        count += len(item.faces)
    if group:
        yield group


def _write(
    pipeline: Pipeline, writer: VideoWriter, group: list[FrameFaces], options: VideoOptions, summary: VideoSummary
) -> None:
    """One batch: every face of the group's frames generated at once, pasted back, the frames encoded."""
    seconds = summary.stage_seconds
    faces = [face for item in group for face in item.faces]
    images: list[NDArray[np.uint8]] = []
    if faces:
        clock = time.perf_counter()
        x = np.stack([face_pixels(face.image, pipeline.config.input_kind) for face in faces])
        generated = pipeline.generate(x, [options.row] * len(faces))
        images = [output.images[0] for output in generated.outputs]
        seconds["generate"] = seconds.get("generate", 0.0) + time.perf_counter() - clock
    start = 0
    for item in group:
        clock = time.perf_counter()
        drawn = images[start : start + len(item.faces)]
        start += len(item.faces)
        frame = paste_all(item.frame.image, item.faces, drawn, mask=options.mask) if drawn else item.frame.image
        middle = time.perf_counter()
        writer.write(frame, item.frame.pts)
        seconds["paste"] = seconds.get("paste", 0.0) + middle - clock
        seconds["encode"] = seconds.get("encode", 0.0) + time.perf_counter() - middle
        summary.frames += 1
        summary.faces += len(item.faces)
        summary.skipped_faces += len(item.skipped)
        summary.frames_without_face += not item.faces
