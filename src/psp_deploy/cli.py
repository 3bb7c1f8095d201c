"""The `psp-deploy` command: a thin face over the library calls.

Exit codes: 0 success; 1 some inputs of a batch failed (see failures.json); 2 bad
arguments or unusable input (the message says which); 130 interrupted (Ctrl-C), 143
stopped by SIGTERM.

Every message that shows text from outside (paths, errors, install hints such as
``psp-deploy[gpu]``) goes through ``escape``: rich would read its brackets as markup.
"""

from __future__ import annotations

import contextlib
import signal
import sys
from collections.abc import Iterator
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import numpy as np
import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from .errors import InputError, PspDeployError
from .runtime.batch import FAILURES_FILE, Item, Summary

if TYPE_CHECKING:
    from .runtime.align import AlignedFace

EXIT_PARTIAL, EXIT_ERROR, EXIT_INTERRUPTED = 1, 2, 130


class FacePolicy(str, Enum):
    largest = "largest"
    best = "best"
    last = "last"


class Modconv(str, Enum):
    grouped = "grouped"
    scaled = "scaled"


class RunBackend(str, Enum):
    auto = "auto"
    onnxruntime = "onnxruntime"
    openvino = "openvino"
    tensorrt = "tensorrt"


class BuildBackend(str, Enum):
    auto = "auto"
    tensorrt = "tensorrt"
    onnxruntime = "onnxruntime"
    openvino = "openvino"


class Precision(str, Enum):
    fp32 = "fp32"
    fp16 = "fp16"
    int8 = "int8"
    bf16 = "bf16"


class Device(str, Enum):
    cpu = "cpu"
    cuda = "cuda"


app = typer.Typer(
    name="psp-deploy",
    help="Deploy pSp (pixel2style2pixel) face encoders and StyleGAN2 decoders: official checkpoint → "
    "ONNX bundle → calibrated FP16/INT8 graphs and engines → a lean runtime (photo → aligned face → "
    "W+ codes → image).",
    no_args_is_help=True,
    rich_markup_mode="markdown",
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console(stderr=True, soft_wrap=True)  # messages stay one line: greppable in logs


def show_version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        console.print(f"psp-deploy {version('psp-deploy')}", highlight=False)
        raise typer.Exit()


@app.callback()
def main_options(
    version: Annotated[
        bool, typer.Option("--version", callback=show_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Deploy pSp face encoders and StyleGAN2 decoders (see `psp-deploy COMMAND --help`)."""


@contextlib.contextmanager
def handled() -> Iterator[None]:
    """Turn the package's errors into one red line and exit code 2; Ctrl-C into 130."""
    try:
        yield
    except PspDeployError as err:
        console.print(f"[bold red]error:[/] {escape(str(err))}", highlight=False)
        raise typer.Exit(EXIT_ERROR) from None
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]")
        raise typer.Exit(EXIT_INTERRUPTED) from None


Overwrite = Annotated[
    bool,
    typer.Option(
        help="Redo inputs whose outputs already exist, also when the folder was made with other settings "
        "(OUTPUT/psp-deploy.json)."
    ),
]


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
        Modconv,
        typer.Option(
            help="Modulated conv form: 'grouped' (one grouped Conv per layer, fixed batch, "
            "as the official code) or 'scaled' (static weights, any batch)."
        ),
    ] = Modconv.grouped,
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
            checkpoint,
            output,
            batch=batch,
            modconv=modconv.value,
            opset=opset,
            verify=verify,
            force=force,
            progress=on_step,
        )
        bar.update(task, description="done", completed=steps)
    for r in results:
        diffs = ", ".join(f"{k} {v:.2e}" for k, v in r.max_abs_diff.items())
        console.print(f"  {r.graph:<9} batch {r.batch}: max abs diff vs torch {diffs}")
    console.print(f"[green]bundle written:[/] {escape(str(bundle.root))}")


def run_batch(items: list, title: str, **runner: Any) -> Summary:
    """A BatchRunner over ``items`` behind a progress bar (align, run and infer share it)."""
    from .runtime.batch import BatchRunner

    progress = Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=console,
    )
    with progress:
        task = progress.add_task(title, total=len(items))
        return BatchRunner(on_advance=lambda n: progress.advance(task, n), **runner).run(items)


