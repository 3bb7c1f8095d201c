"""Benchmark results → a markdown report and PNG plots (matplotlib)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .baseline import COMPILED, EAGER
from .rows import Row, find, rows_of

PARTS = {"pipeline": "pipeline", "graphs": "graphs alone", "host": "host overhead"}


def _pipeline(rows: list[Row]) -> list[Row]:
    return [r for r in rows if r.part == "pipeline"]


def _rate_backend(row: Row) -> str:
    """Whose single-conv rate bounds the row: the official path's rows are torch's."""
    return "torch" if row.backend in (EAGER, COMPILED) else row.backend


def conv_rate(results: dict[str, Any], row: Row) -> float | None:
    """The single-conv rate of the row's own backend at its own precision: an INT8 or BF16 figure held
    against the FP32 rate would read as several hundred percent of the machine."""
    rate: float | None = results.get("conv_gflops_per_s", {}).get(row.precision, {}).get(_rate_backend(row))
    return rate


def _peer(rows: list[Row], row: Row, backend: str) -> Row | None:
    """The pipeline row of ``backend`` (the official path, eager or compiled) to hold ``row`` against: same batch
    and stage, at the row's precision where it ran in it (FP16 autocast on a GPU), else its FP32."""
    same = dict(backend=backend, stage=row.stage, batch=row.batch)
    pipeline = _pipeline(rows)
    return find(pipeline, **same, precision=row.precision) or find(pipeline, **same, precision="fp32")


def times_compiled(rows: list[Row], row: Row) -> str:
    """The "× compiled torch" cell: the row's images/s over compiled torch's (above 1: faster than the peer), the
    peer's precision named where it is not the row's; empty for host rows (a difference of times)."""
    peer = _peer(rows, row, COMPILED)
    if peer is None or row is peer or row.images_per_s is None or peer.images_per_s is None:
        return ""
    other = "" if peer.precision == row.precision else f" (vs {peer.precision})"
    return f"{row.images_per_s / peer.images_per_s:.2f}×{other}"


WITHIN_NOISE = "≈0 (within noise)"
NOISE_NOTE = (
    "A host overhead of ≈0 (within noise): the graphs alone timed as slow as or slower than the whole pipeline, "
    "so the host's own time is below what these runs can resolve (a difference of two measurements is never "
    "reported below zero)."
)


def overhead_seconds(seconds: float) -> str:
    """A host overhead in seconds: a difference of two measurements (pipeline − graphs alone), so one below
    zero is their noise (the graphs alone timed slower than the whole pipeline), never a negative cost."""
    return f"{seconds:.3f}" if seconds >= 0 else "≈0"


def within_noise(row: Row) -> bool:
    """A host row whose median overhead came out below zero."""
    return row.part == "host" and row.latency_s["p50"] < 0


def _host_what(row: Row) -> str:
    return "alignment + host overhead" if row.includes_alignment else "host overhead"


def host_overhead(row: Row) -> str:
    """A host row in words, as the bench command prints it: "host overhead p50 0.012s (3% of the pipeline)",
    or, below zero, "host overhead p50 ≈0 (within noise)"."""
    if within_noise(row):
        return f"{_host_what(row)} p50 {WITHIN_NOISE}"
    return f"{_host_what(row)} p50 {row.latency_s['p50']:.3f}s ({_share(row)} of the pipeline)"


def _share(row: Row) -> str:
    return f"{row.share_of_pipeline or 0:.0%}"


def _time(row: Row) -> str:
    if row.part == "host":
        if within_noise(row):
            return f"{_host_what(row)} {WITHIN_NOISE}"
        return f"{_host_what(row)} ({_share(row)} of pipeline)"
    compiled = f" (compile {row.compile_s:.1f} s, untimed)" if row.compile_s is not None else ""
    return PARTS[row.part] + compiled


def _stat(row: Row, key: str) -> str:
    if key not in row.latency_s:
        return ""  # host rows have a median and a mean only
    value = row.latency_s[key]
    return overhead_seconds(value) if row.part == "host" else f"{value:.3f}"


def _source(bundle: dict[str, Any]) -> str:
    """The checkpoint a bundle was exported from, as its manifest records it (results of older runs lack it)."""
    source = bundle.get("source") or {}
    if not source.get("checkpoint"):
        return "a checkpoint it does not name"
    return f"{source['checkpoint']} (sha256 {str(source.get('sha256', ''))[:12]}…)"


