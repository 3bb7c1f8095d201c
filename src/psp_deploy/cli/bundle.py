"""The commands that make and grow a bundle: export, calibrate, build, and the demo."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from .common import (
    BackendName,
    BundleArg,
    CalibrationBackend,
    Device,
    Modconv,
    Precision,
    UpsampleForm,
    app,
    console,
    handled,
    progress,
    say,
)

if TYPE_CHECKING:
    from ..calibration.progress import Progress
    from ..calibration.report import AccuracyReport


@app.command()
def export(
    checkpoint: Annotated[Path, typer.Argument(help="Official pSp/e4e checkpoint (.pt), e.g. psp_ffhq_encode.pt.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Bundle directory to create.")],
    batch: Annotated[
        int,
        typer.Option(min=1, help="Batch size of the synthesis graph (grouped form only: its Conv group = batch)."),
    ] = 1,
    modconv: Annotated[
        Modconv,
        typer.Option(
            help="Modulated conv form: 'grouped' (one grouped Conv per layer, fixed batch, as the official code) "
            "or 'scaled' (static weights, any batch)."
        ),
    ] = "grouped",
    upsample: Annotated[
        UpsampleForm,
        typer.Option(
            help="Upsampling conv form: 'transpose' (one ConvTranspose per layer, as the official code) or "
            "'phase' (four convs on the low-resolution input + an interleave: same math and multiply-adds; "
            "benchmarks/results say which is faster on which backend)."
        ),
    ] = "transpose",
    opset: Annotated[int, typer.Option(min=18, max=21, help="ONNX opset (18-21).")] = 18,
    verify: Annotated[
        bool,
        typer.Option(
            "--verify/--no-verify",
            help="Check every graph against the torch reference (max abs diff ≤ 1e-3) and fail if it does not match.",
        ),
    ] = True,
    force: Annotated[
        bool, typer.Option(help="Replace a non-empty output directory, even one holding this very export.")
    ] = False,
) -> None:
    """Export a checkpoint to a bundle: encoder.onnx, mapping.onnx, synthesis.onnx, manifest.json.

    A rerun into a folder that already holds this very export (same checkpoint, options and
    psp-deploy) keeps it, with what calibrate and build added; any other non-empty folder is refused
    unless --force.

    Example: psp-deploy export psp_ffhq_encode.pt -o bundles/ffhq --modconv scaled
    """
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from ..errors import ExportError
    from ..export import ExportOptionError, check_target, export_bundle

    steps = 1 + 3 * (2 if verify else 1)
    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"))
    options = dict(batch=batch, modconv=modconv.value, upsample=upsample.value, opset=opset, verify=verify)
    with handled():
        try:
            existing = check_target(checkpoint, output, **options, force=force)  # refusals print alone, no bar
            if existing is not None:
                say(
                    f"{output} already holds this export (same checkpoint and options): kept as it is; --force "
                    "exports it again",
                    "green",
                )
                return
            with Progress(SpinnerColumn(), *columns, TimeElapsedColumn(), console=console) as bar:
                task = bar.add_task("export", total=steps)
                on_step = lambda m: bar.update(task, description=m, advance=0 if m == "loading checkpoint" else 1)  # noqa: E731
                bundle, results = export_bundle(checkpoint, output, **options, force=force, progress=on_step)
                bar.update(task, description="done", completed=steps)
        except ExportOptionError as err:
            raise ExportError(err.cli) from None  # the command's flags, not the Python parameters
    for r in results:
        diffs = ", ".join(f"{k} {v:.2e}" for k, v in r.max_abs_diff.items())
        say(f"  {r.graph:<9} batch {r.batch}: max abs diff vs torch {diffs}")
    say(f"bundle written: {bundle.root}", "green")


def comma_list(text: str | None) -> tuple[str, ...] | None:
    return None if text is None else tuple(t.strip() for t in text.split(",") if t.strip())


@app.command()
def calibrate(
    bundle: BundleArg,
    precision: Annotated[Precision, typer.Option(help="fp16 or int8 (onnxruntime); bf16 or int8 (openvino).")],
    backend: Annotated[
        CalibrationBackend,
        typer.Option(
            help="Whose accuracy to measure: onnxruntime (writes FP16/INT8 graphs) or openvino (its bf16 "
            "on the FP32 graphs, or the INT8 graphs)."
        ),
    ] = "onnxruntime",
    force_bf16: Annotated[bool, typer.Option(help="openvino: measure bf16 even without native BF16.")] = False,
    images: Annotated[
        Path | None, typer.Option(help="Folder of face photos to calibrate on (aligned as the runtime does).")
    ] = None,
    align: Annotated[
        bool | None,
        typer.Option(
            "--align/--no-align",
            help="Align the --images photos first, as run does (default: yes for photos; sketches and label maps "
            "are never aligned). --no-align: they are already-aligned crops (psp-deploy align's output), used as "
            "they are.",
        ),
    ] = None,
    synthetic: Annotated[
        int | None, typer.Option(help="Or: this many synthetic faces from the bundle's own generator.")
    ] = None,
    graphs: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated graphs to convert (default: all for fp16, encoder,synthesis for int8); the rest "
            "stay FP32."
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

    Photos that cannot be used (no face, unreadable) are left out and named with the reason; fewer
    than 4 usable ones are refused.

    Example: psp-deploy calibrate bundles/ffhq --precision int8 --images aligned/ --no-align
    """
    from ..calibration import calibrate_bundle
    from ..calibration.calibrate import report_path

    with handled(), stage_bars("calibrating") as stages:
        report = calibrate_bundle(
            bundle,
            precision.value,
            backend=backend.value,
            force_bf16=force_bf16,
            images=images,
            synthetic=synthetic,
            align=align,
            seed=seed,
            holdout=holdout,
            methods=comma_list(methods),
            rounds=rounds,
            graphs=comma_list(graphs),
            stages=stages,
        )
    print_dropped(report)
    print_accuracy(report, precision.value)
    say(f"report: {report_path(bundle, precision.value, backend.value)}")