def report(summary: Summary, out_dir: Path) -> None:
    """One summary line; failures listed (first few) with the file holding them all."""
    console.print(
        f"[green]{len(summary.done)} done[/], {len(summary.skipped)} skipped (already there), "
        f"[{'red' if summary.failed else 'green'}]{len(summary.failed)} failed[/]"
        + (f" — [yellow]stopped early ({signal.Signals(summary.stopped_by).name})[/]" if summary.interrupted else ""),
        highlight=False,
    )
    for item, (error, message) in summary.failed[:10]:
        console.print(f"  [red]✗[/] {escape(f'{item.source}: {error}: {message}')}", highlight=False)
    if summary.failed:
        console.print(f"  all failures: {escape(str(out_dir / FAILURES_FILE))}", highlight=False)


def noted(item: Item, prepared: np.ndarray, face: AlignedFace | None) -> np.ndarray:
    """``prepared``, after printing what the aligner noted about this input (several faces, a
    small face), one line each: printed through the console, they land above the progress bar."""
    for note in face.warnings if face else ():
        console.print(f"  [yellow]![/] {escape(f'{item.source}: {note}')}", highlight=False)
    return prepared


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
    overwrite: Overwrite = False,
) -> None:
    """Align faces the FFHQ way (dlib landmarks → oriented crop), as pSp models expect.

    Writes OUTPUT/NAME.png per photo, keeping sub-folders. Photos with no face and
    unreadable files are listed in OUTPUT/failures.json; exit code 1 if any failed.
    """
    from .runtime.align import FaceAligner
    from .runtime.batch import collect_inputs
    from .runtime.io import read_image, write_image_atomic

    with handled():
        items = collect_inputs(inputs)
        aligner = FaceAligner(output_size=size, face=face.value)
        out_path = lambda item: item.output(output, ".png")  # noqa: E731

        def prepare(item: Item) -> np.ndarray:
            face = aligner.align(read_image(item.source))
            return noted(item, face.image, face)

        summary = run_batch(
            items,
            "aligning",
            out_dir=output,
            outputs=lambda item: [out_path(item)],
            prepare=prepare,
            compute=lambda images: images,
            write=lambda item, image: write_image_atomic(out_path(item), image),
            overwrite=overwrite,
            settings={"command": "align", "size": size, "face": face.value},
        )
    report(summary, output)
    raise typer.Exit(summary.exit_code)


RuntimeBackend = Annotated[
    RunBackend,
    typer.Option(
        help="auto: on CPU, openvino when installed and it runs the precision asked (measured faster), else "
        "onnxruntime. Never changes the precision."
    ),
]
RuntimePrecision = Annotated[
    Precision,
    typer.Option(
        help="fp32; fp16 (onnxruntime, tensorrt) and int8 run graphs made by `psp-deploy calibrate`; bf16 "
        "(openvino, CPUs with native BF16)."
    ),
]
CacheDir = Annotated[
    Path | None,
    typer.Option(
        help="openvino: where compiled-model caches go (default: $PSP_DEPLOY_CACHE_DIR, else the user cache "
        "folder ~/.cache/psp-deploy). Running never writes into the bundle."
    ),
]


def backend_options(
    backend: str,
    *,
    device: str = "cpu",
    threads: int | None = None,
    engines: bool = True,
    force_bf16: bool = False,
    hint: str = "latency",
    cache_dir: Path | None = None,
) -> dict:
    """The options each backend takes, from the CLI's common flags."""
    if backend == "onnxruntime":
        return {"device": device, "threads": threads, "engines": engines}
    if backend == "openvino":
        return {"threads": threads, "force_bf16": force_bf16, "hint": hint, "cache_dir": cache_dir}
    return {}


