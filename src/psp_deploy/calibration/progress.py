"""Calibration's progress: counted stages, for a progress bar with an ETA or for log lines.

A stage is told as ``progress(stage, done, total, note)``: ``stage`` names it (the same name from its first
call to its last), ``done`` of ``total`` units are finished, ``note`` says what runs now within it (an INT8
calibration method, a sensitivity round). Calibration at 1024² takes minutes per stage, so every long
stage counts: photos aligned, faces synthesized, samples run through range capture or an INT8 calibration
pass, graphs run for the held-back evaluation.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

LINES_PER_STAGE = 10  # a log gets about this many lines per stage, not one per sample


class Progress(Protocol):
    def __call__(self, stage: str, done: int, total: int, note: str = "") -> None: ...


def quiet(stage: str, done: int, total: int, note: str = "") -> None:
    """Progress nobody reads."""


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def as_lines(say: Callable[[str], None], clock: Callable[[], float] = time.monotonic) -> Progress:
    """Progress as lines for a log or a plain callback: a stage's start and end, about every tenth of it and
    each new note, with the time so far and the ETA in between ("int8 synthesis: minmax calibration 12/40
    (0:01:10, eta 0:02:43)")."""
    last: dict[str, object] = {}

    def report(stage: str, done: int, total: int, note: str = "") -> None:
        if stage != last.get("stage"):
            last.update(stage=stage, started=clock())
        label = f"{stage}: {note}" if note else stage
        step = max(1, total // LINES_PER_STAGE)
        if (label, done) == (last.get("label"), last.get("done")):
            return
        if label != last.get("label") or done in (0, total) or done % step == 0:
            elapsed = clock() - float(last["started"])  # type: ignore[arg-type]
            times = f" ({_clock(elapsed)}, eta {_clock(elapsed / done * (total - done))})" if 0 < done < total else ""
            say(f"{label} {done}/{total}{times}")
            last.update(label=label, done=done)

    return report
