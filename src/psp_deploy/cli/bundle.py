"""The commands that make and grow a bundle: export, calibrate, build, and the demo."""

from __future__ import annotations

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
    from ..calibration.report import AccuracyReport


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
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from ..export import export_bundle

    steps = 1 + 3 * (2 if verify else 1)
    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"))
    with handled(), Progress(SpinnerColumn(), *columns, TimeElapsedColumn(), console=console) as bar:
        task = bar.add_task("export", total=steps)
        on_step = lambda m: bar.update(task, description=m, advance=0 if m == "loading checkpoint" else 1)  # noqa: E731
        forms = dict(batch=batch, modconv=modconv.value, upsample=upsample.value, opset=opset)
        bundle, results = export_bundle(checkpoint, output, **forms, verify=verify, force=force, progress=on_step)
        bar.update(task, description="done", completed=steps)
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

    Example: psp-deploy calibrate bundles/ffhq --precision int8 --images aligned_faces/
    """
    from ..calibration import calibrate_bundle
    from ..calibration.calibrate import report_path

    with handled(), progress("calibrating") as step:
        report = calibrate_bundle(
            bundle,
            precision.value,
            backend=backend.value,
            force_bf16=force_bf16,
            images=images,
            synthetic=synthetic,
            seed=seed,
            holdout=holdout,
            methods=comma_list(methods),
            rounds=rounds,
            graphs=comma_list(graphs),
            progress=step,
        )
    print_accuracy(report, precision.value)
    say(f"report: {report_path(bundle, precision.value, backend.value)}")


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