def latency_table(results: dict[str, Any]) -> list[str]:
    rows = rows_of(results)
    peer = any(r.backend == COMPILED for r in rows)  # the column only where compiled torch ran
    lines = [
        "| configuration | batch | stage | time | p50 s | p90 s | mean s | images/s | GFLOP/s "
        "| of the conv rate, same backend and precision |" + (" × compiled torch |" if peer else ""),
        "|---|---:|---|---|---:|---:|---:|---:|---:|---:|" + ("---:|" if peer else ""),
    ]
    for r in rows:
        gf, limit = r.gflops_per_s, conv_rate(results, r)
        share = f"{gf / limit:.0%}" if gf and limit else ""
        rate = "" if r.images_per_s is None else f"{r.images_per_s:.3f}"  # a host row: a difference of times
        gflops = "" if r.part == "host" else f"{gf or 0:.1f}"
        lines.append(
            f"| {r.config} | {r.batch} | {r.stage} | {_time(r)} | {_stat(r, 'p50')} | {_stat(r, 'p90')} | "
            f"{_stat(r, 'mean')} | {rate} | {gflops} | {share} |" + (f" {times_compiled(rows, r)} |" if peer else "")
        )
    return lines


def speedup_section(results: dict[str, Any]) -> list[str]:
    """End to end against the official path at the same precision where it ran in one (FP16 autocast on a
    GPU), else against its FP32; nothing when there is no official row to hold against."""
    rows = _pipeline(rows_of(results))
    table = []
    for r in rows:
        if r.stage != "e2e" or r.backend == EAGER:
            continue
        base = _peer(rows, r, EAGER)
        if base and r.images_per_s and base.images_per_s:
            ours, theirs = 1 / r.images_per_s, 1 / base.images_per_s
            table.append(
                f"| {r.config} | {r.batch} | {ours:.3f} | torch {base.precision} | {theirs:.3f} | "
                f"{theirs / ours:.1f}× |"
            )
    if not table:
        return []
    header = [
        "| configuration | batch | e2e s / image | official path | official s / image | speed-up |",
        "|---|---:|---:|---|---:|---:|",
    ]
    return ["## End to end against the official path", "", *header, *table, ""]


def graphs_section(results: dict[str, Any]) -> list[str]:
    """Encode + synthesize through the pipeline (end to end without alignment, which does no counted
    work) against the single-conv rate of the same backend and precision: the networks' share of the
    machine, read off one line per configuration and batch."""
    rows, lines = _pipeline(rows_of(results)), []
    for encode in (r for r in rows if r.stage == "encode" and r.gflops_per_s):
        synthesize = find(rows, **encode.key, batch=encode.batch, stage="synthesize")
        limit = conv_rate(results, encode)
        if not synthesize or not synthesize.gflops_per_s or not encode.gflops_per_s or not limit:
            continue
        seconds = [r.latency_s["mean"] for r in (encode, synthesize)]
        rate = (encode.gflops_per_s * seconds[0] + synthesize.gflops_per_s * seconds[1]) / sum(seconds)
        share = f"{rate / limit:.0%}"
        lines.append(f"| {encode.config} | {encode.batch} | {sum(seconds):.3f} | {rate:.1f} | {share} |")
    if not lines:
        return []
    header = [
        "| configuration | batch | encode + synthesize, mean s per batch | GFLOP/s | of the conv rate |",
        "|---|---:|---:|---:|---:|",
    ]
    return ["## Encode + synthesize against the conv rate", "", *header, *lines, ""]


def warnings_section(results: dict[str, Any]) -> list[str]:
    if not results.get("warnings"):
        return []
    return ["## Warnings", "", *(f"- {w}" for w in results["warnings"]), ""]


def notes_section(results: dict[str, Any]) -> list[str]:
    if not results.get("notes"):
        return []
    return ["## Notes", "", *(f"- {note}" for note in results["notes"]), ""]


def limits_section(results: dict[str, Any]) -> list[str]:
    """The single-conv rates (none when measured with --no-limits)."""
    rates = results.get("conv_gflops_per_s", {})
    if not rates:
        return []
    lines = ["## The machine's limit: one 512→512 3×3 convolution at 64²", ""]
    lines += ["| precision | backend | GFLOP/s (or GOP/s) |", "|---|---|---:|"]
    for precision, by_backend in rates.items():
        lines += [f"| {precision} | {backend} | {rate:.0f} |" for backend, rate in by_backend.items()]
    return [*lines, ""]


