"""Serving and measuring: serve (Triton) and bench."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape

from ..errors import InputError
from ..serving.models import PhotoLimits
from .common import (
    BackendOpt,
    BundleArg,
    CacheDirOpt,
    DeviceOpt,
    EnginesOpt,
    FaceOpt,
    FacePolicy,
    ForceBf16Opt,
    PrecisionOpt,
    Tf32Opt,
    ThreadsOpt,
    app,
    console,
    handled,
    progress,
    say,
)

if TYPE_CHECKING:
    from ..benchmark.rows import Row

MAX_PORT = 65535  # as serving.server, which the CLI imports only when serving
EXIT_SERVER_STOPPED = 1


@app.command()
def serve(
    bundle: BundleArg,
    backend: BackendOpt = "auto",
    precision: PrecisionOpt = "fp32",
    device: DeviceOpt = "cpu",
    tf32: Tf32Opt = False,
    threads: ThreadsOpt = None,
    force_bf16: ForceBf16Opt = False,
    engines: EnginesOpt = True,
    cache_dir: CacheDirOpt = None,
    host: Annotated[
        str, typer.Option(help="Address to listen on: this machine only by default; 0.0.0.0 for every interface.")
    ] = "127.0.0.1",
    http_port: Annotated[int, typer.Option(min=1, max=MAX_PORT, help="HTTP port (KServe v2 protocol).")] = 8000,
    grpc_port: Annotated[int, typer.Option(min=1, max=MAX_PORT, help="gRPC port.")] = 8001,
    metrics_port: Annotated[int, typer.Option(min=1, max=MAX_PORT, help="Prometheus metrics port.")] = 8002,
    max_batch: Annotated[int, typer.Option(min=1, help="Largest batch formed across clients.")] = 8,
    max_queue_delay_us: Annotated[
        int, typer.Option(min=0, help="How long a request may wait for others to batch with.")
    ] = 2000,
    instances: Annotated[
        int,
        typer.Option(
            min=1,
            help="Batches run at once per model (TensorRT, OpenVINO; ONNX Runtime's device-resident path has one "
            "set of buffers and runs one batch at a time).",
        ),
    ] = 1,
    access_token: Annotated[
        str | None,
        typer.Option(
            envvar="PSP_DEPLOY_ACCESS_TOKEN",
            help="Token for Triton's restricted APIs (statistics, repository); default: a random one.",
        ),
    ] = None,
    face: FaceOpt = FacePolicy.largest,
    app_metrics_port: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=MAX_PORT,
            help="Port of psp-deploy's own Prometheus metrics (requests by outcome and reason, latency); "
            "default: --metrics-port + 1.",
        ),
    ] = None,
    max_queue_size: Annotated[
        int, typer.Option(min=1, help="Requests that may wait per model; beyond it a request is refused at once (503).")
    ] = 32,
    queue_timeout: Annotated[
        float,
        typer.Option(
            min=0, max=86400, help="Seconds a request may wait in the queue before it is refused (0: no limit)."
        ),
    ] = 60.0,
    max_photo_bytes: Annotated[
        int, typer.Option(min=1, help="Largest photo accepted, in bytes as sent (its file).")
    ] = PhotoLimits.max_bytes,
    max_photo_pixels: Annotated[
        int,
        typer.Option(min=1, help="Largest photo accepted, in pixels (width × height, read before decoding)."),
    ] = PhotoLimits.max_pixels,
) -> None:
    """Serve the bundle on NVIDIA Triton Inference Server (through PyTriton).

    Models: **psp** (photo bytes → aligned face, W+ codes, image; request parameters align, resize,
    latent_mask, mix_alpha, seed, n_outputs, paste, mask), **psp_encode** (aligned face → codes) and
    **psp_synthesize** (codes → image). Requests from different clients are batched; beyond
    --max-queue-size waiting requests, or after --queue-timeout in the queue, a request is refused (HTTP
    503, gRPC UNAVAILABLE: clients retry). Health: /v2/health/ready answers 200 only once every model
    answers requests; /v2/health/live; Triton's metrics on --metrics-port, requests by outcome and reason on
    --app-metrics-port. SIGTERM or Ctrl-C finish in-flight requests, then stop (exit 0). Exit 1: the server
    stopped on its own (Triton or a model's process exited); 2: bad arguments or an unusable bundle, before
    serving.
    """
    from ..runtime.backends import BackendOptions
    from ..serving.server import ServeOptions, ServerStoppedError
    from ..serving.server import serve as run_server
    from .batch import open_pipeline

    options = ServeOptions(
        host=host,
        http_port=http_port,
        grpc_port=grpc_port,
        metrics_port=metrics_port,
        max_batch=max_batch,
        max_queue_delay_us=max_queue_delay_us,
        instances=instances,
        access_token=access_token,
        max_queue_size=max_queue_size,
        queue_timeout_s=queue_timeout,
        app_metrics_port=app_metrics_port,
        limits=PhotoLimits(max_bytes=max_photo_bytes, max_pixels=max_photo_pixels),
    )
    app_port = options.ports()["--app-metrics-port"]
    ready = f"on http://{host}:{http_port} and grpc://{host}:{grpc_port} (metrics :{metrics_port}, :{app_port})"
    with handled():
        backend_options = BackendOptions(
            device=device.value, threads=threads, engines=engines, force_bf16=force_bf16, cache_dir=cache_dir, tf32=tf32
        )
        try:
            run_server(
                lambda: open_pipeline(bundle, backend.value, precision.value, backend_options, face.value),
                options,
                on_ready=lambda: say(f"serving {bundle} {ready}; models psp, psp_encode, psp_synthesize", "green"),
            )
        except ServerStoppedError as err:  # a failure for a supervisor (exit 1), not a usage error (2)
            console.print(f"[bold red]error:[/] {escape(str(err))}", highlight=False)
            raise typer.Exit(EXIT_SERVER_STOPPED) from None
    console.print("stopped")


def comma_list(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


@app.command()
def bench(
    bundle: BundleArg,
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
        str, typer.Option(help="Comma-separated: align, encode, synthesize, e2e (align is CPU work: not on cuda).")
    ] = "align,encode,synthesize,e2e",
    device: DeviceOpt = "cpu",
    tf32: Tf32Opt = False,
    threads: ThreadsOpt = None,
    baseline: Annotated[Path | None, typer.Option(help="The checkpoint: also time the official PyTorch path.")] = None,
    torch_compile: Annotated[
        bool,
        typer.Option(
            "--compile/--no-compile",
            help="With --baseline: the official path under torch.compile too, beside eager (compiling takes "
            "minutes per batch size on a few CPU cores).",
        ),
    ] = True,
    limits: Annotated[bool, typer.Option(help="Measure the CPU's single-conv rate per precision.")] = True,
    profile: Annotated[
        bool, typer.Option(help="Also record seconds per operator type of each graph (the backend's profiler).")
    ] = False,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output", "-o", help="Results JSON (default: bench-results.json in the --report folder, else here)."
        ),
    ] = None,
    report: Annotated[Path | None, typer.Option(help="Also write a markdown report and PNG plots here.")] = None,
    force: Annotated[bool, typer.Option(help="Replace results and a report already there.")] = False,
) -> None:
    """Latency (min, p50, p90, p99, mean) and throughput per stage and end to end, per batch size.

    Each stage is timed through the pipeline and, on ONNX Runtime, as its graphs alone with inputs
    and outputs bound on the device; the difference is reported as host overhead. Results record
    the machine (CPU; with --device cuda the GPU, driver, CUDA and TF32 mode, timings
    CUDA-synchronised), library versions, the bundle's configuration and these settings. With
    --baseline the official algorithm runs in PyTorch in the same run (on cuda: FP32, in TF32 only
    with --tf32 as ours, and FP16 autocast), eagerly and under torch.compile (its compile time
    reported apart; on cuda FP16 with channels-last), and the report holds every row against
    compiled torch; the single-conv limits tell how far each figure is from the CPU's.
    """
    from ..benchmark.harness import BenchSettings, run_benchmark
    from ..benchmark.report import write_report
    from ..files import write_json

    output = output or (report or Path()) / "bench-results.json"  # the results beside their report
    with handled(), progress("benchmarking") as step:
        for path in (output, *([report / f"{output.stem}.md"] if report else [])):
            if path.exists() and not force:  # refused before minutes of measuring, not after
                raise InputError(f"{path} exists: pass --force to replace it, or write elsewhere (--output, --report)")
        try:
            batches = [int(b) for b in comma_list(batch)]
        except ValueError:
            raise InputError(f"--batch takes comma-separated integers, got {batch!r}") from None
        settings = BenchSettings(
            backends=comma_list(backend),
            precisions=comma_list(precision),
            batches=batches,
            stages=comma_list(stages),
            warmup=warmup,
            runs=runs,
            threads=threads,
            profile=profile,
            device=device.value,
            tf32=tf32,
            torch_compile=torch_compile,
        )
        results = run_benchmark(bundle, settings, baseline=baseline, limits=limits, progress=step)
        write_json(output, results)
        if report:
            say(f"report: {write_report(results, report, output.stem, 'psp-deploy ' + ' '.join(sys.argv[1:]))}")
    say_results(results, output)


def say_results(results: dict, output: Path) -> None:
    from ..benchmark.rows import rows_of

    for row in rows_of(results):
        say(f"  {row.backend:<14} {row.precision:<5} b{row.batch} {row.stage:<10} {summary(row)}")
    for warning in results["warnings"]:
        say(f"warning: {warning}", "yellow")
    say(f"results: {output}")


def summary(row: Row) -> str:
    """One result row in words: the pipeline's and the graphs' latency and rate, or the host's share."""
    from ..benchmark.report import host_overhead

    if row.part == "host":
        return host_overhead(row)
    alone = "graphs alone " if row.part == "graphs" else ""
    compiled = f"  (compile {row.compile_s:.1f}s, untimed)" if row.compile_s is not None else ""
    return f"{alone}p50 {row.latency_s['p50']:.3f}s  {row.images_per_s:.2f} img/s{compiled}"