@contextlib.contextmanager
def stage_bars(title: str) -> Iterator[Progress]:
    """Counted stages as progress bars with an ETA, one per stage, with run's columns; off a terminal (a log,
    a pipe), where a bar shows nothing until it ends, about ten lines per stage."""
    from rich.progress import BarColumn, SpinnerColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
    from rich.progress import Progress as Bars

    from ..calibration.progress import as_lines

    if not console.is_terminal:
        with progress(title) as step:
            yield as_lines(step)
        return
    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"))
    times = (TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn())
    with Bars(SpinnerColumn(), *columns, *times, console=console) as bars:
        tasks: dict[str, int] = {}

        def update(stage: str, done: int, total: int, note: str = "") -> None:
            if stage not in tasks:
                for task in tasks.values():  # a stage that ended early (a last round not needed) shows as done
                    bars.update(task, completed=bars.tasks[task].total)
                tasks[stage] = bars.add_task(stage, total=total)
            bars.update(tasks[stage], description=f"{stage}: {note}" if note else stage, completed=done, total=total)

        yield update


def print_dropped(report: AccuracyReport) -> None:
    """Every photo calibration left out, and why: never silently."""
    if not report.dropped:
        return
    say(
        f"left out {len(report.dropped)} photo{'s' if len(report.dropped) != 1 else ''} (used for neither "
        "calibration nor the accuracy figures):",
        "yellow",
    )
    for d in report.dropped:
        say(f"  ✗ {d['photo']}: {d['reason']}", "yellow")


def print_accuracy(report: AccuracyReport, precision: str) -> None:
    """The accuracy table, the decisions (method, nodes kept in float), each target's verdict."""
    from rich.table import Table

    table = Table(title=f"{precision} vs fp32 on {report.held_back} held-back samples ({report.data})")
    for column in ("graph", "PSNR dB (mean / min)", "codes cosine (mean / min)", "max abs err", "non-finite"):
        table.add_column(column)
    for g in report.graphs:
        psnr = f"{g.psnr_db:.1f} / {g.psnr_db_min:.1f}" if g.psnr_db is not None else ""
        cos = f"{g.cosine_mean:.4f} / {g.cosine_min:.4f}" if g.cosine_mean is not None else ""
        table.add_row(g.name, psnr, cos, f"{g.max_abs_err:.3g}", str(g.nonfinite))
    console.print(table)
    for line in report.decision_lines():
        say(f"  {line}")
    for t in report.targets():
        say(f"  {t['verdict']}", "green" if t["passed"] else "red")
    for warning in report.warnings:
        say(f"warning: {warning}", "yellow")


