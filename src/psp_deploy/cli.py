"""The `psp-deploy` command: a thin face over the library calls.

Exit codes: 0 success; 1 some inputs of a batch failed (see failures.json); 2 bad
arguments or unusable input (the message says which); 130 interrupted.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from .errors import PspDeployError
from .runtime.batch import FAILURES_FILE, Summary

EXIT_PARTIAL, EXIT_ERROR, EXIT_INTERRUPTED = 1, 2, 130


class FacePolicy(str, Enum):
    largest = "largest"
    best = "best"
    last = "last"


class Modconv(str, Enum):
    grouped = "grouped"
    scaled = "scaled"


app = typer.Typer(
    name="psp-deploy",
    help="Deploy pSp (pixel2style2pixel) face encoders and StyleGAN2 decoders: official checkpoint → "
    "ONNX bundle → calibrated FP16/INT8 graphs and engines → a lean runtime (photo → aligned face → "
    "W+ codes → image).",
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console(stderr=True, soft_wrap=True)  # messages stay one line: greppable in logs


@contextlib.contextmanager
def handled() -> Iterator[None]:
    """Turn the package's errors into one red line and exit code 2; Ctrl-C into 130."""
    try:
        yield
    except PspDeployError as err:
        console.print(f"[bold red]error:[/] {err}", highlight=False)
        raise typer.Exit(EXIT_ERROR) from None
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]")
        raise typer.Exit(EXIT_INTERRUPTED) from None


def step_progress(total: int) -> Progress:
    return Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )


@app.command()
def export(
    checkpoint: Annotated[Path, typer.Argument(help="Official pSp/e4e checkpoint (.pt), e.g. psp_ffhq_encode.pt.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Bundle directory to create.")],
    batch: Annotated[
        int, typer.Option(help="Batch size of the synthesis graph (grouped form only: its Conv group = batch).")
    ] = 1,
    modconv: Annotated[
        str,
        typer.Option(
            help="Modulated conv form: 'grouped' (one grouped Conv per layer, fixed batch, "
            "as the official code) or 'scaled' (static weights, any batch)."
        ),
    ] = "grouped",
    opset: Annotated[int, typer.Option(help="ONNX opset (18-21).")] = 18,
    verify: Annotated[
        bool,
        typer.Option(
            "--verify/--no-verify",
            help="Check every graph against the torch reference (max abs diff ≤ 1e-3) and fail if it does not match.",
        ),
    ] = True,
    force: Annotated[bool, typer.Option(help="Replace a non-empty output directory.")] = False,
) -> None:
    """Export a checkpoint to a bundle: encoder.onnx, mapping.onnx, synthesis.onnx, manifest.json.

    Example: psp-deploy export psp_ffhq_encode.pt -o bundles/ffhq --modconv scaled
    """
    from .export import export_bundle

    steps = 1 + 3 * (2 if verify else 1)
    with handled(), step_progress(steps) as bar:
        task = bar.add_task("export", total=steps)

        def on_step(message: str) -> None:
            bar.update(task, description=message, advance=0 if message == "loading checkpoint" else 1)

        bundle, results = export_bundle(
            checkpoint, output, batch=batch, modconv=modconv, opset=opset, verify=verify, force=force, progress=on_step
        )
        bar.update(task, description="done", completed=steps)
    for r in results:
        diffs = ", ".join(f"{k} {v:.2e}" for k, v in r.max_abs_diff.items())
        console.print(f"  {r.graph:<9} batch {r.batch}: max abs diff vs torch {diffs}")
    console.print(f"[green]bundle written:[/] {bundle.root}")


def item_progress(total: int) -> Progress:
    return Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=console,
    )


def report(summary: Summary, out_dir: Path) -> None:
    """One summary line; failures listed (first few) with the file holding them all."""
    console.print(
        f"[green]{len(summary.done)} done[/], {len(summary.skipped)} skipped (already there), "
        f"[{'red' if summary.failed else 'green'}]{len(summary.failed)} failed[/]"
        + (" — [yellow]stopped early[/]" if summary.interrupted else ""),
        highlight=False,
    )
    for item, (error, message) in summary.failed[:10]:
        console.print(f"  [red]✗[/] {item.source}: {error}: {message}", highlight=False)
    if summary.failed:
        console.print(f"  all failures: {out_dir / FAILURES_FILE}", highlight=False)


@app.command()
def align(
    inputs: Annotated[list[str], typer.Argument(help="Photos, folders (searched recursively) or glob patterns.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Directory for the aligned 256×256 PNGs.")],
    size: Annotated[int, typer.Option(help="Output side in pixels.")] = 256,
    face: Annotated[
        FacePolicy,
        typer.Option(
            help="Which face when a photo has several: the largest box, the best "
            "detector score, or the last detection (the official script)."
        ),
    ] = FacePolicy.largest,
    overwrite: Annotated[bool, typer.Option(help="Redo inputs whose output already exists.")] = False,
) -> None:
    """Align faces the FFHQ way (dlib landmarks → oriented crop), as pSp models expect.

    Writes OUTPUT/<name>.png per photo, keeping sub-folders. Photos with no face and
    unreadable files are listed in OUTPUT/failures.json; exit code 1 if any failed.
    """
    from .runtime.align import FaceAligner
    from .runtime.batch import BatchRunner, collect_inputs
    from .runtime.io import read_image, write_image_atomic

    with handled():
        items = collect_inputs(inputs)
        aligner = FaceAligner(output_size=size, face=face.value)
        out_path = lambda item: output / item.stem.with_suffix(".png")  # noqa: E731
        with item_progress(len(items)) as bar:
            task = bar.add_task("aligning", total=len(items))
            runner = BatchRunner(
                out_dir=output,
                outputs=lambda item: [out_path(item)],
                prepare=lambda item: aligner.align(read_image(item.source)).image,
                compute=lambda images: images,
                write=lambda item, image: write_image_atomic(out_path(item), image),
                overwrite=overwrite,
                on_advance=lambda n: bar.advance(task, n),
            )
            output.mkdir(parents=True, exist_ok=True)
            summary = runner.run(items)
    report(summary, output)
    raise typer.Exit(summary.exit_code)


def main() -> None:  # pragma: no cover - console-script entry
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