def chosen_backend(backend: str, device: str, precision: str) -> str:
    from .runtime.backends import resolve_backend

    chosen = resolve_backend(backend, device, precision)
    if chosen != backend:
        console.print(f"backend: {chosen}", highlight=False)
    return chosen


def _pipeline(bundle: Path, backend: str, precision: str, face: str = "largest", **flags):
    from .runtime import Pipeline

    backend = chosen_backend(backend, flags.get("device", "cpu"), precision)
    options = backend_options(backend, **flags)
    pipeline = Pipeline.from_bundle(bundle, backend=backend, precision=precision, face=face, **options)
    if set(pipeline.precisions.values()) != {precision}:
        console.print(f"precision per graph: {pipeline.precisions}", highlight=False)
    return pipeline


@app.command()
def run(
    bundle: Annotated[Path, typer.Argument(help="Bundle directory made by `psp-deploy export`.")],
    inputs: Annotated[list[str], typer.Argument(help="Photos (or sketches / label maps), folders or glob patterns.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Directory for the outputs.")],
    backend: RuntimeBackend = RunBackend.auto,
    precision: RuntimePrecision = Precision.fp32,
    device: Annotated[Device, typer.Option(help="onnxruntime device.")] = Device.cpu,
    force_bf16: Annotated[bool, typer.Option(help="openvino: allow bf16 on a CPU without native BF16.")] = False,
    threads: Annotated[int | None, typer.Option(help="CPU threads per graph (default: all cores).")] = None,
    align: Annotated[
        bool | None,
        typer.Option(
            "--align/--no-align",
            help="Align faces first (default: yes for photos; sketches and label maps are never aligned).",
        ),
    ] = None,
    resize: Annotated[
        bool, typer.Option(help="Write 256×256 outputs (the official face_pool) instead of full size.")
    ] = False,
    latent_mask: Annotated[
        str | None,
        typer.Option(
            help="Style mixing: style indices to take from a random face, e.g. 8-17 (fine styles: colours, texture)."
        ),
    ] = None,
    mix_alpha: Annotated[
        float | None, typer.Option(help="Blend factor of the injected styles (default: replace).")
    ] = None,
    n_outputs: Annotated[int, typer.Option(help="Mixed outputs per input, each with its own random style.")] = 1,
    seed: Annotated[int, typer.Option(help="Seed of the injected styles: output k uses z from seed + k.")] = 0,
    save_latents: Annotated[bool, typer.Option(help="Also write each input's W+ codes as NAME.npy.")] = False,
    batch_size: Annotated[
        int | None, typer.Option(help="Images per batch (default: the bundle's batch, else 4).")
    ] = None,
    face: Annotated[FacePolicy, typer.Option(help="Which face when a photo has several.")] = FacePolicy.largest,
    engines: Annotated[
        bool, typer.Option(help="onnxruntime: use optimized models saved by `psp-deploy build`.")
    ] = True,
    overwrite: Overwrite = False,
    cache_dir: CacheDir = None,
) -> None:
    """Run the pipeline on photos: align → encode → (style mixing) → synthesize.

    Writes OUTPUT/NAME.png, NAME being the input's whole name minus its extension (with
    --n-outputs K: NAME_0.png … NAME_K-1.png), keeping sub-folders. Reruns skip finished
    inputs, and refuse (unless --overwrite) when asked for other settings than the folder's
    (OUTPUT/psp-deploy.json); Ctrl-C or SIGTERM stops after the current batch. Failures
    (unreadable files, no face) go to OUTPUT/failures.json; exit code 1 if any.

    Example: psp-deploy run bundles/ffhq photos/ -o out --latent-mask 8-17 --n-outputs 3
    """
    from .runtime.batch import collect_inputs
    from .runtime.io import read_image, write_image_atomic, write_npy_atomic
    from .runtime.pipeline import parse_latent_mask
    from .runtime.preprocess import to_uint8

    with handled():
        if n_outputs < 1 or (n_outputs > 1 and latent_mask is None):
            raise InputError("--n-outputs above 1 needs --latent-mask (each output mixes in another random style)")
        items = collect_inputs(inputs)
        pipeline = _pipeline(
            bundle,
            backend.value,
            precision.value,
            face.value,
            device=device.value,
            threads=threads,
            engines=engines,
            force_bf16=force_bf16,
            cache_dir=cache_dir,
        )
        mask = None if latent_mask is None else parse_latent_mask(latent_mask, pipeline.config.n_styles)
        styles = [pipeline.style_latent(seed + k) for k in range(n_outputs)] if mask else []
        read_mode = "RGB" if pipeline.config.input_kind == "rgb" else "L"
        names = [f"_{k}" for k in range(n_outputs)] if n_outputs > 1 else [""]

        def outputs(item):
            files = [item.output(output, ".png", tag) for tag in names]
            return files + ([item.output(output, ".npy")] if save_latents else [])

        def compute(tensors):
            codes = pipeline.encode(np.stack(tensors))
            variants = [pipeline.mix(codes, mask, w, mix_alpha) for w in styles] if mask else [codes]
            images = [to_uint8(pipeline.synthesize(c)[1 if resize else 0]) for c in variants]
            return [(codes[i], [imgs[i] for imgs in images]) for i in range(len(tensors))]

        def write(item, result):
            codes, images = result
            files = outputs(item)
            for path, image in zip(files, images, strict=False):
                write_image_atomic(path, image)
            if save_latents:
                write_npy_atomic(files[-1], codes)

        summary = run_batch(
            items,
            "running",
            out_dir=output,
            outputs=outputs,
            prepare=lambda item: noted(item, *pipeline.prepare(read_image(item.source, read_mode), align)),
            compute=compute,
            write=write,
            overwrite=overwrite,
            batch_size=batch_size or pipeline.synthesis_net.record.batch or 4,
            settings={
                "command": "run",
                "graphs": {graph: f"{net.precision} {net.record.sha256[:16]}" for graph, net in pipeline.nets.items()},
                "align": align,
                "face": face.value,
                "resize": resize,
                "latent_mask": mask,
                "mix_alpha": mix_alpha,
                "n_outputs": n_outputs,
                "seed": seed if mask else None,
                "save_latents": save_latents,
            },
        )
    report(summary, output)
    raise typer.Exit(summary.exit_code)


