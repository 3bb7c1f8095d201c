"""`run`'s edits: --edit NAME:STRENGTH (repeatable) and --sweep NAME:LOW:HIGH:STEPS, whose steps can also
go into one strip (--strip) or one animated GIF (--gif) per input."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import numpy as np
import typer

from ..errors import InputError

if TYPE_CHECKING:
    from ..bundle import Bundle
    from ..runtime import RunOptions

EditOpt = Annotated[
    list[str] | None,
    typer.Option(
        help="Move the codes along one of the bundle's directions (`psp-deploy directions list`), e.g. age:-3; "
        "repeat it for several, applied in order, after any style mixing."
    ),
]
SweepOpt = Annotated[
    str | None,
    typer.Option(
        help="One output per step along a direction, from LOW to HIGH strength (after the --edit ones), e.g. "
        "age:-3:3:7 → NAME_0.png … NAME_6.png, from one encode per face."
    ),
]
StripOpt = Annotated[bool, typer.Option(help="With --sweep: also write the steps side by side as NAME.strip.png.")]
GifOpt = Annotated[bool, typer.Option(help="With --sweep: also write NAME.gif, the steps there and back, looping.")]
STRIP, GIF = ".strip.png", ".gif"
GIF_FRAME_MS = 120


def sweep_files(row: RunOptions, strip: bool, gif: bool) -> tuple[str, ...]:
    """The per-input files (suffixes) a sweep adds: --strip and --gif, refused without a sweep."""
    if (strip or gif) and row.sweep is None:
        raise InputError("--strip and --gif show a sweep's steps: they go with --sweep")
    return (STRIP,) * strip + (GIF,) * gif


def check_directions(bundle: Bundle, row: RunOptions) -> None:
    """Refuse, before any work, a direction the bundle lacks or whose file changed since it was recorded."""
    for name in row.directions:
        bundle.direction(name)


def edit_settings(bundle: Bundle, row: RunOptions) -> dict[str, Any]:
    """What the edits add to a run's settings (psp-deploy.json): each direction with the start of its sha256, so
    that a direction replaced under the same name makes other outputs. Nothing when the run edits nothing."""
    tag = lambda name: bundle.manifest.directions[name].sha256[:16]  # noqa: E731
    settings: dict[str, Any] = {}
    if row.edits:
        settings["edits"] = [[name, strength, tag(name)] for name, strength in row.edits]
    if row.sweep is not None:
        sweep = row.sweep
        settings["sweep"] = [sweep.name, sweep.low, sweep.high, sweep.steps, tag(sweep.name)]
    return settings


def write_sweep(path: Path, frames: list[np.ndarray]) -> None:
    """A sweep's steps as one strip (left to right) or one GIF (there and back, looping), by ``path``'s suffix.
    The GIF's frames share one palette, made from them all: colours do not flicker from frame to frame."""
    from PIL import Image

    from ..files import atomic_file
    from ..runtime.io import write_image_atomic

    strip = np.concatenate(frames, axis=1)
    if path.name.endswith(STRIP):
        write_image_atomic(path, strip)
        return
    palette = Image.fromarray(strip).quantize(256)
    pictures = [Image.fromarray(frame).quantize(palette=palette) for frame in [*frames, *frames[-2:0:-1]]]
    with atomic_file(path) as f:
        pictures[0].save(f, format="GIF", save_all=True, append_images=pictures[1:], duration=GIF_FRAME_MS, loop=0)
