"""`psp-deploy video`: a video through the pipeline, every frame's face put back where it was."""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from ..errors import InputError, OutputError
from ..runtime.batch import StopFlag
from .common import (
    BackendOpt,
    BundleArg,
    CacheDirOpt,
    DeviceOpt,
    EnginesOpt,
    FaceChoice,
    ForceBf16Opt,
    Mask,
    MaskOpt,
    PrecisionOpt,
    Tf32Opt,
    ThreadsOpt,
    app,
    console,
    handled,
    say,
)

if TYPE_CHECKING:
    from ..runtime.video_job import VideoSummary

STOPPED_EXIT = {2: 130, 15: 143}  # SIGINT, SIGTERM: as the batch commands exit


class Smoothing(str, Enum):
    centred = "centred"
    causal = "causal"
    none = "none"


@app.command()
def video(
    bundle: BundleArg,
    source: Annotated[Path, typer.Argument(help="The input video (.mp4, .mov, .mkv, .webm …).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="The output video; its suffix picks the container.")],
    backend: BackendOpt = "auto",
    precision: PrecisionOpt = "fp32",
    device: DeviceOpt = "cpu",
    tf32: Tf32Opt = False,
    force_bf16: ForceBf16Opt = False,
    threads: ThreadsOpt = None,
    engines: EnginesOpt = True,
    cache_dir: CacheDirOpt = None,
    face: Annotated[
        FaceChoice, typer.Option(help="Every face of a frame (all), or one: the largest box, the best score, the last.")
    ] = FaceChoice.largest,
    min_face: Annotated[
        float, typer.Option(min=0, help="Leave faces smaller than this (crop side, in pixels) as they are.")
    ] = 0.0,
    smoothing: Annotated[
        Smoothing,
        typer.Option(
            help="Face positions over time: centred (no lag; a file is read whole), causal (a stream's filter: "
            "some lag), none (frame by frame: jitters)."
        ),
    ] = Smoothing.centred,
    mask: MaskOpt = Mask.face,
    batch_size: Annotated[int, typer.Option(min=1, help="Faces per synthesis batch.")] = 8,
    overwrite: Annotated[bool, typer.Option(help="Replace OUTPUT if it exists.")] = False,
    resume: Annotated[
        bool,
        typer.Option(
            help="Continue an OUTPUT a stopped run left: its frames are kept and the rest are made (refused, "
            "naming why, if it was made with other settings, graphs or another input)."
        ),
    ] = False,
) -> None:
    """Run a video through the pipeline: each frame's face aligned along a track smoothed over time,
    encoded, synthesized and pasted back; frame rate, size, rotation and the audio track are kept.

    Frames without a face pass through. Ctrl-C or SIGTERM end OUTPUT after the frames done (playable) and
    exit 130 / 143; --resume then continues it. Needs the video extra (PyAV).

    Example: psp-deploy video bundles/toonify clip.mp4 -o clip.toon.mp4 --face all
    """
    from ..runtime.backends import BackendOptions
    from ..runtime.video_job import VideoOptions, run_video
    from .batch import open_pipeline

    with handled():
        job = VideoOptions(
            smoothing=smoothing.value,
            every=face == FaceChoice.all,
            min_face=min_face,
            mask=mask.value,
            batch=batch_size,
        )
        if output.exists() and source.exists() and output.samefile(source):
            raise OutputError(f"{output} is the input video; write the output to another file")
        if resume and overwrite:
            raise InputError("--resume continues OUTPUT and --overwrite replaces it: choose one")
        if output.exists() and not (overwrite or resume):
            raise OutputError(f"{output} exists; pass --resume to continue it or --overwrite to replace it")
        options = BackendOptions(
            device=device.value, threads=threads, engines=engines, force_bf16=force_bf16, cache_dir=cache_dir, tf32=tf32
        )
        policy = "largest" if face == FaceChoice.all else face.value
        with open_pipeline(bundle, backend.value, precision.value, options, policy) as pipeline:
            with StopFlag() as stop:
                summary = _with_progress(
                    lambda report: run_video(
                        pipeline, source, output, job, resume=resume, progress=report, stop=lambda: stop.stopped
                    )
                )
    _report(summary)
    raise typer.Exit(STOPPED_EXIT.get(stop.signal or 0, 0) if summary.stopped else 0)


def _with_progress(run: Callable[[Callable[[VideoSummary], None]], VideoSummary]) -> VideoSummary:
    """``run`` behind a bar of frames (with frames/s and the time left when the container states its length)."""
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total} frames"))
    rate = TextColumn("{task.fields[fps]:.1f} frames/s")
    with Progress(
        SpinnerColumn(), *columns, rate, TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), console=console
    ) as bar:
        task = bar.add_task("video", total=None, fps=0.0)

        def report(summary: VideoSummary) -> None:
            bar.update(task, completed=summary.frames, total=summary.total, fps=summary.fps)

        return run(report)


def _report(summary: VideoSummary) -> None:
    stages = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in summary.stage_seconds.items())
    say(
        f"{'stopped' if summary.stopped else 'done'}: {summary.frames} frames in {summary.seconds:.1f} s "
        f"({summary.fps:.2f} frames/s): {summary.faces} faces, {summary.frames_without_face} frames without a face, "
        f"{summary.skipped_faces} faces under --min-face left as they were → {summary.output}"
    )
    say(f"time: {stages}")
    if summary.stopped:
        say(f"{summary.output} holds the {summary.frames} frames done and plays; --resume continues it", "yellow")
    elif summary.resumed:
        say(f"resumed: {summary.resumed} frames kept from the stopped output")