@app.command()
def calibrate(
    bundle: Annotated[Path, typer.Argument(help="Bundle directory made by `psp-deploy export`.")],
    precision: Annotated[str, typer.Option(help="fp16 or int8 (onnxruntime); bf16 or int8 (openvino).")],
    backend: Annotated[
        str,
        typer.Option(
            help="Whose accuracy to measure: onnxruntime (writes FP16/INT8 graphs) or openvino (its bf16 "
            "on the FP32 graphs, or the INT8 graphs)."
        ),
    ] = "onnxruntime",
    force_bf16: Annotated[bool, typer.Option(help="openvino: measure bf16 even without native BF16.")] = False,
    images: Annotated[
        Path | None, typer.Option(help="Folder of face photos to calibrate on (aligned as the runtime does).")
    ] = None,
    synthetic: Annotated[
        int | None, typer.Option(help="Or: this many synthetic faces from the bundle's own generator.")
    ] = None,
    graphs: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated graphs to convert (default: all for fp16, "
            "encoder,synthesis for int8); the rest stay FP32."
        ),
    ] = None,
    methods: Annotated[
        str, typer.Option(help="INT8 calibration methods to try; the most accurate wins.")
    ] = "minmax,entropy,percentile",
    rounds: Annotated[int, typer.Option(help="INT8: rounds of keeping the most sensitive nodes in float.")] = 2,
    holdout: Annotated[float, typer.Option(help="Share of samples held back for the accuracy report.")] = 0.25,
    seed: Annotated[int, typer.Option(help="Seed of the synthetic samples and the split.")] = 0,
) -> None:
    """Make calibrated FP16 or INT8 graphs and an accuracy report against FP32.

    FP16 keeps in FP32 the epsilon-guarded normalisations and any op whose measured range
    FP16 cannot hold; INT8 writes symmetric Q/DQ graphs (what TensorRT consumes). Writes
    BUNDLE/GRAPH.PRECISION.onnx, BUNDLE/reports/PRECISION.json and manifest records.

    Example: psp-deploy calibrate bundles/ffhq --precision int8 --images aligned_faces/
    """
    from rich.table import Table

    from .calibration import calibrate_bundle
    from .calibration.calibrate import report_path

    live = console.status("calibrating") if console.is_terminal else contextlib.nullcontext()
    with handled(), live as status:

        def say(message: str) -> None:  # a spinner shows nothing in logs and pipes: a line per step there
            if status is None:
                console.print(f"calibrating: {message}", markup=False, highlight=False)
            else:
                status.update(escape(message))

        report = calibrate_bundle(
            bundle,
            precision,
            backend=backend,
            force_bf16=force_bf16,
            images=images,
            synthetic=synthetic,
            seed=seed,
            holdout=holdout,
            methods=tuple(m.strip() for m in methods.split(",")),
            rounds=rounds,
            graphs=tuple(g.strip() for g in graphs.split(",")) if graphs else None,
            progress=say,
        )
    table = Table(title=f"{precision} vs fp32 on {report.held_back} held-back samples ({report.data})")
    for column in ("graph", "PSNR dB (mean / min)", "codes cosine (mean / min)", "max abs err", "non-finite"):
        table.add_column(column)
    for g in report.graphs:
        psnr = f"{g.psnr_db:.1f} / {g.psnr_db_min:.1f}" if g.psnr_db is not None else ""
        cos = f"{g.cosine_mean:.4f} / {g.cosine_min:.4f}" if g.cosine_mean is not None else ""
        table.add_row(g.name, psnr, cos, f"{g.max_abs_err:.3g}", str(g.nonfinite))
    console.print(table)
    for line in report.decision_lines():
        console.print(f"  {escape(line)}", highlight=False)
    for t in report.targets():
        console.print(f"  [{'green' if t['passed'] else 'red'}]{escape(t['verdict'])}[/]", highlight=False)
    for warning in report.warnings:
        console.print(f"[yellow]warning:[/] {escape(warning)}", highlight=False)
    console.print(f"report: {escape(str(report_path(bundle, precision, backend)))}", highlight=False)


