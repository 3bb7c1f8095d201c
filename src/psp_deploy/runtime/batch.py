"""Batch work over many files that loses nothing.

Inputs are files, folders (searched recursively) or glob patterns. Each input maps to
output files under one directory by one naming rule (``Item.output``); two inputs that
would write the same file, an output that would replace an input, an input folder that is
(or lies inside) the output folder, and an output folder that cannot be written are refused
before any work starts. Outputs are written atomically, so a killed run leaves complete files
only, and a rerun skips inputs whose outputs all exist, provided it asks for the same settings
(recorded in psp-deploy.json). Every failure is kept (failures.json) while the rest goes on. A
first Ctrl-C or SIGTERM stops after the batch in flight.
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import json
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

from ..bundle import MANIFEST
from ..errors import InputError, PspDeployError
from ..files import require_writable, write_json
from .io import IMAGE_SUFFIXES

FAILURES_FILE = "failures.json"
SETTINGS_FILE = "psp-deploy.json"  # the settings that made an output folder's files
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)  # containers and schedulers stop jobs with SIGTERM
T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class Item:
    source: Path
    stem: Path  # the input's folder relative to its root, and its whole name minus the extension

    def output(self, out_dir: Path, suffix: str, tag: str = "") -> Path:
        """The one naming rule for every artifact: OUT/REL/NAME{tag}{suffix} (``pic.1.jpg`` → ``pic.1.png``)."""
        return out_dir / self.stem.parent / f"{self.stem.name}{tag}{suffix}"


@dataclass
class Summary:
    done: list[Item] = field(default_factory=list)
    skipped: list[Item] = field(default_factory=list)
    failed: list[tuple[Item, tuple[str, str]]] = field(default_factory=list)  # (error type, message)
    stopped_by: int | None = None  # the signal that stopped the run early, if any
    elapsed: float = 0.0  # seconds the run took, from its checks to failures.json

    @property
    def rate(self) -> float | None:
        """Inputs done per second (skipped ones not counted: they cost nothing); None if none was done."""
        return len(self.done) / self.elapsed if self.done and self.elapsed > 0 else None

    @property
    def interrupted(self) -> bool:
        return self.stopped_by is not None

    @property
    def exit_code(self) -> int:
        if self.stopped_by is not None:
            return 128 + self.stopped_by  # the shell's convention: 130 for Ctrl-C, 143 for SIGTERM
        return 1 if self.failed else 0


def collect_inputs(
    specs: Sequence[str | Path],
    output: Path | None = None,
    suffixes: Sequence[str] = IMAGE_SUFFIXES,
    kind: str = "images",
) -> list[Item]:
    """Files, folders (recursive, ``suffixes`` only) and globs → items; a folder's or a glob's
    sub-folders are kept in the items' stems.

    ``output`` (the output folder) keeps outputs and inputs apart: an input folder, or a glob's
    folder, that is the output folder or lies inside it is refused, naming both (outputs would
    replace inputs, or be read as inputs by the next run); an output folder inside an input folder
    is fine: the files a folder or a glob finds under it are outputs, not inputs. A file named
    as such is always an input (one its own output would replace is refused by check_outputs)."""
    items: list[Item] = []
    found: list[Item] = []  # items a folder or a glob found: those under the output folder are outputs
    for spec in specs:
        path = Path(spec)
        if path.is_dir():
            _check_apart(path, output, spec)
            files = [p for p in sorted(path.rglob("*")) if _is_input(p, suffixes)]
            found += [Item(p, p.relative_to(path).with_suffix("")) for p in files]
        elif path.is_file():
            items.append(Item(path, Path(path.stem)))
        else:
            matches = sorted(Path(m) for m in glob.glob(str(spec), recursive=True))
            if not matches:
                raise InputError(f"{spec}: no such file, folder or matching pattern")
            root = _glob_root(str(spec))
            _check_apart(root, output, spec)
            found += [Item(m, m.relative_to(root).with_suffix("")) for m in matches if m.is_file()]
    if output is not None:
        found = [item for item in found if not item.source.resolve().is_relative_to(output.resolve())]
    items += found
    if not items:
        raise InputError(f"no input {kind} found (looked for " + ", ".join(suffixes) + ")")
    return list({item.source.resolve(): item for item in items}.values())


def _check_apart(folder: Path, output: Path | None, spec: str | Path) -> None:
    """Refuse an input folder that is the output folder, or lies inside it."""
    if output is None:
        return
    folder, out = folder.resolve(), output.resolve()
    if folder == out:
        raise InputError(
            f"{spec} is also the output folder (--output {output}): outputs would replace inputs or be read as "
            "inputs by the next run. Choose another --output (a new folder, or one inside the input folder)"
        )
    if folder.is_relative_to(out):
        raise InputError(
            f"{spec} lies inside the output folder {output}: outputs would be written among the inputs. Choose an "
            "--output outside it (a new folder, or one inside the input folder)"
        )


def _is_input(path: Path, suffixes: Sequence[str]) -> bool:
    return path.is_file() and path.suffix.lower() in suffixes


def _glob_root(pattern: str) -> Path:
    """The folder a pattern searches from: its leading parts without wildcards."""
    parts = Path(pattern).parts
    fixed = list(itertools.takewhile(lambda part: not glob.has_magic(part), parts[:-1]))
    return Path(*fixed) if fixed else Path()


def check_outputs(items: Sequence[Item], outputs: Callable[[Item], list[Path]]) -> None:
    """Refuse, before any work, two inputs writing one file, or an output that is an input."""
    writer: dict[Path, Item] = {}
    clashes: list[str] = []
    sources = {item.source.resolve() for item in items}
    for item in items:
        for path in outputs(item):
            key = path.resolve()
            if key in sources:
                clashes.append(f"{item.source} would overwrite the input {path}")
            elif key in writer:
                clashes.append(f"{writer[key].source} and {item.source} would both write {path}")
            writer[key] = item
    if clashes:
        shown = "; ".join(clashes[:5]) + (f"; and {len(clashes) - 5} more" if len(clashes) > 5 else "")
        raise InputError(f"outputs would collide: {shown}. Rename the inputs or choose another --output")


def check_settings(out_dir: Path, settings: dict[str, Any], overwrite: bool) -> float:
    """An output folder keeps the settings that made it: a rerun asking for others would skip
    outputs that are not what it asks for, so it is refused unless told to overwrite.

    Returns when those settings took effect (the settings file's mtime, from the clock that dates
    the outputs): an output older than that was made with other settings, by an ``--overwrite``
    run that was stopped, and is never skipped."""
    path = out_dir / SETTINGS_FILE
    try:
        recorded = json.loads(path.read_text()) if path.is_file() else None
    except (OSError, ValueError):
        recorded = None  # unreadable: written anew below
    if recorded is not None and recorded != settings and not overwrite:
        keys = sorted(set(recorded) | set(settings))
        diffs = [f"{k} {recorded.get(k)!r} → {settings.get(k)!r}" for k in keys if recorded.get(k) != settings.get(k)]
        raise InputError(
            f"{out_dir} holds outputs made with other settings ({'; '.join(diffs)}); pass --overwrite to "
            "redo them with these settings, or choose another --output"
        )
    if recorded != settings:
        write_json(path, settings)
    return path.stat().st_mtime


def check_not_in_bundle(out_dir: Path) -> None:
    """Running never writes into a bundle (it may be shared, or a read-only image)."""
    for folder in (out_dir.resolve(), *out_dir.resolve().parents):
        if (folder / MANIFEST).is_file():
            raise InputError(f"{out_dir} is inside the bundle {folder}: choose an --output outside it")


def check_destination(out_dir: Path) -> None:
    """The output folder can take the outputs: a folder (made here if missing) outside any bundle, that
    this process can write into (a read-only or immutable one is refused naming it, not met as a
    traceback at the first write)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"{out_dir}: exists and is not a directory; --output names a folder")
    check_not_in_bundle(out_dir)
    require_writable(out_dir)