def profile_section(results: dict[str, Any]) -> list[str]:
    """Where the time goes: the backend profiler's per-op seconds for each graph (one batch)."""
    from .op_profile import profile_table

    if not results.get("profiles"):
        return []
    lines = ["## Where the time goes (per-op profile, one batch)", ""]
    for config, graphs in results["profiles"].items():
        for graph, seconds in graphs.items():
            lines += [f"### {config}: {graph}", "", *profile_table(seconds), ""]
    return lines


def _latency_plot(plt: Any, rows: list[Row], out: Path) -> Path:
    configs = list({r.config: r for r in rows}.values())  # one row naming each configuration
    stages = [s for s in ("align", "encode", "synthesize") if any(r.stage == s for r in rows)]
    fig, ax = plt.subplots(figsize=(10, 5))
    width = 0.8 / max(len(stages), 1)
    for i, stage in enumerate(stages):
        found = [find(rows, stage=stage, batch=1, **c.key) for c in configs]
        values = [r.latency_s["p50"] if r else 0 for r in found]
        ax.bar([x + i * width for x in range(len(configs))], values, width, label=stage)
    names = [c.config for c in configs]
    ax.set_xticks([x + width * (len(stages) - 1) / 2 for x in range(len(configs))], names, rotation=30, ha="right")
    ax.set_ylabel("seconds per batch of 1 (p50)")
    ax.set_title("Latency per stage, batch 1")
    _legend(ax)
    return _save(fig, out)


def _throughput_plot(plt: Any, rows: list[Row], out: Path) -> Path:
    fig, ax = plt.subplots(figsize=(8, 5))
    for config in dict.fromkeys(r.config for r in rows):
        points = sorted((r.batch, r.images_per_s) for r in rows if r.stage == "e2e" and r.config == config)
        if points:
            ax.plot(*zip(*points, strict=True), marker="o", label=config)
    ax.set_xlabel("batch")
    ax.set_ylabel("images / s (end to end)")
    ax.set_title("Throughput vs batch")
    _legend(ax)
    return _save(fig, out)


def roofline_limits(rows: list[Row], rates: dict[str, dict[str, float]]) -> dict[str, float]:
    """The single-conv limit line of each precision the plotted synthesis rows ran (the best rate among their
    backends): a limit of a precision nothing ran at (torch's BF16 rate, measured whenever the CPU has BF16)
    is no bound on any bar."""
    limits = {}
    for precision in dict.fromkeys(r.precision for r in rows if r.stage == "synthesize" and r.gflops_per_s):
        ran = {_rate_backend(r) for r in rows if r.precision == precision}
        measured = rates.get(precision, {})
        own = [rate for backend, rate in measured.items() if backend in ran] or list(measured.values())
        if own:
            limits[precision] = max(own)
    return limits


def _roofline_plot(plt: Any, rows: list[Row], rates: dict[str, dict[str, float]], out: Path) -> Path:
    fig, ax = plt.subplots(figsize=(10, 5))
    synthesis = [r for r in rows if r.stage == "synthesize" and r.gflops_per_s]
    ax.bar(range(len(synthesis)), [r.gflops_per_s for r in synthesis])
    labels = [f"{r.config} b{r.batch}" for r in synthesis]
    ax.set_xticks(range(len(synthesis)), labels, rotation=35, ha="right", fontsize=8)
    for i, (precision, limit) in enumerate(roofline_limits(synthesis, rates).items()):
        ax.axhline(limit, linestyle="--", label=f"single-conv limit, {precision}", color=f"C{i + 1}")
    ax.set_ylabel("GFLOP/s")
    ax.set_title("Synthesis: achieved rate against the machine's single-conv rate")
    _legend(ax)
    return _save(fig, out)


def _overhead_plot(plt: Any, rows: list[Row], out: Path) -> Path:
    """End to end per configuration and batch: the graphs' own time and the host's overhead, stacked."""
    pairs = [
        (r, find(rows, **r.key, batch=r.batch, stage="e2e", part="host"))
        for r in rows
        if r.stage == "e2e" and r.part == "graphs"
    ]
    graphs = [g.latency_s["p50"] for g, _ in pairs]
    host = [max(0.0, h.latency_s["p50"]) if h else 0 for _, h in pairs]  # below zero: noise, drawn as none
    fig, ax = plt.subplots(figsize=(10, 5))
    ax.bar(range(len(pairs)), graphs, label="graphs alone (device-resident)")
    ax.bar(range(len(pairs)), host, bottom=graphs, label="host overhead")
    ax.set_xticks(range(len(pairs)), [f"{g.config} b{g.batch}" for g, _ in pairs], rotation=35, ha="right")
    ax.set_ylabel("seconds per batch, end to end (p50)")
    ax.set_title("Where end-to-end time goes: the graphs or the host")
    _legend(ax)
    return _save(fig, out)