@app.command()
def build(
    bundle: Annotated[Path, typer.Argument(help="Bundle directory.")],
    backend: Annotated[
        BuildBackend,
        typer.Option(
            help="tensorrt (a plan per graph; needs an NVIDIA GPU), onnxruntime (saved optimized models: fast "
            "start) or openvino (compiled models exported into the bundle); auto: tensorrt where it is "
            "installed, else what `run --backend auto` picks for the precision."
        ),
    ] = BuildBackend.auto,
    precision: Annotated[
        Precision, typer.Option(help="fp16 and int8 need `psp-deploy calibrate` first; bf16 is openvino's.")
    ] = Precision.fp32,
    force_bf16: Annotated[bool, typer.Option(help="openvino: compile bf16 on a CPU without native BF16.")] = False,
    min_batch: Annotated[int, typer.Option(help="TensorRT profile, dynamic-batch graphs: smallest batch.")] = 1,
    opt_batch: Annotated[int, typer.Option(help="TensorRT profile: the batch to tune for.")] = 1,
    max_batch: Annotated[int, typer.Option(help="TensorRT profile: largest batch.")] = 8,
    optimization_level: Annotated[int, typer.Option(help="TensorRT builder optimization level (0-5).")] = 3,
    version_compatible: Annotated[
        bool, typer.Option(help="TensorRT: plans that later TensorRT versions can run.")
    ] = False,
) -> None:
    """Compile the bundle's graphs into engines and record them in the manifest.

    TensorRT networks are strongly typed: the precision comes from the graph (FP16 casts,
    INT8 Q/DQ), so `--precision int8` needs `psp-deploy calibrate --precision int8` first.
    A timing cache is kept in the bundle. Runtimes refuse engines built for another GPU or
    TensorRT version.
    """
    from .engines import build_engines
    from .engines.build import default_backend
    from .engines.tensorrt import BatchProfile

    with handled(), console.status("building") as status:
        chosen = default_backend(precision.value) if backend == BuildBackend.auto else backend.value
        console.print(f"backend: {chosen}", highlight=False)
        engines = build_engines(
            bundle,
            chosen,
            precision.value,
            batch=BatchProfile(min_batch, opt_batch, max_batch),
            optimization_level=optimization_level,
            version_compatible=version_compatible,
            force_bf16=force_bf16,
            progress=lambda m: status.update(m),
        )
    for e in engines:
        console.print(f"  {e.graph:<9} {e.precision}: {escape(e.file)}", highlight=False)


