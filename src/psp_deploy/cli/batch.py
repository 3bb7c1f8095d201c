"""The batch commands: align, run and infer, over files, folders and globs."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import numpy as np
import typer

from ..bundle import Bundle
from ..errors import PspDeployError
from ..runtime.batch import FAILURES_FILE, Item, Summary, collect_inputs
from .common import (
    AlignOpt,
    BackendOpt,
    BundleArg,
    CacheDirOpt,
    DeviceOpt,
    EnginesOpt,
    FaceOpt,
    FacePolicy,
    ForceBf16Opt,
    InputsArg,
    LatentMaskOpt,
    MixAlphaOpt,
    OutputDir,
    OverwriteOpt,
    PrecisionOpt,
    ResizeOpt,
    SaveLatentsOpt,
    SeedOpt,
    Tf32Opt,
    ThreadsOpt,
    app,
    console,
    handled,
    say,
)

if TYPE_CHECKING:
    from ..runtime import Output, Pipeline
    from ..runtime.align import AlignedFace

NOutputsOpt = Annotated[int, typer.Option(min=1, help="Mixed outputs per input, each with its own random style.")]
BatchSizeOpt = Annotated[int | None, typer.Option(min=1, help="Images per batch (default: the bundle's, else 4).")]


def run_batch(items: list[Item], title: str, **runner: Any) -> Summary:
    """A BatchRunner over ``items`` behind a progress bar; then the summary, and exit with its code."""
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from ..runtime.batch import BatchRunner

    batch = BatchRunner(**runner)
    batch.check(items)  # a refusal prints alone, not under a progress bar
    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"))
    times = (TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn())
    with Progress(SpinnerColumn(), *columns, *times, console=console) as bar:
        task = bar.add_task(title, total=len(items))
        batch.on_advance = lambda n: bar.advance(task, n)
        return batch.run(items)


def report(summary: Summary, out_dir: Path) -> None:
    """One summary line; failures listed (first few) with the file holding them all."""
    stopped = f" — [yellow]stopped early ({signal.Signals(summary.stopped_by).name})[/]" if summary.interrupted else ""
    console.print(
        f"[green]{len(summary.done)} done[/], {len(summary.skipped)} skipped (already there), "
        f"[{'red' if summary.failed else 'green'}]{len(summary.failed)} failed[/]{stopped}",
        highlight=False,
    )
    for item, (error, message) in summary.failed[:10]:
        message = message.removeprefix(f"{item.source}: ")  # most messages name the file already
        say(f"  ✗ {item.source}: {error}: {message}", "red")
    if summary.failed:
        say(f"  all failures: {out_dir / FAILURES_FILE}")


def noted(item: Item, prepared: np.ndarray, face: AlignedFace | None) -> np.ndarray:
    """``prepared``, after printing what the aligner noted about this input (several faces, a
    small face), one line each: printed through the console, they land above the progress bar."""
    for note in face.warnings if face else ():
        say(f"  ! {item.source}: {note}", "yellow")
    return prepared


@app.command()
def align(
    inputs: Annotated[list[str], typer.Argument(help="Photos, folders (searched recursively) or glob patterns.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Directory for the aligned 256×256 PNGs.")],
    size: Annotated[int, typer.Option(min=16, help="Output side in pixels.")] = 256,
    face: FaceOpt = FacePolicy.largest,
    overwrite: OverwriteOpt = False,
) -> None:
    """Align faces the FFHQ way (dlib landmarks → oriented crop), as pSp models expect.

    Writes OUTPUT/NAME.png per photo, keeping sub-folders. Photos with no face and
    unreadable files are listed in OUTPUT/failures.json; exit code 1 if any failed.
    """
    from ..runtime.align import FaceAligner
    from ..runtime.io import read_image, write_image_atomic

    with handled():
        items = collect_inputs(inputs, exclude=output)
        aligner = FaceAligner(output_size=size, face=face.value)

        def prepare(item: Item) -> np.ndarray:
            aligned = aligner.align(read_image(item.source))
            return noted(item, aligned.image, aligned)

        summary = run_batch(
            items,
            "aligning",
            out_dir=output,
            outputs=lambda item: [item.output(output, ".png")],
            prepare=prepare,
            compute=lambda images: images,
            write=lambda item, image: write_image_atomic(item.output(output, ".png"), image),
            overwrite=overwrite,
            settings={"command": "align", "size": size, "face": face.value},
        )
    report(summary, output)
    raise typer.Exit(summary.exit_code)


def open_pipeline(bundle: Path, backend: str, precision: str, options: Any, face: str = "largest") -> Pipeline:
    """The Pipeline on the backend ``auto`` resolves to, saying what was chosen."""
    from ..runtime import Pipeline
    from ..runtime.backends import resolve_backend

    chosen = resolve_backend(backend, options.device, precision)
    if chosen != backend:
        say(f"backend: {chosen}")
    pipeline = Pipeline.from_bundle(bundle, chosen, precision, options=options, face=face)
    if set(pipeline.precisions.values()) != {precision}:
        say(f"precision per graph: {pipeline.precisions}")
    return pipeline


@app.command()
def run(
    bundle: BundleArg,
    inputs: InputsArg,
    output: OutputDir,
    backend: BackendOpt = "auto",
    precision: PrecisionOpt = "fp32",
    device: DeviceOpt = "cpu",
    tf32: Tf32Opt = False,
    force_bf16: ForceBf16Opt = False,
    threads: ThreadsOpt = None,
    align: AlignOpt = None,
    resize: ResizeOpt = False,
    latent_mask: LatentMaskOpt = None,
    mix_alpha: MixAlphaOpt = None,
    n_outputs: NOutputsOpt = 1,
    seed: SeedOpt = 0,
    save_latents: SaveLatentsOpt = False,
    batch_size: BatchSizeOpt = None,
    face: FaceOpt = FacePolicy.largest,
    engines: EnginesOpt = True,
    overwrite: OverwriteOpt = False,
    cache_dir: CacheDirOpt = None,
) -> None:
    """Run the pipeline on photos: align → encode → (style mixing) → synthesize.

    Writes OUTPUT/NAME.png, NAME being the input's whole name minus its extension (--n-outputs K:
    NAME_0.png … NAME_K-1.png), keeping sub-folders. Reruns skip finished inputs, and refuse (unless
    --overwrite) other settings than the folder's (OUTPUT/psp-deploy.json); Ctrl-C or SIGTERM stop
    after the current batch. Failures go to OUTPUT/failures.json; exit code 1 if any.

    Example: psp-deploy run bundles/ffhq photos/ -o out --latent-mask 8-17 --n-outputs 3
    """
    from ..runtime import RunOptions, parse_latent_mask
    from ..runtime.backends import BackendOptions
    from ..runtime.io import read_image

    with handled():
        n_styles = Bundle.open(bundle).config.n_styles  # the manifest alone: bad arguments fail before loading
        mask = None if latent_mask is None else tuple(parse_latent_mask(latent_mask, n_styles))
        row = RunOptions(align, resize, mask, mix_alpha, seed, n_outputs)
        items = collect_inputs(inputs, exclude=output)
        options = BackendOptions(device.value, threads, engines, force_bf16, cache_dir=cache_dir, tf32=tf32)
        pipeline = open_pipeline(bundle, backend.value, precision.value, options, face.value)
        read_mode = "RGB" if pipeline.config.input_kind == "rgb" else "L"
        tags = [f"_{k}" for k in range(n_outputs)] if n_outputs > 1 else [""]
        summary = run_batch(
            items,
            "running",
            out_dir=output,
            outputs=lambda item: [item.output(output, ".png", t) for t in tags] + latents(item, output, save_latents),
            prepare=lambda item: noted(item, *pipeline.prepare_face(read_image(item.source, read_mode), align)),
            compute=lambda tensors: pipeline.generate(np.stack(tensors), [row] * len(tensors)).outputs,
            write=lambda item, out: write_output(item, out, output, tags, save_latents),
            overwrite=overwrite,
            batch_size=batch_size or pipeline.synthesis_net.record.batch or 4,
            settings=run_settings(pipeline, row, face.value, save_latents),
        )
    report(summary, output)
    raise typer.Exit(summary.exit_code)


def latents(item: Item, out_dir: Path, save: bool) -> list[Path]:
    return [item.output(out_dir, ".npy")] if save else []


def write_output(item: Item, out: Output, out_dir: Path, tags: list[str], save_latents: bool) -> None:
    from ..runtime.io import write_image_atomic, write_npy_atomic

    for tag, image in zip(tags, out.images, strict=True):
        write_image_atomic(item.output(out_dir, ".png", tag), image)
    if save_latents:
        write_npy_atomic(item.output(out_dir, ".npy"), out.codes)


def run_settings(pipeline: Pipeline, row: Any, face: str, save_latents: bool) -> dict[str, Any]:
    """What decides a run's outputs (psp-deploy.json): the graphs that ran and the row's options.
    The backend and threads are left out: they move numbers within tolerance, not what an output is."""
    graphs = {graph: f"{net.precision} {net.record.sha256[:16]}" for graph, net in pipeline.nets.items()}
    mixing = row.latent_mask is not None
    return {
        "command": "run",
        "graphs": graphs,
        "align": row.align,
        "face": face,
        "resize": row.resize,
        "latent_mask": list(row.latent_mask) if mixing else None,
        "mix_alpha": row.mix_alpha,
        "n_outputs": row.n_outputs,
        "seed": row.seed if mixing else None,
        "save_latents": save_latents,
    }


@app.command()
def infer(
    inputs: Annotated[list[str], typer.Argument(help="Photos, folders or glob patterns.")],
    output: OutputDir,
    url: Annotated[str, typer.Option(help="Server URL: http://HOST:8000 or grpc://HOST:8001.")] = (
        "http://127.0.0.1:8000"
    ),
    concurrency: Annotated[int, typer.Option(min=1, help="Requests in flight at once.")] = 4,
    align: AlignOpt = None,
    resize: ResizeOpt = False,
    latent_mask: LatentMaskOpt = None,
    mix_alpha: MixAlphaOpt = None,
    seed: SeedOpt = 0,
    save_latents: SaveLatentsOpt = False,
    overwrite: OverwriteOpt = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for one request.")] = 300.0,
) -> None:
    """Send photos to a `psp-deploy serve` server; outputs, resume, failures.json and exit codes as `run`."""
    from concurrent.futures import ThreadPoolExecutor

    from ..serving.client import ClientPool

    parameters = {"align": align, "resize": resize, "latent_mask": latent_mask, "mix_alpha": mix_alpha, "seed": seed}
    with handled():
        items = collect_inputs(inputs, exclude=output)
        clients = ClientPool(url, timeout)
        if not clients.get().ready():
            raise PspDeployError(f"no ready server at {url} (start one with `psp-deploy serve BUNDLE`)")
        with ThreadPoolExecutor(concurrency) as pool:
            summary = run_batch(
                items,
                "inferring",
                out_dir=output,
                outputs=lambda item: [item.output(output, ".png")] + latents(item, output, save_latents),
                prepare=lambda item: item.source,
                compute=lambda paths: list(pool.map(lambda path: clients.run(path, **parameters), paths)),
                write=lambda item, result: write_served(item, result, output, save_latents),
                batch_size=concurrency,
                overwrite=overwrite,
                settings={"command": "infer", **parameters, "save_latents": save_latents},
            )
    report(summary, output)
    raise typer.Exit(summary.exit_code)


def write_served(item: Item, result: dict[str, np.ndarray], out_dir: Path, save_latents: bool) -> None:
    from ..runtime.io import write_image_atomic, write_npy_atomic

    write_image_atomic(item.output(out_dir, ".png"), result["image"])
    if save_latents:
        write_npy_atomic(item.output(out_dir, ".npy"), result["codes"])
