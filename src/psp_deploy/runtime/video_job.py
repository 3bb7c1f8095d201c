"""A video through the pipeline: every frame's faces tracked and smoothed over time, run in batches,
pasted back, and the frames encoded again with the source's rate, rotation and audio.

Memory stays flat for any length: frames are decoded ahead through a bounded queue (video.prefetched),
the centred smoother holds a few frames, and a batch holds at most ``batch`` faces' frames. A stop
(Ctrl-C, SIGTERM: ``stop`` returns True) ends the output after the frames done, playable, and says so.

The output carries what made it (settings, the graphs, the source's name, size and frame count) in its
container's comment tag, so ``resume`` can continue a stopped output: it is refused, naming the difference,
when anything of that differs; its frames are kept (decoded and encoded again, with the audio copied anew)
and only the rest go through the pipeline.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..errors import InputError, OutputError
from .paste import MASKS, paste_all
from .pipeline import Pipeline, RunOptions
from .preprocess import face_pixels
from .smoothing import SMOOTHING
from .video import Frame, FrameFaces, VideoInfo, VideoWriter, prefetched, probe, read_frames, track_faces

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
    frames: int = 0  # frames written (kept from a resumed output included)
    resumed: int = 0  # frames kept from the output a resumed run continued
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


def video_settings(pipeline: Pipeline, info: VideoInfo, options: VideoOptions) -> dict[str, Any]:
    """What decides the output's frames: the options, each graph by precision and hash, and the source."""
    graphs = {graph: f"{net.precision} {net.record.sha256[:16]}" for graph, net in pipeline.nets.items()}
    path = info.path or Path()
    source = {"name": path.name, "bytes": path.stat().st_size if info.path else None, "frames": info.frames}
    return {"options": json.loads(json.dumps(asdict(options))), "graphs": graphs, "source": source}


def resumable(output: Path, settings: dict[str, Any]) -> int:
    """How many frames of a stopped ``output`` a resumed run keeps (0: there is none); refused, naming the
    difference, when it was made otherwise or by something else."""
    if not output.exists():
        return 0
    made = probe(output)
    try:
        recorded = json.loads(made.comment or "").get("psp-deploy")
    except (json.JSONDecodeError, AttributeError):
        recorded = None
    if recorded is None:
        raise OutputError(f"{output} was not made by psp-deploy video: it cannot be resumed (choose another output)")
    differences = {k: (recorded.get(k), v) for k, v in settings.items() if recorded.get(k) != v}
    if differences:
        said = "; ".join(f"{k}: {was} → {now}" for k, (was, now) in differences.items())
        raise OutputError(f"{output} was made with other settings, so it cannot be resumed ({said})")
    return sum(1 for _ in read_frames(output))


def run_video(
    pipeline: Pipeline,
    source: str | Path,
    output: str | Path,
    options: VideoOptions = VideoOptions(),
    *,
    resume: bool = False,
    progress: Callable[[VideoSummary], None] | None = None,
    stop: Callable[[], bool] = lambda: False,
) -> VideoSummary:
    """``source`` through ``pipeline`` into ``output`` (the input is never replaced). ``resume`` continues an
    output a stopped run left (see the module's doc). ``progress`` is called after each batch."""
    check_video_pipeline(pipeline)
    info = probe(source)
    settings = video_settings(pipeline, info, options)
    kept = resumable(Path(output), settings) if resume else 0
    summary = VideoSummary(Path(output), total=info.frames, resumed=kept)
    clock = time.perf_counter()
    frames = prefetched(read_frames(source))
    previous = read_frames(output) if kept else iter(())  # read while the new file is written beside it
    tracked = track_faces(
        frames,
        pipeline.aligner,
        float(info.fps),
        smoothing=options.smoothing,
        every=options.every,
        min_face=options.min_face,
    )
    with VideoWriter(output, like=info, comment=json.dumps({"psp-deploy": settings})) as writer:
        for group in _groups(_timed(tracked, summary.stage_seconds), options.batch):
            _write(pipeline, writer, group, options, summary, (previous, kept))
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
    pipeline: Pipeline,
    writer: VideoWriter,
    group: list[FrameFaces],
    options: VideoOptions,
    summary: VideoSummary,
    resumed: tuple[Iterator[Frame], int],
) -> None:
    """One batch: every face of the group's frames generated at once, pasted back, the frames encoded. The
    first ``kept`` frames of a resumed run are the stopped output's (``previous``), encoded again."""
    previous, kept = resumed
    group_faces = [[] if item.frame.index < kept else item.faces for item in group]
    seconds = summary.stage_seconds
    faces = [face for item_faces in group_faces for face in item_faces]
    images: list[NDArray[np.uint8]] = []
    if faces:
        clock = time.perf_counter()
        x = np.stack([face_pixels(face.image, pipeline.config.input_kind) for face in faces])
        generated = pipeline.generate(x, [options.row] * len(faces))
        images = [output.images[0] for output in generated.outputs]
        seconds["generate"] = seconds.get("generate", 0.0) + time.perf_counter() - clock
    start = 0
    for item, item_faces in zip(group, group_faces, strict=True):
        clock = time.perf_counter()
        drawn = images[start : start + len(item_faces)]
        start += len(item_faces)
        frame = paste_all(item.frame.image, item_faces, drawn, mask=options.mask) if drawn else item.frame.image
        if item.frame.index < kept:
            frame = next(previous).image
        middle = time.perf_counter()
        writer.write(frame, item.frame.pts)
        seconds["paste"] = seconds.get("paste", 0.0) + middle - clock
        seconds["encode"] = seconds.get("encode", 0.0) + time.perf_counter() - middle
        summary.frames += 1
        summary.faces += len(item.faces)
        summary.skipped_faces += len(item.skipped)
        summary.frames_without_face += not item.faces