@app.command()
def serve(
    bundle: Annotated[Path, typer.Argument(help="Bundle directory.")],
    backend: RuntimeBackend = RunBackend.auto,
    precision: RuntimePrecision = Precision.fp32,
    device: Annotated[Device, typer.Option(help="onnxruntime device.")] = Device.cpu,
    threads: Annotated[int | None, typer.Option(help="CPU threads per graph.")] = None,
    force_bf16: Annotated[bool, typer.Option(help="openvino: allow bf16 on a CPU without native BF16.")] = False,
    engines: Annotated[
        bool, typer.Option(help="onnxruntime: use optimized models saved by `psp-deploy build`.")
    ] = True,
    cache_dir: CacheDir = None,
    host: Annotated[
        str,
        typer.Option(help="Address to listen on: this machine only by default; 0.0.0.0 for every interface."),
    ] = "127.0.0.1",
    http_port: Annotated[int, typer.Option(help="HTTP port (KServe v2 protocol).")] = 8000,
    grpc_port: Annotated[int, typer.Option(help="gRPC port.")] = 8001,
    metrics_port: Annotated[int, typer.Option(help="Prometheus metrics port.")] = 8002,
    max_batch: Annotated[int, typer.Option(help="Largest batch the dynamic batcher forms across clients.")] = 8,
    max_queue_delay_us: Annotated[
        int, typer.Option(help="How long a request may wait for others to batch with.")
    ] = 2000,
    instances: Annotated[int, typer.Option(help="Model instances (concurrent batches) per model.")] = 1,
    access_token: Annotated[
        str | None,
        typer.Option(
            envvar="PSP_DEPLOY_ACCESS_TOKEN",
            help="Token for Triton's restricted APIs (statistics, repository); default: a random one.",
        ),
    ] = None,
    face: Annotated[FacePolicy, typer.Option(help="Which face when a photo has several.")] = FacePolicy.largest,
) -> None:
    """Serve the bundle on NVIDIA Triton Inference Server (through PyTriton).

    Models: **psp** (photo bytes → aligned face, W+ codes, image; request parameters align, resize,
    latent_mask, mix_alpha, seed), **psp_encode** (aligned face → codes) and **psp_synthesize**
    (codes → image). Requests from different clients are batched. Health: /v2/health/ready;
    metrics on --metrics-port. SIGTERM or Ctrl-C finish in-flight requests, then stop.
    """
    from .serving.server import ServeOptions
    from .serving.server import serve as run_server

    options = ServeOptions(
        host, http_port, grpc_port, metrics_port, max_batch, max_queue_delay_us, instances, access_token
    )
    with handled():
        chosen = chosen_backend(backend.value, device.value, precision.value)
        flags = dict(device=device.value, threads=threads, engines=engines, force_bf16=force_bf16, cache_dir=cache_dir)
        pipeline_options = {
            "backend": chosen,
            "precision": precision.value,
            "face": face.value,
            **backend_options(chosen, **flags),
        }
        run_server(
            bundle,
            pipeline_options,
            options,
            on_ready=lambda: console.print(
                f"[green]serving[/] {escape(str(bundle))} on http://{host}:{http_port} and grpc://{host}:{grpc_port} "
                f"(metrics :{metrics_port}); models psp, psp_encode, psp_synthesize",
                highlight=False,
            ),
        )
    console.print("stopped")


