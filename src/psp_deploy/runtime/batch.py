"""Batch work over many files that loses nothing.

Inputs are files, folders (searched recursively) or glob patterns. Each input maps to
output files under one directory; outputs are written atomically, so a killed run
leaves complete files only, and a rerun skips inputs whose outputs all exist. Every
failure is kept (failures.json) while the rest goes on. A first Ctrl-C stops after the
batch in flight.
"""

from __future__ import annotations

import glob
import json
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

from ..errors import InputError, PspDeployError
from .io import IMAGE_SUFFIXES, atomic_file

FAILURES_FILE = "failures.json"
T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class Item:
    source: Path
    stem: Path  # output path under the output directory, without suffix


@dataclass
class Summary:
    done: list[Item] = field(default_factory=list)
    skipped: list[Item] = field(default_factory=list)
    failed: list[tuple[Item, tuple[str, str]]] = field(default_factory=list)  # (error type, message)
    interrupted: bool = False

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return 130
        return 1 if self.failed else 0


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def collect_inputs(specs: Sequence[str | Path]) -> list[Item]:
    """Files, folders (recursive, image suffixes only) and globs → items with unique output stems."""
    items: list[Item] = []
    for spec in specs:
        path = Path(spec)
        if path.is_dir():
            items += [
                Item(p, p.relative_to(path).with_suffix(""))
                for p in sorted(path.rglob("*"))
                if p.is_file() and _is_image(p)
            ]
        elif path.is_file():
            items.append(Item(path, Path(path.stem)))
        else:
            matches = sorted(Path(m) for m in glob.glob(str(spec), recursive=True))
            if not matches:
                raise InputError(f"{spec}: no such file, folder or matching pattern")
            items += [Item(m, Path(m.stem)) for m in matches if m.is_file()]
    if not items:
        raise InputError("no input images found (looked for " + ", ".join(IMAGE_SUFFIXES) + ")")
    seen: dict[Path, Path] = {}
    for item in items:
        if item.stem in seen and seen[item.stem] != item.source:
            raise InputError(
                f"{seen[item.stem]} and {item.source} would write the same output {item.stem}.*; "
                "rename one or pass their folder instead"
            )
        seen[item.stem] = item.source
    return list({item.source: item for item in items}.values())


class StopFlag:
    """Ctrl-C sets the flag (the work finishes its batch); a second Ctrl-C interrupts at once."""

    def __init__(self) -> None:
        self.stopped = False

    def __enter__(self) -> StopFlag:
        self._previous = None
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, *_args: Any) -> None:
        if self.stopped:
            raise KeyboardInterrupt
        self.stopped = True

    def __exit__(self, *_exc: Any) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


@dataclass
class BatchRunner(Generic[T, R]):
    """prepare(item) per input (may fail alone) → compute(list) per batch → write(item, result).

    ``compute`` raises to fail its whole batch, or returns an error in an item's place.

    ``outputs(item)`` names the files an item produces; an item whose files all exist is
    skipped unless ``overwrite``.
    """

    out_dir: Path
    outputs: Callable[[Item], list[Path]]
    prepare: Callable[[Item], T]
    compute: Callable[[list[T]], list[R]]
    write: Callable[[Item, R], None]
    batch_size: int = 1
    overwrite: bool = False
    on_advance: Callable[[int], None] = lambda n: None

    def pending(self, items: Sequence[Item], summary: Summary) -> list[Item]:
        todo = []
        for item in items:
            if not self.overwrite and all(p.exists() for p in self.outputs(item)):
                summary.skipped.append(item)
            else:
                todo.append(item)
        return todo

    def _prepared(self, items: Iterator[Item], summary: Summary) -> Iterator[tuple[Item, T]]:
        for item in items:
            try:
                yield item, self.prepare(item)
            except PspDeployError as err:
                summary.failed.append((item, describe(err)))
                self.on_advance(1)

    def run(self, items: Sequence[Item]) -> Summary:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        for stale in self.out_dir.rglob(".*.partial"):  # temp files of a run that was killed
            stale.unlink(missing_ok=True)
        summary = Summary()
        todo = self.pending(items, summary)
        self.on_advance(len(summary.skipped))
        prepared = self._prepared(iter(todo), summary)
        with StopFlag() as stop:
            while not stop.stopped:
                batch = [pair for _, pair in zip(range(self.batch_size), prepared, strict=False)]
                if not batch:
                    break
                self._run_batch(batch, summary)
            summary.interrupted = stop.stopped and len(summary.done) + len(summary.failed) + len(summary.skipped) < len(
                items
            )
        write_failures(self.out_dir, summary.failed)
        return summary

    def _run_batch(self, batch: list[tuple[Item, T]], summary: Summary) -> None:
        try:
            results = self.compute([data for _, data in batch])
        except PspDeployError as err:
            summary.failed += [(item, describe(err)) for item, _ in batch]
            self.on_advance(len(batch))
            return
        for (item, _), result in zip(batch, results, strict=True):
            if isinstance(result, PspDeployError):  # compute may fail items one by one (remote requests)
                summary.failed.append((item, describe(result)))
                self.on_advance(1)
                continue
            try:
                self.write(item, result)
                summary.done.append(item)
            except (PspDeployError, OSError) as err:
                summary.failed.append((item, describe(err)))
            self.on_advance(1)


def describe(err: Exception) -> tuple[str, str]:
    return type(err).__name__, str(err)


def write_failures(out_dir: Path, failed: list[tuple[Item, tuple[str, str]]]) -> None:
    """failures.json lists this run's failures; a stale one from an earlier run is removed."""
    path = out_dir / FAILURES_FILE
    if not failed:
        path.unlink(missing_ok=True)
        return
    records = [{"input": str(item.source), "error": error, "message": message} for item, (error, message) in failed]
    with atomic_file(path) as f:
        f.write((json.dumps(records, indent=2) + "\n").encode())
