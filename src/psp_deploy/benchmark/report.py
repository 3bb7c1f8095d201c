"""Benchmark results → a markdown report and PNG plots (matplotlib)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..runtime.backends.onnxruntime import uses_tf32

Row = dict[str, Any]
PARTS = {"pipeline": "pipeline", "graphs": "graphs alone", "host": "host overhead"}


def _config(row: Row) -> str:
    return f"{row['backend']} {row['precision']} ({row['modconv']})"


def _part(row: Row) -> str:
    return row.get("part", "pipeline")  # results from before graphs-alone timing have pipeline rows only


def _pipeline(rows: list[Row]) -> list[Row]:
    return [r for r in rows if _part(r) == "pipeline"]


def conv_rate(results: dict[str, Any], row: Row) -> float | None:
    """The single-conv rate of the row's own backend at its own precision: an INT8 or BF16 figure held
    against the FP32 rate would read as several hundred percent of the machine."""
    backend = "torch" if row["backend"] == "torch-official" else row["backend"]
    return results.get("conv_gflops_per_s", {}).get(row["precision"], {}).get(backend)


def _find(rows: list[Row], **where: Any) -> Row | None:
    return next((r for r in rows if all(r.get(k) == v for k, v in where.items())), None)


def _time(row: Row) -> str:
    if _part(row) == "host":
        what = "alignment + host overhead" if row.get("includes_alignment") else "host overhead"
        return f"{what} ({row['share_of_pipeline']:.0%} of pipeline)"
    return PARTS[_part(row)]


def _stat(latency: dict[str, float], key: str) -> str:
    return f"{latency[key]:.3f}" if key in latency else ""  # host rows have a median and a mean only


def latency_table(results: dict[str, Any]) -> list[str]:
    lines = [
        "| configuration | batch | stage | time | p50 s | p90 s | mean s | images/s | GFLOP/s "
        "| of the conv rate, same backend and precision |",
        "|---|---:|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results["results"]:
        lat, gf, limit = r["latency_s"], r["gflops_per_s"], conv_rate(results, r)
        share = f"{gf / limit:.0%}" if gf and limit else ""
        host = _part(r) == "host"  # a difference of times: no rate of its own
        rate, gflops = ("", "") if host else (f"{r['images_per_s']:.3f}", f"{gf or 0:.1f}")
        lines.append(
            f"| {_config(r)} | {r['batch']} | {r['stage']} | {_time(r)} | {_stat(lat, 'p50')} | {_stat(lat, 'p90')} | "
            f"{_stat(lat, 'mean')} | {rate} | {gflops} | {share} |"
        )
    return lines


def speedup_section(results: dict[str, Any]) -> list[str]:
    """End to end against the official path at the same precision where it ran in one (FP16 autocast on a
    GPU), else against its FP32; nothing when there is no official row to hold against."""
    rows = _pipeline(results["results"])
    table = []
    for r in rows:
        if r["stage"] != "e2e" or r["backend"] == "torch-official":
            continue
        official = dict(backend="torch-official", stage="e2e", batch=r["batch"])
        base = _find(rows, **official, precision=r["precision"]) or _find(rows, **official, precision="fp32")
        if base:
            ours, theirs = 1 / r["images_per_s"], 1 / base["images_per_s"]
            table.append(
                f"| {_config(r)} | {r['batch']} | {ours:.3f} | torch {base['precision']} | {theirs:.3f} | "
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
    rows, lines = _pipeline(results["results"]), []
    for encode in (r for r in rows if r["stage"] == "encode" and r["gflops_per_s"]):
        same = {k: encode[k] for k in ("backend", "precision", "modconv", "batch")}
        synthesize, limit = _find(rows, **same, stage="synthesize"), conv_rate(results, encode)
        if not synthesize or not synthesize["gflops_per_s"] or not limit:
            continue
        seconds = [r["latency_s"]["mean"] for r in (encode, synthesize)]
        rate = (encode["gflops_per_s"] * seconds[0] + synthesize["gflops_per_s"] * seconds[1]) / sum(seconds)
        share = f"{rate / limit:.0%}"
        lines.append(f"| {_config(encode)} | {encode['batch']} | {sum(seconds):.3f} | {rate:.1f} | {share} |")
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
    configs = list(dict.fromkeys(_config(r) for r in rows))
    stages = [s for s in ("align", "encode", "synthesize") if any(r["stage"] == s for r in rows)]
    fig, ax = plt.subplots(figsize=(10, 5))
    width = 0.8 / max(len(stages), 1)
    for i, stage in enumerate(stages):
        values = [
            (_find(rows, stage=stage, batch=1, **_split(c)) or {}).get("latency_s", {}).get("p50", 0) for c in configs
        ]
        ax.bar([x + i * width for x in range(len(configs))], values, width, label=stage)
    ax.set_xticks([x + width * (len(stages) - 1) / 2 for x in range(len(configs))], configs, rotation=30, ha="right")
    ax.set_ylabel("seconds per batch of 1 (p50)")
    ax.set_title("Latency per stage, batch 1")
    _legend(ax)
    return _save(fig, out)


def _throughput_plot(plt: Any, rows: list[Row], out: Path) -> Path:
    fig, ax = plt.subplots(figsize=(8, 5))
    for config in dict.fromkeys(_config(r) for r in rows):
        points = sorted((r["batch"], r["images_per_s"]) for r in rows if r["stage"] == "e2e" and _config(r) == config)
        if points:
            ax.plot(*zip(*points, strict=True), marker="o", label=config)
    ax.set_xlabel("batch")
    ax.set_ylabel("images / s (end to end)")
    ax.set_title("Throughput vs batch")
    _legend(ax)
    return _save(fig, out)


def _roofline_plot(plt: Any, rows: list[Row], rates: dict[str, dict[str, float]], out: Path) -> Path:
    fig, ax = plt.subplots(figsize=(10, 5))
    synthesis = [r for r in rows if r["stage"] == "synthesize" and r["gflops_per_s"]]
    ax.bar(range(len(synthesis)), [r["gflops_per_s"] for r in synthesis])
    labels = [f"{_config(r)} b{r['batch']}" for r in synthesis]
    ax.set_xticks(range(len(synthesis)), labels, rotation=35, ha="right", fontsize=8)
    for i, (precision, by_backend) in enumerate(rates.items()):
        ax.axhline(max(by_backend.values()), linestyle="--", label=f"single-conv limit, {precision}", color=f"C{i + 1}")
    ax.set_ylabel("GFLOP/s")
    ax.set_title("Synthesis: achieved rate against the machine's single-conv rate")
    _legend(ax)
    return _save(fig, out)


def _overhead_plot(plt: Any, rows: list[Row], out: Path) -> Path:
    """End to end per configuration and batch: the graphs' own time and the host's overhead, stacked."""
    pairs = [
        (r, _find(rows, **{k: r[k] for k in ("backend", "precision", "modconv", "batch")}, stage="e2e", part="host"))
        for r in rows
        if r["stage"] == "e2e" and _part(r) == "graphs"
    ]
    graphs = [g["latency_s"]["p50"] for g, _ in pairs]
    host = [h["latency_s"]["p50"] if h else 0 for _, h in pairs]
    fig, ax = plt.subplots(figsize=(10, 5))
    ax.bar(range(len(pairs)), graphs, label="graphs alone (device-resident)")
    ax.bar(range(len(pairs)), host, bottom=graphs, label="host overhead")
    ax.set_xticks(range(len(pairs)), [f"{_config(g)} b{g['batch']}" for g, _ in pairs], rotation=35, ha="right")
    ax.set_ylabel("seconds per batch, end to end (p50)")
    ax.set_title("Where end-to-end time goes: the graphs or the host")
    _legend(ax)
    return _save(fig, out)


def write_plots(results: dict[str, Any], out: Path, stem: str) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, pipeline = results["results"], _pipeline(results["results"])
    paths = [
        _latency_plot(plt, pipeline, out / f"{stem}-latency.png"),
        _throughput_plot(plt, pipeline, out / f"{stem}-throughput.png"),
        _roofline_plot(plt, pipeline, results.get("conv_gflops_per_s", {}), out / f"{stem}-roofline.png"),
    ]
    if any(_part(r) == "graphs" and r["stage"] == "e2e" for r in rows):
        paths.append(_overhead_plot(plt, rows, out / f"{stem}-overhead.png"))
    return paths


def _legend(ax: Any) -> None:
    if ax.get_legend_handles_labels()[0]:  # an empty legend only warns
        ax.legend(fontsize=8)


def _split(config: str) -> dict[str, str]:
    backend, precision, modconv = config.replace("(", "").replace(")", "").split()
    return {"backend": backend, "precision": precision, "modconv": modconv}


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
            f"- TF32: {tf32_line(results['settings'])}; every timed call ends with "
            f"{results.get('synchronised_by') or 'host results (no device synchronise was available)'}",
        ]
    return lines


def tf32_line(settings: dict[str, Any]) -> str:
    """The TF32 mode as it ran: FP16 graphs run ONNX Runtime's use_tf32 on whatever was asked (uses_tf32)."""
    asked = bool(settings.get("tf32"))
    fp32 = "on" if asked else "off for FP32 graphs (IEEE FP32)"
    on_anyway = [p for p in settings.get("precisions", ()) if uses_tf32(p, asked) != asked]
    if on_anyway and "onnxruntime" in settings.get("backends", ()):
        return f"{fp32}; ONNX Runtime's FP16 graphs run with use_tf32 on (the FP32 nodes they keep may run TF32)"
    return fp32


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
        f"- model: {results['bundle']['config']['task']} {results['bundle']['config']['output_size']}² (synthetic "
        f"weights, official shapes); GFLOP per image: "
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
        *(f"![{p.stem}]({p.name})" for p in plots),
        "",
        *profile_section(results),
        *(notes or []),
    ]
    path = out / f"{stem}.md"
    path.write_text("\n".join(lines) + "\n")
    return path