@app.command()
def infer(
    inputs: Annotated[list[str], typer.Argument(help="Photos, folders or glob patterns.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Directory for the outputs.")],
    url: Annotated[
        str, typer.Option(help="Server URL: http://HOST:8000 or grpc://HOST:8001.")
    ] = "http://127.0.0.1:8000",
    concurrency: Annotated[int, typer.Option(help="Requests in flight at once.")] = 4,
    align: Annotated[
        bool | None, typer.Option("--align/--no-align", help="Align faces first (default: yes for photos).")
    ] = None,
    resize: Annotated[bool, typer.Option(help="Ask for 256×256 outputs.")] = False,
    latent_mask: Annotated[str | None, typer.Option(help="Style mixing: style indices, e.g. 8-17.")] = None,
    mix_alpha: Annotated[float | None, typer.Option(help="Blend factor of the injected styles.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the injected style.")] = 0,
    save_latents: Annotated[bool, typer.Option(help="Also write each input's W+ codes as NAME.npy.")] = False,
    overwrite: Overwrite = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for one request.")] = 300.0,
) -> None:
    """Send photos to a `psp-deploy serve` server; outputs, resume, failures.json and exit codes as `run`."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from .runtime.batch import collect_inputs
    from .runtime.io import write_image_atomic, write_npy_atomic
    from .serving.client import PspClient

    local = threading.local()

    def client() -> PspClient:  # tritonclient's HTTP client is not thread-safe: one per thread
        if not hasattr(local, "client"):
            local.client = PspClient(url, timeout)
        return local.client

    def request(path: Path):
        try:
            return client().run(
                path, align=align, resize=resize, latent_mask=latent_mask, mix_alpha=mix_alpha, seed=seed
            )
        except PspDeployError as err:
            return err

    def outputs(item):
        return [item.output(output, ".png")] + ([item.output(output, ".npy")] if save_latents else [])

    def write(item, result):
        write_image_atomic(outputs(item)[0], result["image"])
        if save_latents:
            write_npy_atomic(outputs(item)[1], result["codes"])

    with handled():
        items = collect_inputs(inputs)
        if not client().ready():
            raise PspDeployError(f"no ready server at {url} (start one with `psp-deploy serve BUNDLE`)")
        with ThreadPoolExecutor(concurrency) as pool:
            summary = run_batch(
                items,
                "inferring",
                out_dir=output,
                outputs=outputs,
                prepare=lambda item: item.source,
                compute=lambda paths: list(pool.map(request, paths)),
                write=write,
                batch_size=concurrency,
                overwrite=overwrite,
                settings={
                    "command": "infer",
                    "align": align,
                    "resize": resize,
                    "latent_mask": latent_mask,
                    "mix_alpha": mix_alpha,
                    "seed": seed,
                    "save_latents": save_latents,
                },
            )
    report(summary, output)
    raise typer.Exit(summary.exit_code)


@app.command()
def bench(
    bundle: Annotated[Path, typer.Argument(help="Bundle directory.")],
    backend: Annotated[
        str,
        typer.Option(
            help="Comma-separated backends: auto (as `run`: openvino on CPU when installed and it runs the "
            "precision, else onnxruntime), onnxruntime, openvino, tensorrt."
        ),
    ] = "auto",
    precision: Annotated[str, typer.Option(help="Comma-separated precisions: fp32, fp16, int8, bf16.")] = "fp32",
    batch: Annotated[str, typer.Option(help="Comma-separated batch sizes.")] = "1,4",
    warmup: Annotated[int, typer.Option(help="Untimed calls before each measurement.")] = 1,
    runs: Annotated[int, typer.Option(help="Timed calls per measurement.")] = 5,
    stages: Annotated[
        str, typer.Option(help="Comma-separated: align, encode, synthesize, e2e.")
    ] = "align,encode,synthesize,e2e",
    threads: Annotated[int | None, typer.Option(help="CPU threads (default: all cores).")] = None,
    baseline: Annotated[Path | None, typer.Option(help="The checkpoint: also time the official PyTorch path.")] = None,
    limits: Annotated[bool, typer.Option(help="Measure the machine's single-conv rate per precision.")] = True,
    profile: Annotated[
        bool, typer.Option(help="Also record seconds per operator type of each graph (the backend's profiler).")
    ] = False,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            help="Results JSON (default: bench-results.json in the --report folder, else in the current one).",
        ),
    ] = None,
    report: Annotated[Path | None, typer.Option(help="Also write a markdown report and PNG plots here.")] = None,
) -> None:
    """Latency (min, p50, p90, p99, mean) and throughput per stage and end to end, per batch size.

    Results record the machine (CPU model, cores, ISA flags), library versions, the bundle's
    configuration and these settings. With --baseline the official algorithm runs in PyTorch
    in the same run; the single-conv limits tell how far each figure is from the machine's.
    """
    import json

    from .benchmark.harness import BenchSettings, run_benchmark
    from .benchmark.report import write_report
    from .runtime.io import atomic_file

    split = lambda text: [t.strip() for t in text.split(",") if t.strip()]  # noqa: E731
    output = output or (report or Path()) / "bench-results.json"  # the results beside their report
    live = console.status("benchmarking") if console.is_terminal else contextlib.nullcontext()
    with handled(), live as status:

        def say(message: str) -> None:  # a spinner shows nothing in logs and pipes: a line per step there
            if status is None:
                console.print(f"benchmarking: {message}", markup=False, highlight=False)
            else:
                status.update(escape(message))

        try:
            batches = [int(b) for b in split(batch)]
        except ValueError:
            raise InputError(f"--batch takes comma-separated integers, got {batch!r}") from None
        settings = BenchSettings(
            split(backend), split(precision), batches, split(stages), warmup, runs, threads, profile
        )
        results = run_benchmark(bundle, settings, baseline=baseline, limits=limits, progress=say)
        with atomic_file(output) as f:
            f.write((json.dumps(results, indent=2) + "\n").encode())
        if report:
            path = write_report(results, report, output.stem, "psp-deploy " + " ".join(sys.argv[1:]))
            console.print(f"report: {escape(str(path))}", highlight=False)
    for row in results["results"]:
        console.print(
            f"  {row['backend']:<14} {row['precision']:<5} b{row['batch']} {row['stage']:<10} "
            f"p50 {row['latency_s']['p50']:.3f}s  {row['images_per_s']:.2f} img/s",
            highlight=False,
        )
    for warning in results["warnings"]:
        console.print(f"[yellow]warning:[/] {escape(warning)}", highlight=False)
    console.print(f"results: {escape(str(output))}", highlight=False)


@app.command()
def demo(
    workdir: Annotated[Path, typer.Option(help="Where the synthetic checkpoint, bundle and outputs go.")] = Path(
        "demo"
    ),
    output_size: Annotated[int, typer.Option(help="Generator output size.")] = 1024,
) -> None:
    """The whole flow on an embedded synthetic FFHQ-encode model and skimage's astronaut photo.

    synthetic checkpoint (official format) → export (verified against torch) → align →
    encode → synthesize, with a timing table. Cached: a second run reuses the bundle.
    """
    from .demo import run_demo

    with handled():
        run_demo(workdir, output_size, console)


def main() -> None:  # pragma: no cover - console-script entry
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
