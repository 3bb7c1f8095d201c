"""The `psp-deploy` command: a thin face over the library calls.

Exit codes: 0 success; 1 some inputs of a batch failed (see failures.json); 2 bad
arguments or unusable input (the message says which); 130 interrupted.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from .errors import PspDeployError

EXIT_PARTIAL, EXIT_ERROR, EXIT_INTERRUPTED = 1, 2, 130

app = typer.Typer(
    name="psp-deploy",
    help="Deploy pSp (pixel2style2pixel) face encoders and StyleGAN2 decoders: official checkpoint → "
    "ONNX bundle → calibrated FP16/INT8 graphs and engines → a lean runtime (photo → aligned face → "
    "W+ codes → image).",
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)


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


def main() -> None:  # pragma: no cover - console-script entry
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