def write_plots(results: dict[str, Any], out: Path, stem: str) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = rows_of(results)
    pipeline = _pipeline(rows)
    paths = [
        _latency_plot(plt, pipeline, out / f"{stem}-latency.png"),
        _throughput_plot(plt, pipeline, out / f"{stem}-throughput.png"),
        _roofline_plot(plt, pipeline, results.get("conv_gflops_per_s", {}), out / f"{stem}-roofline.png"),
    ]
    if any(r.part == "graphs" and r.stage == "e2e" for r in rows):
        paths.append(_overhead_plot(plt, rows, out / f"{stem}-overhead.png"))
    return paths


def _legend(ax: Any) -> None:
    if ax.get_legend_handles_labels()[0]:  # an empty legend only warns
        ax.legend(fontsize=8)


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def machine_lines(results: dict[str, Any]) -> list[str]:
    """The CPU, and on a GPU run the GPU, its driver and CUDA, TF32 and how timings were synchronised."""
    machine = results["machine"]
    lines = [
        f"- CPU: {machine['model']}, {machine['logical_cores']} logical cores, ISA flags: {', '.join(machine['flags'])}"
    ]
    gpu = results.get("gpu")
    if gpu:
        ort, torch = gpu["onnxruntime"], gpu.get("torch", {})
        lines += [
            f"- GPU: {gpu['name']}, driver {gpu.get('driver', '?')} (CUDA {gpu.get('driver_cuda', '?')}), "
            f"{gpu.get('memory_mib', '?')} MiB, compute capability {gpu.get('compute_capability', '?')}",
            f"- CUDA builds: onnxruntime {ort['version']} ({ort['package']}, CUDA {ort.get('cuda') or '?'}), "
            f"torch {torch.get('version', 'absent')} (CUDA {torch.get('cuda') or '?'})",
            f"- TF32: {tf32_line(results)}; every timed call ends with "
            f"{results.get('synchronised_by') or 'host results (no device synchronise was available)'}",
        ]
    return lines


def tf32_line(results: dict[str, Any]) -> str:
    """The TF32 mode as asked, and where a pipeline ran otherwise: each engine's row records its
    Pipeline.describe() (ONNX Runtime's FP16 graphs, for one, run with use_tf32 on whatever was asked; a TensorRT
    plan as it was built), the official path's rows the mode asked."""
    asked = bool(results["settings"].get("tf32"))
    fp32 = "on" if asked else "off for FP32 graphs (IEEE FP32)"
    other = dict.fromkeys(f"{r.backend} {r.precision}" for r in rows_of(results) if r.tf32 != asked)
    if not other:
        return fp32
    ran = "on (the FP32 nodes they keep may run TF32)" if not asked else "off"
    return f"{fp32}; as they ran, TF32 was {ran} in {', '.join(other)}"


def write_report(results: dict[str, Any], out: Path, stem: str, command: str, notes: list[str] | None = None) -> Path:
    """``out/<stem>.md`` with the tables and plots; returns its path."""
    out.mkdir(parents=True, exist_ok=True)
    plots = write_plots(results, out, stem)
    settings = results["settings"]
    title = results["gpu"]["name"] if results.get("gpu") else results["machine"]["model"]
    lines = [
        f"# psp-deploy benchmark: {title}",
        "",
        *machine_lines(results),
        f"- versions: {', '.join(f'{k} {v}' for k, v in results['versions'].items())}",
        f"- settings: device {settings.get('device', 'cpu')}, threads {settings.get('threads') or 'all'}, "
        f"warmup {settings['warmup']}, runs {settings['runs']}",
        f"- model: {results['bundle']['config']['task']} {results['bundle']['config']['output_size']}², exported from "
        f"{_source(results['bundle'])} (the time depends on the shapes, not on the weights); GFLOP per image: "
        + ", ".join(f"{g} {f:.1f}" for g, f in results["gflop_per_image"].items()),
        f"- reproduce: `{command}`",
        "",
        *warnings_section(results),
        *notes_section(results),
        *limits_section(results),
        *speedup_section(results),
        *graphs_section(results),
        "## Every measurement",
        "",
        *latency_table(results),
        "",
        *([NOISE_NOTE, ""] if any(within_noise(r) for r in rows_of(results)) else []),
        *(f"![{p.stem}]({p.name})" for p in plots),
        "",
        *profile_section(results),
        *(notes or []),
    ]
    path = out / f"{stem}.md"
    path.write_text("\n".join(lines) + "\n")
    return path