def check_before_work(items: Sequence[Item], out_dir: Path, outputs: Callable[[Item], list[Path]]) -> None:
    """What refuses a batch before anything loads: colliding outputs, then an unusable output folder.
    Commands call it before loading a model; BatchRunner.check calls it again (cheap)."""
    check_outputs(items, outputs)
    check_destination(out_dir)


class StopFlag:
    """Ctrl-C or SIGTERM sets the flag (the work finishes its batch); a second one interrupts at once."""

    def __init__(self) -> None:
        self.signal: int | None = None

    @property
    def stopped(self) -> bool:
        return self.signal is not None

    def __enter__(self) -> StopFlag:
        self._previous: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._handle) for sig in STOP_SIGNALS}
        return self

    def _handle(self, signum: int, _frame: Any) -> None:
        if self.stopped:
            raise KeyboardInterrupt
        self.signal = signum

    def __exit__(self, *_exc: Any) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)


@dataclass
class BatchRunner(Generic[T, R]):
    """prepare(item) per input (may fail alone) → compute(list) per batch → write(item, result).

    ``compute`` raises to fail its whole batch, or returns an error in an item's place.

    ``outputs(item)`` names the files an item produces; an item whose files all exist is
    skipped unless ``overwrite``. ``settings`` (what decides the outputs' content) is recorded
    in the output folder and must match on a rerun.
    """

    out_dir: Path
    outputs: Callable[[Item], list[Path]]
    prepare: Callable[[Item], T]
    compute: Callable[[list[T]], list[R]]
    write: Callable[[Item, R], None]
    batch_size: int = 1
    overwrite: bool = False
    settings: dict[str, Any] = field(default_factory=dict)
    on_advance: Callable[[int], None] = lambda n: None

    def pending(self, items: Sequence[Item], summary: Summary, since: float) -> list[Item]:
        """Items to do: all with ``overwrite``, else those missing an output made since ``since``."""
        todo = []
        for item in items:
            if not self.overwrite and all(p.exists() and p.stat().st_mtime >= since for p in self.outputs(item)):
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

    def check(self, items: Sequence[Item]) -> float:
        """Everything that refuses a run, before any work: colliding outputs, an output path that is
        a file, inside a bundle or not writable, other settings than the folder's. Returns when the
        settings took effect (see check_settings). Safe to call again: ``run`` does."""
        check_before_work(items, self.out_dir, self.outputs)
        return check_settings(self.out_dir, self.settings, self.overwrite)

    def run(self, items: Sequence[Item]) -> Summary:
        clock = time.monotonic()
        since = self.check(items)
        for stale in self.out_dir.rglob(".*.partial"):  # temp files of a run that was killed
            with contextlib.suppress(OSError):  # one in a folder made read-only since: left there
                stale.unlink(missing_ok=True)
        summary = Summary()
        todo = self.pending(items, summary, since)
        self.on_advance(len(summary.skipped))
        prepared = self._prepared(iter(todo), summary)
        with StopFlag() as stop:
            while not stop.stopped:
                batch = [pair for _, pair in zip(range(self.batch_size), prepared, strict=False)]
                if not batch:
                    break
                self._run_batch(batch, summary)
            if len(summary.done) + len(summary.failed) + len(summary.skipped) < len(items):
                summary.stopped_by = stop.signal
        write_failures(self.out_dir, summary.failed)
        summary.elapsed = time.monotonic() - clock
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
    write_json(
        path, [{"input": str(item.source), "error": error, "message": message} for item, (error, message) in failed]
    )