@app.command()
def build(
    bundle: BundleArg,
    backend: Annotated[
        BackendName,
        typer.Option(
            help="tensorrt (a plan per graph; needs an NVIDIA GPU), onnxruntime (saved optimized models: fast "
            "start; with --device cuda, measured CUDA settings), openvino (compiled models exported into the "
            "bundle) or inductor (AOTInductor packages compiled from --checkpoint, cpu or cuda: fused kernels); "
            "auto: onnxruntime with --device cuda, else tensorrt where it is installed, else what "
            "`run --backend auto` picks for the precision."
        ),
    ] = "auto",
    precision: Annotated[
        Precision, typer.Option(help="fp16 and int8 need `psp-deploy calibrate` first; bf16 is openvino's.")
    ] = "fp32",
    force_bf16: Annotated[bool, typer.Option(help="openvino: compile bf16 on a CPU without native BF16.")] = False,
    device: Annotated[
        Device,
        typer.Option(
            help="onnxruntime: cpu saves optimized models; cuda times each heavy graph's CUDA settings (NCHW or "
            "NHWC convolutions, CUDA graph or not) at --opt-batch on this GPU and records the fastest. inductor: "
            "the device its packages are compiled for."
        ),
    ] = Device.cpu,
    min_batch: Annotated[int, typer.Option(help="TensorRT profile, dynamic-batch graphs: smallest batch.")] = 1,
    opt_batch: Annotated[
        int, typer.Option(help="TensorRT profile: the batch to tune for; onnxruntime --device cuda: the batch timed.")
    ] = 1,
    max_batch: Annotated[int, typer.Option(help="TensorRT profile: largest batch.")] = 8,
    optimization_level: Annotated[int, typer.Option(help="TensorRT builder optimization level (0-5).")] = 3,
    version_compatible: Annotated[
        bool, typer.Option(help="TensorRT: plans that later TensorRT versions can run.")
    ] = False,
    tf32: Annotated[
        bool,
        typer.Option(
            help="tensorrt, or onnxruntime --device cuda: let FP32 layers run in TF32 on tensor cores (faster, "
            "10-bit mantissa), recorded with the plan or settings. Default: IEEE FP32."
        ),
    ] = False,
    checkpoint: Annotated[
        Path | None,
        typer.Option(
            help="inductor: the checkpoint the bundle was exported from (its sha256 must be the manifest's source)."
        ),
    ] = None,
) -> None:
    """Compile the bundle's graphs into engines and record them in the manifest.

    TensorRT networks are strongly typed: the precision comes from the graph (FP16 casts,
    INT8 Q/DQ), so `--precision int8` needs `psp-deploy calibrate --precision int8` first.
    A timing cache is kept in the bundle. Runtimes refuse engines built for another GPU or
    TensorRT version. `--backend onnxruntime --device cuda` builds no file: it times the encoder's
    and synthesis' CUDA settings on this GPU and records the fastest, which `run --device cuda`
    then uses on this GPU (and refuses on another).
    """
    from ..engines import BatchProfile, BuildOptions, build_engines
    from ..engines.build import build_notes, default_backend

    with handled(), progress("building") as step:
        chosen = backend.value
        if backend == BackendName.auto:
            chosen = "onnxruntime" if device == Device.cuda else default_backend(precision.value)
        say(f"backend: {chosen}")
        options = BuildOptions(
            device=device.value,
            batch=BatchProfile(minimum=min_batch, optimum=opt_batch, maximum=max_batch),
            optimization_level=optimization_level,
            version_compatible=version_compatible,
            tf32=tf32,
            force_bf16=force_bf16,
            checkpoint=checkpoint,
        )
        engines = build_engines(bundle, chosen, precision.value, options=options, progress=step)
    for e in engines:
        if "timings_ms" in e.details:  # tuned CUDA settings: what won, against what
            timings = ", ".join(f"{label} {ms:.2f} ms" for label, ms in e.details["timings_ms"].items())
            say(f"  {e.graph:<9} {e.precision}: {e.details['chosen']} (batch {e.details['batch']}: {timings})")
        else:
            say(f"  {e.graph:<9} {e.precision}: {e.file}")
    for note in build_notes(engines):
        say(f"note: {note}")


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
    from ..demo import run_demo

    with handled():
        run_demo(workdir, output_size, console)
